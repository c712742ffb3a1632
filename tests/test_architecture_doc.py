"""docs/architecture.md opens with the tree of `batchyard`: it names every module there is, and no other."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "architecture.md"
# One tree line: the drawing (│, ├──, └── in steps of four characters), then the names (several
# separated by ", "), then two spaces or more and the note.
TREE_LINE = re.compile(r"^(?P<indent>(?:[│ ]   )*)(?:[├└]── )(?P<names>[\w./]+(?:, [\w./]+)*)(?: {2,}.*)?$")


def documented_modules() -> set[str]:
    """The ``.py`` paths the doc's first code block draws, as ``batchyard/...`` paths."""
    block = DOC.read_text(encoding="utf-8").split("```", 2)[1]
    lines = block.strip("\n").splitlines()
    assert lines[0] == "batchyard/", "the doc's first block should be the tree of batchyard/"
    folders = ["batchyard"]
    found: set[str] = set()
    for line in lines[1:]:
        match = TREE_LINE.match(line)
        assert match, f"not a tree line: {line!r}"
        depth = len(match["indent"]) // 4 + 1
        del folders[depth:]
        for name in match["names"].split(", "):
            if name.endswith("/"):
                folders.append(name.rstrip("/"))
            else:
                found.add("/".join([*folders, name]))
    return found


def test_the_tree_names_every_module_and_only_modules_that_exist() -> None:
    documented = documented_modules()
    actual = {p.relative_to(REPO).as_posix() for p in (REPO / "batchyard").rglob("*.py")}
    # A package's __init__.py may go unnamed: its folder stands for it.
    undocumented = {p for p in actual - documented if not p.endswith("/__init__.py")}
    assert not undocumented, f"modules missing from the tree in docs/architecture.md: {sorted(undocumented)}"
    assert not documented - actual, f"the tree names modules that do not exist: {sorted(documented - actual)}"
