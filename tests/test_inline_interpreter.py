"""Python functions on the machine that submitted them (issue #17, point 4).

On the local backend and the Batch emulator an inline task runs with the submitting interpreter
when it can import batchyard (Batch nodes keep ``python3`` and the pool check); relative paths in
the Python API are the caller's; and the README's example runs exactly as written with
``.venv/bin/python`` while ``python3`` on PATH has no batchyard.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from batchyard.api.mapping import _with_node_install, map_lines, task_python
from batchyard.core.config import load_config
from batchyard.core.job import Inputs
from batchyard.core.placeholders import split_command

sys.path.insert(0, str(Path(__file__).parent))
from two_backends import KINDS, on_backend

REPO = Path(__file__).resolve().parent.parent
VENV_PYTHON = REPO / ".venv" / "bin" / "python"


def readme_python_example() -> str:
    """The README's Python example, as a user would copy it."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## A Python function as the task", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.fixture
def python3_without_batchyard(tmp_path: Path) -> dict[str, str]:
    """A PATH whose python3 cannot import batchyard (no site-packages, no PYTHONPATH), as on a machine
    where batchyard lives only in a venv; the venv's own bin dir is left out."""
    fake_bin = tmp_path / "bare-bin"
    fake_bin.mkdir()
    (fake_bin / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" -S -I "$@"\n')
    (fake_bin / "python3").chmod(0o755)
    venv_bin = str(Path(sys.executable).parent)
    rest = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin]
    return {"PATH": os.pathsep.join([str(fake_bin), *rest])}


def test_the_readme_example_runs_as_written_with_the_venv_python(project: Any,
                                                                 python3_without_batchyard: dict[str, str]) -> None:
    code = readme_python_example()
    assert "map_lines(" in code and 'inputs="input-data/uppercase/*.txt"' in code, code
    uid = uuid.uuid4().hex[:8]
    names = {f"uppercase/readme-{uid}-a.txt": b"hello\nworld\n", f"uppercase/readme-{uid}-b.txt": b"caf\xc3\xa9\n"}
    project.storage.ensure_container("input-data")
    project.put_inputs("input-data", names)
    (project.dir / "go.py").write_text(code, encoding="utf-8")
    python = VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable)
    env = {k: v for k, v in project.env.items() if k != "PYTHONPATH"} | python3_without_batchyard
    done = subprocess.run([str(python), "go.py"], cwd=project.dir, env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1] == "True succeeded", done.stdout + done.stderr
    for name, data in names.items():
        blob = "upper/" + name.removeprefix("uppercase/")
        assert project.storage.download_bytes("output-data", blob) == data.decode().upper().encode()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.timeout(180)
def test_tasks_run_the_submitting_interpreter(kind: str, project: Any, request: pytest.FixtureRequest,
                                              python3_without_batchyard: dict[str, str],
                                              monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", python3_without_batchyard["PATH"])
    config, _ = on_backend(kind, project, request)
    ins, outs = project.container("inputs"), project.container("outputs")
    project.put_inputs(ins, {"x.txt": b"abc\n"})
    run = map_lines(str.upper, inputs=f"{ins}/*.txt", outputs=f"{outs}/{{job_id}}/", job_id=f"interp-{kind}",
                    config=config, workers=1, timeout=150)
    assert split_command(run.job.command)[0] == sys.executable
    assert run.succeeded, run.results()
    assert project.storage.download_bytes(outs, f"interp-{kind}/x.txt") == b"ABC\n"
    if kind == "emulator":  # the pool's python3 is not what tasks run: no pip install on this machine
        assert _with_node_install(config, python=sys.executable, folder=tmp_path) is config


def test_which_interpreter_each_backend_gets(project: Any, tmp_path: Path) -> None:
    local = project.config()
    assert task_python(local, None) == sys.executable
    assert task_python(local, "python3.12") == "python3.12"
    emulator = load_config(project.dir / "batchyard.toml", backend="azure",
                           env={**project.env, "BATCHYARD_BATCH_URL": "http://127.0.0.1:1"})
    assert task_python(emulator, None) == sys.executable
    cloud = load_config(project.dir / "batchyard.toml", backend="azure",
                        env={**project.env, "BATCHYARD_BATCH_URL": "https://acct.westeurope.batch.azure.com"})
    assert task_python(cloud, None) == "python3"
    start = _with_node_install(cloud, folder=tmp_path).azure.pool.start_task or ""
    assert "-py3-none-any.whl" in start, "Batch pools install the submitter's batchyard"


def test_relative_local_dir_is_the_callers(project: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    caller = tmp_path / "caller"
    (caller / "texts").mkdir(parents=True)
    (caller / "texts" / "t.txt").write_bytes(b"from the caller's folder\n")
    monkeypatch.chdir(caller)
    ins, outs = project.container("inputs"), project.container("outputs")
    run = map_lines(str.upper, inputs=Inputs(container=ins, prefix="p/", local_dir="texts"),
                    outputs=f"{outs}/{{job_id}}/", job_id="reldir", config=project.config(), workers=1, timeout=120)
    assert run.job.inputs is not None and run.job.inputs.local_dir == str(caller / "texts")
    assert run.succeeded, run.results()
    assert project.storage.download_bytes(outs, "reldir/t.txt") == b"FROM THE CALLER'S FOLDER\n"
