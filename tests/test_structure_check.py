"""tools/check_structure.py, the structure rules `make lint` runs, on small packages written here.

Each test writes its own package (a unique name) under tmp_path and runs the script as `make lint`
does, in a child process, with that package on PYTHONPATH.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "check_structure.py"


def write_package(root: Path, modules: dict[str, str]) -> str:
    """A package of the given modules (name -> source) under ``root``; returns its unique name."""
    name = f"pkg_{uuid.uuid4().hex[:10]}"
    (root / name).mkdir()
    (root / name / "__init__.py").write_text("")
    for module, source in modules.items():
        (root / name / f"{module}.py").write_text(source.replace("PKG", name))
    return name


def run_check(root: Path, package: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, str(SCRIPT), "--package", package, *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120, check=False)


def test_a_circle_through_a_function_level_and_a_type_only_import_is_named_with_its_lines(tmp_path: Path) -> None:
    package = write_package(tmp_path, {
        "first": "def late():\n    from PKG import second\n    return second\n",
        "second": ("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from PKG.first import late\n"),
        "apart": "from PKG import first\n",  # imports into the circle but is not part of it
    })
    result = run_check(tmp_path, package)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"import circle between 2 modules: {package}.first, {package}.second" in result.stderr
    assert f"{package}.first -> {package}.second (l.2)" in result.stderr
    assert f"{package}.second -> {package}.first (l.4)" in result.stderr
    assert f"{package}.apart" not in result.stderr


def test_a_module_over_the_limit_is_named_with_its_line_count(tmp_path: Path) -> None:
    package = write_package(tmp_path, {"long": "x = 1\n" * 12, "short": "x = 1\n" * 10})
    result = run_check(tmp_path, package, "--max-lines", "10")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{package}/long.py: 12 lines, over the limit of 10" in result.stderr
    assert "short.py" not in result.stderr


def test_a_package_without_circles_or_long_modules_passes(tmp_path: Path) -> None:
    package = write_package(tmp_path, {"low": "VALUE = 1\n",
                                       "high": "from PKG.low import VALUE\n\nDOUBLE = 2 * VALUE\n"})
    result = run_check(tmp_path, package)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{package} has no import circle and no module over 450 lines" in result.stdout


def test_an_unknown_package_is_a_clear_error(tmp_path: Path) -> None:
    result = run_check(tmp_path, f"missing_{uuid.uuid4().hex[:8]}")
    assert result.returncode != 0
    assert "no package named" in result.stderr
    assert "Traceback" not in result.stderr
