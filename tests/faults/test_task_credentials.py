"""Issue #23, point 2: a task can read no credential up its process chain, and a fragment of a key is
masked wherever batchyard records text.

The local tests run ``ancestor_probe.py`` as a real task under ``batchyard run`` and under
``batchyard worker`` (real worker processes); the emulator test runs it on the azure backend against a
detached Batch emulator (its own process, as ``batchyard emulator start --batch`` runs it). The probe
reads every ancestor's environ and cmdline and the files they name, and reports which secret it found
where (labels only).

Processes above the test (pytest, its shell, pid 1) are not batchyard's: a secret the user put in
their environment is theirs to keep. Findings there are set aside, and only when that process is one
of the test's own ancestors; every process batchyard started must be walked and clean.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from batchyard.core.redact import MASK, redact, register_secret
from batchyard.emulator.azurite import WELL_KNOWN_KEY
from batchyard.emulator.batch import start_detached, stop_detached
from batchyard.storage.account import StorageAccount

pytestmark = pytest.mark.timeout(180)
PROBE = Path(__file__).with_name("ancestor_probe.py").resolve()
PY = sys.executable


def _own_chain() -> set[int]:
    """This test process and its ancestors (not batchyard's)."""
    chain, pid = set(), os.getpid()
    while pid:
        chain.add(pid)
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            break
        pid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:"))
    return chain


def _needles(tmp_path: Path, conn: str, batch_key: str) -> Path:
    account_key = StorageAccount.from_connection_string(conn).account_key
    path = tmp_path / "needles.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"account key": account_key, "connection string": conn, "batch key": batch_key}, fh)
    return path


def _probe_job(project: Any, job_id: str, needles: Path) -> Path:
    """job.toml with one task: the probe, writing its report to the returned path."""
    report = project.dir / f"{job_id}-probe.json"
    command = " ".join(shlex.quote(str(a)) for a in (PY, PROBE, needles, report))
    (project.dir / f"{job_id}.csv").write_text("KEY\nonly\n", encoding="utf-8")
    (project.dir / "job.toml").write_text(f'id = "{job_id}"\ncommand = {json.dumps(command)}\n'
                                          f'tasks = "{job_id}.csv"\n', encoding="utf-8")
    return report


def _assert_walked_and_clean(report: Path, must_walk: set[int]) -> list[dict[str, Any]]:
    data = json.loads(report.read_text())
    chain = data["chain"]
    walked = {entry["pid"] for entry in chain}
    assert must_walk <= walked, f"the probe did not reach {must_walk - walked} (stopped: {data['stopped']})"
    outside = _own_chain()
    found = [(e["pid"], e["name"], e["findings"]) for e in chain if e["findings"] and e["pid"] not in outside]
    assert not found, f"a task can read credentials up its process chain: {found}"
    return chain


def _cli(project: Any, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([PY, "-m", "batchyard", *args], cwd=project.dir, env={**project.env, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("entry", ["run", "worker"])
def test_a_local_task_finds_no_credential_up_its_process_chain(entry: str, project: Any, tmp_path: Path) -> None:
    conn = project.env["AZURE_STORAGE_CONNECTION_STRING"]
    batch_key = base64.b64encode(secrets.token_bytes(64)).decode()
    job_id = f"probe-{entry}"
    report = _probe_job(project, job_id, _needles(tmp_path, conn, batch_key))
    env = {"BATCHYARD_BATCH_KEY": batch_key}
    if entry == "worker":
        submitted = _cli(project, "run", "job.toml", "--no-wait", env=env)
        assert submitted.wait(timeout=120) == 0, submitted.communicate()
        proc = _cli(project, "worker", "--workers", "1", "--idle-exit", "2", env=env)
    else:
        proc = _cli(project, "run", "job.toml", "--workers", "1", env=env)
    stdout, stderr = proc.communicate(timeout=150)
    assert proc.returncode == 0, stderr[-3000:] + stdout[-2000:]
    chain = _assert_walked_and_clean(report, {proc.pid})
    assert chain[0]["pid"] != proc.pid, "the task's parent is a worker process of the CLI, not the CLI itself"
    assert chain[1]["pid"] == proc.pid


def test_a_task_on_the_batch_emulator_finds_no_credential_up_its_process_chain(project: Any, tmp_path: Path) -> None:
    """The azure backend against a detached emulator: the task runs in the emulator's process tree."""
    conn = project.env["AZURE_STORAGE_CONNECTION_STRING"]
    home = tmp_path / "emulator-home"
    record = start_detached(home=home, storage_connection_string=conn)
    try:
        report = _probe_job(project, "probe-emulator", _needles(tmp_path, conn, record.account_key))
        env = {"BATCHYARD_BACKEND": "azure", "BATCHYARD_BATCH_URL": record.url,
               "BATCHYARD_BATCH_ACCOUNT": record.account_name, "BATCHYARD_BATCH_KEY": record.account_key}
        proc = _cli(project, "run", "job.toml", env=env)
        stdout, stderr = proc.communicate(timeout=150)
        assert proc.returncode == 0, stderr[-3000:] + stdout[-2000:]
        _assert_walked_and_clean(report, {record.pid})
    finally:
        stop_detached(home=home)


def test_the_task_environment_has_no_batchyard_home(project: Any, tmp_path: Path) -> None:
    """BATCHYARD_HOME (where the emulator's key file and Azurite's data live) is not passed to a task."""
    out = tmp_path / "env.json"
    (project.dir / "t.csv").write_text("KEY\nonly\n", encoding="utf-8")
    command = " ".join(shlex.quote(a) for a in (PY, "-c", "import json, os, sys; json.dump(dict(os.environ), "
                                                "open(sys.argv[1], 'w'))", str(out)))
    (project.dir / "job.toml").write_text(f'id = "homeless"\ncommand = {json.dumps(command)}\ntasks = "t.csv"\n',
                                          encoding="utf-8")
    proc = _cli(project, "run", "job.toml", "--workers", "1", env={})
    _, stderr = proc.communicate(timeout=150)
    assert proc.returncode == 0, stderr[-3000:]
    seen = json.loads(out.read_text())
    assert "AZ_BATCH_TASK_ID" in seen and "PATH" in seen
    assert [name for name in seen if name.startswith("BATCHYARD_")] == []


# ---------------------------------------------------------------------------------------------- fragments
def test_a_fragment_of_a_key_is_masked_in_a_stderr_tail() -> None:
    """The first 20 characters of the account key, as a hostile blob name printed them, are masked; so are
    a suffix and an inner piece, raw or URL-encoded; shorter pieces and ordinary text are left alone."""
    key = WELL_KNOWN_KEY
    register_secret(f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={key};"
                    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;")
    tail = f"cat: 'x{key[:20]}': No such file or directory\n"
    assert key[:20] not in redact(tail) and MASK in redact(tail)
    assert redact(tail).startswith("cat: 'x***'")
    for piece in (key[-12:], key[30:42], key[40:48]):
        assert piece not in redact(f"stderr: ...{piece}...")
    encoded = "K1SZFPTOtr%2FKBHBeksoGMGw%3D%3D"  # the key's end as it appears in a URL
    assert "KBHBeks" not in redact(f"GET /x?k={encoded} 403")
    # The connection string's public parts, short pieces of the key and plain words stay.
    for text in ("AccountName=devstoreaccount1 BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1",
                 f"seven {key[:7]} chars", "DefaultEndpointsProtocol=http", "successfully uploaded 12345678 bytes"):
        assert redact(text) == text


def test_a_fragment_of_a_batch_key_is_masked_in_a_failure_message() -> None:
    batch_key = base64.b64encode(secrets.token_bytes(64)).decode()
    register_secret(batch_key)
    message = f"command exited with code 1: bad token {batch_key[5:25]}; retry"
    assert redact(message) == "command exited with code 1: bad token ***; retry"


def test_a_stderr_tail_with_the_start_of_both_keys_is_recorded_masked(project: Any, tmp_path: Path) -> None:
    """The chained attack of issue #23: a command prints the first 20 characters of the storage key and of
    the Batch key to stderr; the task's recorded stderr tail (``status --json``) shows neither."""
    account_key = StorageAccount.from_connection_string(project.env["AZURE_STORAGE_CONNECTION_STRING"]).account_key
    batch_key = base64.b64encode(secrets.token_bytes(64)).decode()
    printed = tmp_path / "printed.txt"
    printed.write_text(f"cat: 'x{account_key[:20]}': No such file\nbad token {batch_key[:20]}\n", encoding="utf-8")
    command = " ".join(shlex.quote(a) for a in (PY, "-c", "import sys; sys.stderr.write(open(sys.argv[1]).read()); "
                                                "sys.exit(3)", str(printed)))
    (project.dir / "t.csv").write_text("KEY\nonly\n", encoding="utf-8")
    (project.dir / "job.toml").write_text(f'id = "leaky"\ncommand = {json.dumps(command)}\ntasks = "t.csv"\n',
                                          encoding="utf-8")
    env = {"BATCHYARD_BATCH_KEY": batch_key}
    run = _cli(project, "run", "job.toml", "--workers", "1", env=env)
    _, stderr = run.communicate(timeout=150)
    assert run.returncode == 1, stderr[-3000:]
    status = _cli(project, "status", "leaky", "--json", env=env)
    stdout, stderr = status.communicate(timeout=120)
    assert status.returncode == 0, stderr[-3000:]
    (task,) = json.loads(stdout)["tasks"]
    tail = task["stderr_tail"]
    assert "No such file" in tail and "bad token" in tail
    assert account_key[:20] not in tail and batch_key[:20] not in tail
    assert tail.count(MASK) == 2, tail


_HIDE_AND_REPORT = """
import ctypes, json, os, subprocess, sys
from batchyard.core.secret_handoff import hide_credentials
conn = os.environ["AZURE_STORAGE_CONNECTION_STRING"]
cleared = hide_credentials()
libc = ctypes.CDLL(None)
def shown(pid):
    # A process that is not dumpable has its /proc files owned by root: not root, it may not read even
    # its own environ. Dumpable for this read only; the report's "dumpable" sees it off again.
    libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
    try:
        return open(f"/proc/{pid}/environ", "rb").read()
    finally:
        libc.prctl(4, 0, 0, 0, 0)
child = os.fork()
if child == 0:
    os._exit(0 if conn.encode() not in shown("self") else 1)
_, forked = os.waitpid(child, 0)
inherited = subprocess.run(["sh", "-c", 'printf %s "$AZURE_STORAGE_CONNECTION_STRING"'], capture_output=True, text=True)
json.dump({"cleared": sorted(cleared), "shown": [v in shown("self") for v in (conn.encode(), b"BY_VISIBLE=yes")],
           "forked_clean": forked == 0, "os_environ": os.environ["AZURE_STORAGE_CONNECTION_STRING"] == conn,
           "inherited": inherited.stdout == conn, "dumpable": libc.prctl(3, 0, 0, 0, 0)}, sys.stdout)
"""


def test_hide_credentials_clears_proc_environ_but_keeps_the_variables_working(project: Any) -> None:
    conn = project.env["AZURE_STORAGE_CONNECTION_STRING"]
    env = {**project.env, "BY_VISIBLE": "yes", "MYREGISTRY_PASSWORD": "x" * 20, "BY_CUSTOM_CONN": conn}
    proc = subprocess.run([PY, "-c", _HIDE_AND_REPORT], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert {"AZURE_STORAGE_CONNECTION_STRING", "BATCHYARD_HOME", "MYREGISTRY_PASSWORD", "BY_CUSTOM_CONN"} <= set(
        report["cleared"]) and "BY_VISIBLE" not in report["cleared"]
    assert report["shown"] == [False, True], "the key is still in /proc/<pid>/environ (or everything was cleared)"
    assert report["forked_clean"] and report["os_environ"] and report["inherited"]
    assert report["dumpable"] == 0


@pytest.mark.parametrize(("extra_env", "message"), [
    ({}, "no storage connection string: pass --storage-connection-string-env VAR"),
    ({"BATCHYARD_SECRETS_FD": "97"}, "BATCHYARD_SECRETS_FD: no secrets could be read from file descriptor '97'"),
])
def test_the_emulator_without_its_secrets_says_what_is_missing(extra_env: dict[str, str], message: str,
                                                               tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "BATCHYARD_SECRETS_FD"} | extra_env
    proc = subprocess.run([PY, "-m", "batchyard.emulator.batch", "--data-dir", str(tmp_path / "d")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
