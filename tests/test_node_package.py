"""batchyard.node stays what runs on a node: it imports core, storage and itself only (function-level
and type-only imports counted), its modules import each other without a circle, and it never
speaks of a dispatcher (the local backend's workers, messages and queue are not its business)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

NODE = Path(__file__).resolve().parent.parent / "batchyard" / "node"
ALLOWED = ("batchyard.core", "batchyard.storage", "batchyard.node")
DISPATCHER_WORDS = re.compile(r"\b(workers?|messages?|queues?)\b", re.I)


def _imports(path: Path) -> set[str]:
    """Every batchyard module ``path`` imports, wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("batchyard")}


def test_node_imports_only_core_storage_and_itself() -> None:
    modules = sorted(NODE.glob("*.py"))
    assert len(modules) >= 6
    for path in modules:
        outside = {name for name in _imports(path) if not name.startswith(ALLOWED)}
        assert not outside, f"{path.name} imports {sorted(outside)}"


def test_node_modules_import_each_other_without_a_circle() -> None:
    names = {path.stem for path in NODE.glob("*.py")} - {"__init__"}
    graph = {path.stem: {name.split(".")[2] for name in _imports(path)
                         if name.startswith("batchyard.node.") and name.split(".")[2] in names}
             for path in NODE.glob("*.py") if path.stem in names}
    assert "taskspec" in graph["runner"]  # the graph is read for real

    def reaches(start: str, goal: str, seen: frozenset[str] = frozenset()) -> bool:
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})) for nxt in graph[start])

    circles = sorted(name for name in graph if reaches(name, name))
    assert not circles, f"import circle through {circles}"


def test_node_never_speaks_of_a_dispatcher() -> None:
    for path in sorted(NODE.glob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            assert not DISPATCHER_WORDS.search(line), f"{path.name}:{number}: {line.strip()}"


def test_no_node_module_is_over_450_lines() -> None:
    for path in sorted(NODE.glob("*.py")):
        assert len(path.read_text(encoding="utf-8").splitlines()) <= 450, path.name
