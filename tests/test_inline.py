"""Inline Python jobs (map_files / map_lines): the node side alone, then whole jobs on each backend.

Tasks run ``python3`` from PATH, so every test here puts this interpreter's bin dir first on
PATH (the venv where batchyard is installed), as a node with batchyard installed would have.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dill
import pytest

from batchyard.api.mapping import (
    InlineError,
    build_job,
    map_files,
    map_lines,
    parse_inputs,
    parse_outputs,
    serialize_function,
    write_modules_zip,
)
from batchyard.core.config import Config, load_config
from batchyard.core.errors import JobValidationError
from batchyard.core.job import Inputs, OutputSpec, job_from_dict
from batchyard.node.inline import (
    EXIT_BAD_PAYLOAD,
    EXIT_FUNCTION_RAISED,
    EXIT_IMPORT_FAILED,
    EXIT_NOT_INSTALLED,
    EXIT_VERSION_MISMATCH,
    LAUNCHER_SOURCE,
    MAGIC,
    build_payload,
    python_version,
    run_lines,
    split_payload,
)

REPO = Path(__file__).resolve().parent.parent

# Inputs whose bytes must survive: CRLF, no trailing newline, empty, blank lines, non-ASCII, bad UTF-8.
LINE_INPUTS = {
    "crlf.txt": b"first line\r\nsecond\r\n\r\nlast without newline",
    "lf.txt": "caf\u00e9 au lait\n\nna\u00efve \u65e5\u672c\n".encode(),
    "mixed.txt": b"unix\nwindows\r\nlone\rcarriage\n\xff\xfe not utf-8\n",
    "empty.txt": b"",
    "sub/nested.txt": b"in a folder\n",
}
# The command-job version of `map_lines(lambda line: line.upper(), ...)`, byte for byte.
UPPER_PY = """\
import sys
from pathlib import Path

src, dest = Path(sys.argv[1]), Path(sys.argv[2])
dest.parent.mkdir(parents=True, exist_ok=True)
out = []
for raw in src.read_bytes().splitlines(keepends=True):
    body = raw.rstrip(b"\\r\\n") if raw.endswith(b"\\n") else raw
    ending = raw[len(body):]
    out.append(body.decode("utf-8", "surrogateescape").upper().encode("utf-8", "surrogateescape") + ending)
dest.write_bytes(b"".join(out))
"""


@pytest.fixture(autouse=True)
def node_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tasks (local workers, emulator nodes) run `python3` from PATH: make it this venv's."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def _inline(*args: str, cwd: Path, python: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(python or [sys.executable]), "-m", "batchyard.node.inline", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------------------------------------- specs
@pytest.mark.parametrize(("spec", "expected"), [
    ("input-data/some/prefix/*.txt", ("input-data", "some/prefix/", "*.txt")),
    ("input-data/*.txt", ("input-data", "", "*.txt")),
    ("input-data", ("input-data", "", "*")),
    ("input-data/", ("input-data", "", "*")),
    ("input-data/raw/2026", ("input-data", "raw/2026", "*")),
    ("input-data/raw/day-?/x*.csv", ("input-data", "raw/", "day-?/x*.csv")),
    ("input-data/a/[ab]*/*.txt", ("input-data", "a/", "[ab]*/*.txt")),
])
def test_parse_inputs(spec: str, expected: tuple[str, str, str]) -> None:
    parsed = parse_inputs(spec)
    assert (parsed.container, parsed.prefix, parsed.glob) == expected


def test_parse_outputs_and_model_objects() -> None:
    out = parse_outputs("output-data/{job_id}/clean/")
    assert (out.container, out.path, out.pattern, out.optional) == ("output-data", "{job_id}/clean/",
                                                                    "batchyard_out/**/*", True)
    assert parse_outputs("output-data").path == "{job_id}/"
    given = OutputSpec(pattern="*.csv", container="results", path="x/")
    assert parse_outputs(given).pattern == "batchyard_out/*.csv"
    ins = Inputs(container="abc", prefix="p/", glob="*.json")
    assert parse_inputs(ins) is ins
    with pytest.raises(JobValidationError, match="Bad_Container"):
        parse_inputs("Bad_Container/x")
    with pytest.raises(TypeError):
        parse_inputs(42)  # type: ignore[arg-type]


def test_built_job_is_an_ordinary_job(tmp_path: Path) -> None:
    job = build_job("lines", str.upper, "in-data/p/*.txt", "out-data/{job_id}/", job_id="upper",
                    folder=tmp_path, max_wall_clock_time="5m", max_task_retry_count=2, environment={"A": "b"})
    assert job.command == "python3 batchyard_inline.py lines batchyard_fn.pkl {input} batchyard_out"
    assert [rf.target for rf in job.resource_files] == ["batchyard_fn.pkl", "batchyard_inline.py"]
    assert (job.constraints.max_wall_clock_time, job.constraints.max_task_retry_count) == (300.0, 2)
    assert job.environment == {"A": "b"}
    # It survives a round trip through the stored-job form every backend keeps.
    again = job_from_dict(job.model_dump(mode="json"), stored=True)
    assert again.command == job.command and again.outputs == job.outputs
    with pytest.raises(TypeError, match="fn\\(line: str\\)"):
        build_job("lines", lambda a, b: a, "in-data", "out-data", job_id="x", folder=tmp_path)


def test_unserializable_function_is_refused_at_submit(tmp_path: Path) -> None:
    pending = (n for n in range(3))
    with pytest.raises(InlineError, match=r"cannot serialize .*generator"):
        serialize_function(lambda line: line + str(next(pending)), "lines")


# ---------------------------------------------------------------------------------------------- node side
def test_run_lines_keeps_line_endings(tmp_path: Path) -> None:
    for name, data in LINE_INPUTS.items():
        src = tmp_path / "in" / name
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_bytes(data)
        dest = tmp_path / "out" / name
        run_lines(lambda line: line.upper(), src, dest)
        cmd = tmp_path / "cmd" / name
        subprocess.run([sys.executable, "-c", UPPER_PY, str(src), str(cmd)], check=True)
        assert dest.read_bytes() == cmd.read_bytes(), name
    dropped = tmp_path / "dropped.txt"
    run_lines(lambda line: line or None, tmp_path / "in" / "crlf.txt", dropped)
    assert dropped.read_bytes() == b"first line\r\nsecond\r\nlast without newline"


def _payload(tmp: Path, fn: Any, kind: str = "lines", **header: Any) -> Path:
    base = {"format": 1, "kind": kind, "python": python_version(), "dill": dill.__version__,
            "function": "probe"}
    path = tmp / "batchyard_fn.pkl"
    path.write_bytes(build_payload({**base, **header}, dill.dumps(fn, recurse=True)))
    return path


def test_version_mismatch_names_both_versions(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("x\n")
    _payload(tmp_path, lambda line: line, python="3.99", dill="0.0.1")
    res = _inline("lines", "batchyard_fn.pkl", "in.txt", "out", cwd=tmp_path)
    assert res.returncode == EXIT_VERSION_MISMATCH, res.stderr
    assert "Python version mismatch" in res.stderr
    assert "Python 3.99 and dill 0.0.1 on the submitting machine" in res.stderr
    assert f"this node runs Python {python_version()} and dill {dill.__version__}" in res.stderr
    assert "Traceback" not in res.stderr and "unpickl" not in res.stderr.lower()

    _payload(tmp_path, lambda line: line, dill="0.0.1")  # same Python, other dill
    res = _inline("lines", "batchyard_fn.pkl", "in.txt", "out", cwd=tmp_path)
    assert res.returncode == EXIT_VERSION_MISMATCH
    assert "dill version mismatch" in res.stderr and f"dill 0.0.1 != {dill.__version__}" in res.stderr

    # The check happens before unpickling: a garbage pickle with a foreign header still says "version".
    (tmp_path / "batchyard_fn.pkl").write_bytes(build_payload({"format": 1, "python": "2.7", "dill": "0.2"},
                                                              b"\x80\x05garbage"))
    res = _inline("lines", "batchyard_fn.pkl", "in.txt", "out", cwd=tmp_path)
    assert res.returncode == EXIT_VERSION_MISMATCH and "Python 2.7" in res.stderr


def test_bad_payload_is_named(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("x\n")
    (tmp_path / "p.pkl").write_bytes(dill.dumps(str.upper))
    res = _inline("lines", "p.pkl", "in.txt", "out", cwd=tmp_path)
    assert res.returncode == EXIT_BAD_PAYLOAD and "not a batchyard inline payload" in res.stderr
    header, body = split_payload(build_payload({"a": 1}, b"xyz"))
    assert header == {"a": 1} and body == b"xyz" and build_payload({}, b"").startswith(MAGIC)


def test_missing_module_on_the_node_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"inline_gone_{uuid.uuid4().hex[:8]}"
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / f"{name}.py").write_text("def shout(line):\n    return line.upper()\n")
    monkeypatch.syspath_prepend(str(mods))
    module = importlib.import_module(name)
    node = tmp_path / "node"
    node.mkdir()
    (node / "in.txt").write_text("x\n")
    _payload(node, module.shout)  # by reference, and not shipped
    res = _inline("lines", "batchyard_fn.pkl", "in.txt", "out", cwd=node)
    assert res.returncode == EXIT_IMPORT_FAILED, res.stderr
    assert f"batchyard.node.inline: cannot import module '{name}' needed by the function" in res.stderr


def test_launcher_says_batchyard_is_missing(tmp_path: Path) -> None:
    (tmp_path / "batchyard_inline.py").write_text(LAUNCHER_SOURCE.replace("{version}", "9.9.9"))
    # -S -I: no site-packages and no PYTHONPATH, so batchyard cannot be imported.
    res = subprocess.run([sys.executable, "-S", "-I", "batchyard_inline.py", "lines", "p.pkl", "in.txt", "out"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == EXIT_NOT_INSTALLED, res.stderr
    assert "batchyard.node.inline: batchyard is not installed on this node" in res.stderr
    assert "needs batchyard 9.9.9 in its image or start task" in res.stderr


def test_working_dir_never_shadows_a_module(tmp_path: Path) -> None:
    """An input named like a module (json.py) sits in the working dir; it must not be imported."""
    (tmp_path / "json.py").write_text("raise SystemExit('shadowed!')\n")
    _payload(tmp_path, lambda line: __import__("json").dumps(line))
    (tmp_path / "batchyard_inline.py").write_text(LAUNCHER_SOURCE)
    res = subprocess.run([sys.executable, "batchyard_inline.py", "lines", "batchyard_fn.pkl", "json.py", "out"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out" / "json.py").read_text() == '"raise SystemExit(\'shadowed!\')"\n'


def test_local_modules_are_shipped_and_installed_ones_are_not(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    uid = uuid.uuid4().hex[:8]
    mods = tmp_path / "proj"
    (mods / f"pkg_{uid}").mkdir(parents=True)
    (mods / f"pkg_{uid}" / "__init__.py").write_text("")
    (mods / f"pkg_{uid}" / "text.py").write_text(f"from helper2_{uid} import suffix\n"
                                                 "def tag(line):\n    return line + suffix()\n")
    (mods / f"helper2_{uid}.py").write_text("import json\ndef suffix():\n    return json.dumps('!')\n")
    monkeypatch.syspath_prepend(str(mods))
    text = importlib.import_module(f"pkg_{uid}.text")
    serialized = serialize_function(lambda line: text.tag(line), "lines")
    assert sorted(serialized.modules) == [f"helper2_{uid}.py", f"pkg_{uid}/__init__.py", f"pkg_{uid}/text.py"]
    header, _ = split_payload(serialized.payload)
    assert header["modules"] == sorted([f"helper2_{uid}", f"pkg_{uid}.text"])
    # On a node with only the shipped files, it runs.
    assert header["modules_path"] == "batchyard_modules.zip"
    node = tmp_path / "node"
    node.mkdir()
    write_modules_zip(node / "batchyard_modules.zip", serialized.modules)
    again = tmp_path / "again.zip"
    write_modules_zip(again, serialized.modules)
    assert again.read_bytes() == (node / "batchyard_modules.zip").read_bytes(), "the zip is not reproducible"
    (node / "batchyard_fn.pkl").write_bytes(serialized.payload)
    (node / "in.txt").write_text("a\nb\n")
    res = _inline("lines", "batchyard_fn.pkl", "in.txt", "out", cwd=node)
    assert res.returncode == 0, res.stderr
    assert (node / "out" / "in.txt").read_text() == 'a"!"\nb"!"\n'
    # Installed code is never shipped: stdlib, site-packages, batchyard itself.
    import batchyard.core.job

    assert serialize_function(lambda line: json.dumps(batchyard.core.job.parse_duration(line)), "lines").modules == {}


# ---------------------------------------------------------------------------------------------- backends
class Env:
    """One backend for the inline jobs of a test: its config and containers."""

    def __init__(self, name: str, project: Any, config: Config) -> None:
        self.name, self.project, self.config = name, project, config
        self.ins = project.container("inputs")
        self.outs = project.container("outputs")

    def blob(self, name: str) -> bytes:
        return self.project.storage.download_bytes(self.outs, name)

    def run_command_job(self, job_id: str, command: str, resource: str, prefix: str, pattern: str) -> None:
        from batchyard.backends import get_backend

        job = job_from_dict({
            "id": job_id, "command": command, "resource_files": [{"source": resource}],
            "inputs": {"container": self.ins, "prefix": prefix},
            "outputs": [{"pattern": pattern, "container": self.outs, "path": "{job_id}/", "optional": True}],
        }, source="test", base_dir=self.project.dir)
        with get_backend(None, self.config) as be:
            be.preflight()
            be.submit(job)
            counts = be.run_to_end(job, workers=2, timeout=90, poll_interval=0.3)
        assert counts.finished and counts.failed == 0, counts


def _azure_available() -> str | None:
    try:
        importlib.import_module("batchyard.backends.azure.backend")
    except ImportError as exc:
        return f"batchyard.backends.azure.backend is not available yet ({exc})"
    return None


@pytest.fixture(params=["local", "azure"])
def env(request: pytest.FixtureRequest, project: Any) -> Iterator[Env]:
    if request.param == "local":
        yield Env("local", project, project.config())
        return
    reason = _azure_available()
    if reason:
        pytest.skip(reason)
    emulator = request.getfixturevalue("batch_emulator")
    toml = project.dir / "batchyard.toml"
    toml.write_text(toml.read_text(encoding="utf-8") + textwrap.dedent(f"""
        [azure]
        pool_id = "inline-{project.uid}"
        poll_interval = 0.3
        [azure.pool]
        dedicated_nodes = 1
        task_slots_per_node = 2
        """), encoding="utf-8")
    environ = {**project.env, "BATCHYARD_BATCH_URL": emulator.url, "BATCHYARD_BATCH_ACCOUNT": emulator.account_name,
               "BATCHYARD_BATCH_KEY": emulator.account_key}
    yield Env("azure", project, load_config(toml, backend="azure", env=environ))


def _by_label(run: Any) -> dict[str, dict[str, Any]]:
    return {r["label"]: r for r in run.results()}


def test_map_lines_upper_matches_the_command_job(env: Env) -> None:
    env.project.put_inputs(env.ins, LINE_INPUTS, prefix="text/")
    env.project.put_inputs(env.ins, {"other/skip.txt": b"not selected\n"})
    started = time.monotonic()
    run = map_lines(lambda line: line.upper(), inputs=f"{env.ins}/text/*.txt", outputs=f"{env.outs}/{{job_id}}/",
                    job_id="upper", config=env.config, workers=2, timeout=240)
    assert run.backend_name == env.name and run.job_id == "upper"
    assert run.succeeded, run.results()
    print(f"map_lines on {env.name}: {time.monotonic() - started:.1f}s")
    assert run.outputs() == sorted(f"upper/{name}" for name in LINE_INPUTS)
    results = _by_label(run)
    assert set(results) == {f"text/{name}" for name in LINE_INPUTS}
    assert all(r["exit_code"] == 0 and r["attempts"] == 1 for r in results.values())

    (env.project.dir / "upper.py").write_text(UPPER_PY, encoding="utf-8")
    env.run_command_job("upper-cmd", "python3 upper.py {input} out/{input}", "upper.py", "text/", "out/**/*")
    for name, data in LINE_INPUTS.items():
        inline, command = env.blob(f"upper/{name}"), env.blob(f"upper-cmd/{name}")
        assert inline == command, name
        assert inline == data.decode("utf-8", "surrogateescape").upper().encode("utf-8", "surrogateescape")


def test_closure_and_map_files(env: Env) -> None:
    env.project.put_inputs(env.ins, {"a.csv": b"1,2\n3,4\n", "b.csv": b"5,6\n"})
    separator, suffix = ";", "-ok"  # locals the closures capture

    def convert(src: Path, out_dir: Path) -> None:
        rows = src.read_text().splitlines()
        (out_dir / f"{src.stem}{suffix}.txt").write_text("\n".join(r.replace(",", separator) for r in rows))
        (out_dir / "stats").mkdir()
        (out_dir / "stats" / f"{src.stem}.json").write_text(json.dumps({"rows": len(rows)}))

    run = map_files(convert, inputs=f"{env.ins}/*.csv", outputs=f"{env.outs}/files/{{job_id}}",
                    job_id="convert", config=env.config, workers=2, timeout=240)
    assert run.succeeded, run.results()
    assert run.outputs() == ["files/convert/a-ok.txt", "files/convert/b-ok.txt",
                             "files/convert/stats/a.json", "files/convert/stats/b.json"]
    assert env.blob("files/convert/a-ok.txt") == b"1;2\n3;4"
    assert json.loads(env.blob("files/convert/stats/b.json")) == {"rows": 1}


def test_function_from_a_local_helper_module(env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"inline_helper_{uuid.uuid4().hex[:8]}"
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / f"{name}.py").write_text("import textwrap\nPREFIX = '> '\n"
                                     "def quote(line):\n    return textwrap.indent(line, PREFIX) or PREFIX\n")
    monkeypatch.syspath_prepend(str(mods))
    helper = importlib.import_module(name)
    env.project.put_inputs(env.ins, {"q.txt": b"to be\r\n\r\nor not\n"})
    run = map_lines(helper.quote, inputs=f"{env.ins}/q*", outputs=f"{env.outs}/{{job_id}}/",
                    job_id="quote", config=env.config, workers=2, timeout=240)
    assert run.succeeded, run.results()
    assert env.blob("quote/q.txt") == b"> to be\r\n> \r\n> or not\n"


def test_function_that_raises_fails_the_task(env: Env) -> None:
    env.project.put_inputs(env.ins, {"good.txt": b"fine\n", "bad.txt": b"fine\nexplode here\n"})

    def careful(line: str) -> str:
        if "explode" in line:
            raise ValueError(f"cannot handle {line!r}")
        return line[::-1]

    run = map_lines(careful, inputs=f"{env.ins}/*.txt", outputs=f"{env.outs}/{{job_id}}/", job_id="raises",
                    config=env.config, workers=2, max_task_retry_count=1, timeout=240)
    assert not run.succeeded
    counts = run.counts()
    assert (counts.succeeded, counts.failed) == (1, 1)
    bad = _by_label(run)["bad.txt"]
    assert (bad["state"], bad["exit_code"], bad["attempts"]) == ("failed", EXIT_FUNCTION_RAISED, 2)
    tail = bad["stderr_tail"].rstrip().splitlines()
    assert tail[-1] == "ValueError: cannot handle 'explode here'"
    assert any("in careful" in line for line in tail[-4:])
    assert "raised on line 2 of input 'bad.txt'" in bad["stderr_tail"]
    assert run.outputs() == ["raises/good.txt"]
    assert env.blob("raises/good.txt") == b"enif\n"


@pytest.mark.private_emulator  # its node must see this test's PATH, which a shared emulator's node cannot
def test_node_without_batchyard_fails_clearly(env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`python3` on the node cannot import batchyard: the task fails saying so, not with a traceback."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" -S -I "$@"\n')
    (fake_bin / "python3").chmod(0o755)
    env.project.put_inputs(env.ins, {"n.txt": b"n\n"})
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    config = env.config
    if config.backend == "azure":  # a pool told not to install batchyard: the node really lacks it
        from dataclasses import replace

        from batchyard.core.config import PoolSection

        pool = (config.azure.pool or PoolSection()).model_copy(update={"install_batchyard": False})
        config = replace(config, azure=config.azure.model_copy(update={"pool": pool}))
    # python="python3": by default the submitting interpreter would run the task (test_inline_interpreter.py)
    run = map_lines(str.upper, inputs=f"{env.ins}/n*", outputs=f"{env.outs}/{{job_id}}/", job_id="nobatchyard",
                    config=config, workers=1, timeout=240, python="python3")
    (result,) = run.results()
    assert (result["state"], result["exit_code"]) == ("failed", EXIT_NOT_INSTALLED)
    assert "batchyard.node.inline: batchyard is not installed on this node" in result["stderr_tail"]
    # The advice fits the backend: both run tasks on this machine, neither has an Azure pool to fix.
    where = "the local backend's workers" if env.name == "local" else "the Batch emulator's nodes"
    assert f"Tasks run on this machine ({where}) with 'python3'" in result["stderr_tail"]
    assert "[azure.pool]" not in result["stderr_tail"]


def test_no_wait_then_wait(env: Env) -> None:
    env.project.put_inputs(env.ins, {"w.txt": b"w\n"})
    run = map_lines(str.upper, inputs=f"{env.ins}/w*", outputs=f"{env.outs}/{{job_id}}/", job_id="later",
                    config=env.config, wait=False)
    assert run.counts().total == 1
    counts = run.wait(timeout=240)
    assert counts.finished and run.succeeded
    assert env.blob("later/w.txt") == b"W\n"


def test_script_in_main_with_its_helper_module(project: Any) -> None:
    """A user's script: fn defined in __main__, using a module next to it; config found as the CLI finds it."""
    ins, outs = project.container("inputs"), project.container("outputs")
    project.put_inputs(ins, {"s.txt": b"one\ntwo"})
    (project.dir / "wordy.py").write_text("def count(line):\n    return f'{line}={len(line)}'\n")
    (project.dir / "script.py").write_text(textwrap.dedent(f"""
        import json
        import wordy
        from batchyard.api.mapping import map_lines

        def tag(line):
            return wordy.count(line).upper()

        run = map_lines(tag, inputs="{ins}/s*", outputs="{outs}/{{job_id}}/", job_id="script", workers=1)
        print(json.dumps({{"backend": run.backend_name, "ok": run.succeeded, "outputs": run.outputs()}}))
        """))
    res = subprocess.run([sys.executable, "script.py"], cwd=project.dir, capture_output=True, text=True,
                         timeout=120, env={**project.env, "PATH": os.environ["PATH"]})
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {"backend": "local", "ok": True,
                                                              "outputs": ["script/s.txt"]}
    assert project.storage.download_bytes(outs, "script/s.txt") == b"ONE=3\nTWO=3"


def test_default_job_id_follows_the_function_and_its_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"inline_idmod_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("def f(line):\n    return line\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)

    def job_id() -> str:
        folder = tmp_path / uuid.uuid4().hex
        folder.mkdir()
        return build_job("lines", module.f, "in-data/*.txt", "out-data", job_id=None, folder=folder).id

    first = job_id()
    assert first.startswith("lines-f-") and job_id() == first
    (tmp_path / f"{name}.py").write_text("def f(line):\n    return line + '!'\n")
    assert job_id() != first, "an edited helper module must not resume the old job"


def test_azure_pools_install_the_submitters_batchyard_wheel(tmp_path: Path) -> None:
    """Pools batchyard creates for inline jobs pip-install the submitter's batchyard wheel (staged into the
    start task; tests/test_node_wheel.py installs it on a node) and dill at its version."""
    from dataclasses import replace

    import dill

    from batchyard.api.mapping import _with_node_install
    from batchyard.api.node_wheel import wheel_filename
    from batchyard.backends.azure.pools import start_task_command
    from batchyard.core.config import PoolSection, load_config

    azure = load_config(env={"BATCHYARD_BACKEND": "azure"})
    prepared = _with_node_install(azure, folder=tmp_path)
    start = prepared.azure.pool.start_task
    assert f"./{wheel_filename()}" in start and f"dill=={dill.__version__}" in start
    assert [p.name for p in prepared.pool_start_files] == [wheel_filename()]
    command = start_task_command(prepared.azure.pool)
    assert command is not None and command.startswith("/bin/sh -c")
    assert _with_node_install(load_config(env={}), folder=tmp_path).azure.pool is None  # local backend: untouched
    existing = replace(azure, azure=azure.azure.model_copy(update={"pool_id": "mine"}))
    assert _with_node_install(existing, folder=tmp_path).azure.pool is None  # an existing pool is the user's to prepare
    off = replace(azure, azure=azure.azure.model_copy(update={"pool": PoolSection(install_batchyard=False)}))
    assert _with_node_install(off, folder=tmp_path).azure.pool.start_task is None
