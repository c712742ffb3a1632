"""The final step's preamble (batchyard/node/output_listing.py) on its own, against Azurite: the
listing it writes, a name that would leave the working dir (listed, never staged), and a failure
that names its reason but never a URL (they carry SAS signatures)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

from batchyard.node import output_listing
from batchyard.storage.account import Storage

LISTER = Path(output_listing.__file__)


def _run(workdir: Path, locations: dict, *argv: str) -> subprocess.CompletedProcess[str]:
    (workdir / "locations.json").write_text(json.dumps(locations), encoding="utf-8")
    return subprocess.run([sys.executable, str(LISTER), "locations.json", "--", *argv], cwd=workdir,
                          capture_output=True, text=True, timeout=120)


def test_lists_and_stages_then_runs_the_command(storage: Storage, tmp_path: Path) -> None:
    container = f"lst-{uuid.uuid4().hex[:8]}"
    storage.ensure_container(container)
    names = ["job/a.out", "job/sub dir/b $(x).out", "job/ü.out"]
    for name in names:
        storage.upload_bytes(container, name, name.encode())
    storage.upload_bytes(container, "other/c.out", b"not listed")
    url = storage.container_sas_url(container, expiry=timedelta(hours=1), permission="rl")
    done = _run(tmp_path, {"stage": True, "locations": [{"container": container, "prefix": "job/", "url": url}]},
                sys.executable, "-c", "import sys; print('ran'); sys.exit(5)")
    assert done.returncode == 5 and done.stdout == "ran\n", done.stderr
    listing = [json.loads(line) for line in (tmp_path / "outputs.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(entry["name"] for entry in listing) == sorted(names)
    for entry in listing:
        assert entry["path"] == f"outputs/{container}/{entry['name']}"
        assert (tmp_path / entry["path"]).read_bytes() == entry["name"].encode()
        assert entry["size"] == len(entry["name"].encode())


def test_a_name_leaving_the_working_dir_is_never_staged() -> None:
    assert output_listing.staged_path("c", "job/a.txt") == "outputs/c/job/a.txt"
    for name in ("../x", "job/../../x", "/abs", "a\\b", "job/./x", ""):
        assert output_listing.staged_path("c", name) is None, name


def test_a_listing_that_fails_names_the_reason_and_no_url(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9/devstoreaccount1/c?sv=2021&sig=SECRETSIGNATURE"
    done = _run(tmp_path, {"stage": False, "locations": [{"container": "c", "prefix": "", "url": url}]}, "true")
    assert done.returncode == output_listing.LISTING_FAILED_EXIT
    assert "could not be listed" in done.stderr
    assert "SECRETSIGNATURE" not in done.stderr and "127.0.0.1" not in done.stderr
    bad_scheme = _run(tmp_path, {"locations": [{"container": "c", "url": "file:///etc/passwd"}]}, "true")
    assert bad_scheme.returncode == output_listing.LISTING_FAILED_EXIT and "passwd" not in bad_scheme.stderr
