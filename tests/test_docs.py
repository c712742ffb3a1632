"""The docs stay true: docs/quickstart.md's shell commands run as written, docs/cli.md matches the CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SH_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)


def sh_blocks(doc: Path) -> list[str]:
    return SH_BLOCK.findall(doc.read_text(encoding="utf-8"))


def test_quickstart_commands_run_as_written(project) -> None:
    blocks = sh_blocks(REPO / "docs" / "quickstart.md")
    assert len(blocks) >= 4
    folder = project.dir / "newcomer"
    folder.mkdir()
    # `batchyard` is the installed command; here the same CLI through this interpreter.
    prelude = f'set -euo pipefail\nbatchyard() {{ "{sys.executable}" -m batchyard "$@"; }}\n'
    script = prelude + "\n".join(f"echo '+ block {i}'\n{b}" for i, b in enumerate(blocks))
    done = subprocess.run(["bash", "-c", script], cwd=folder, env=project.env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.stdout.rstrip().endswith("HELLO")
    assert "tasks: 2" in done.stdout  # the plan
    assert (folder / "shout" / "results" / "shout-out" / "shout" / "morning.loud.txt").read_text(
        encoding="utf-8") == "GOOD MORNING, WORLD\n"


def test_cli_reference_matches_the_commands() -> None:
    rendered = subprocess.run([sys.executable, "-m", "batchyard.cli.reference", "--stdout"], check=True,
                              capture_output=True, text=True, encoding="utf-8", timeout=120).stdout
    committed = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    assert committed == rendered, "docs/cli.md is stale: run python -m batchyard.cli.reference"


TEST_REF = re.compile(r"`(?:[\w/]*/)?(test_\w+\.py)?::(test_\w+)(?:\[[^\]`]*\])?`")


def test_tests_named_in_the_security_doc_exist() -> None:
    """docs/security.md names the test holding each threat and each break of issue #23 as
    ``file.py::test_name`` (``::test_name`` goes on with the file named before it): each must be
    a test function in that file under tests/."""
    text = (REPO / "docs" / "security.md").read_text(encoding="utf-8")
    current, checked, missing = None, 0, []
    for file_name, test_name in TEST_REF.findall(text):
        current = file_name or current
        assert current is not None, f"::{test_name} follows no file name"
        sources = [p.read_text(encoding="utf-8") for p in (REPO / "tests").rglob(current)]
        if not any(re.search(rf"^def {test_name}\(", s, re.M) for s in sources):
            missing.append(f"{current}::{test_name}")
        checked += 1
    assert checked >= 40, f"only {checked} test names found: has the page's format changed?"
    assert missing == [], f"docs/security.md names tests that do not exist: {missing}"
