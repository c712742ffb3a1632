"""The structure rules `make lint` enforces beside import-linter's contracts (docs/architecture.md).

1. No import circle between a package's modules. Every import counts: at module level, inside a
   function, and under ``if TYPE_CHECKING:`` (grimp reads them all from the source). Two modules
   are in one circle when each imports the other, directly or through others.
2. No module over ``--max-lines`` lines (450 by default).

Run from the repository root: ``python tools/check_structure.py`` (options: ``--package``, ``--max-lines``).
Exit status 0 when both rules hold, 1 with one message per broken rule otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import sys
from pathlib import Path

import grimp

DEFAULT_PACKAGE = "batchyard"
DEFAULT_MAX_LINES = 450


def import_circles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The import circles of ``graph``: each as the sorted modules of one strongly connected component."""
    circles: list[list[str]] = []
    placed: set[str] = set()
    for module in sorted(graph.modules):
        if module in placed:
            continue
        # The modules this one reaches and that reach it back share a circle with it.
        together = graph.find_upstream_modules(module) & graph.find_downstream_modules(module)
        if together:
            circle = sorted(together | {module})
            placed.update(circle)
            circles.append(circle)
    return circles


def _import_lines(graph: grimp.ImportGraph, importer: str, imported: str) -> str:
    lines = sorted({detail["line_number"] for detail in graph.get_import_details(importer=importer,
                                                                               imported=imported)})
    return "l." + ",".join(map(str, lines))


def describe_circle(graph: grimp.ImportGraph, circle: list[str]) -> str:
    """The circle's modules, and one closed path through its first module with each import's line."""
    start = circle[0]
    members = set(circle)
    path: list[str] = []
    for step in sorted(graph.find_modules_directly_imported_by(start) & members):
        back = graph.find_shortest_chain(importer=step, imported=start)
        if back is not None:
            path = [start, *back]
            break
    hops = [f"    {a} -> {b} ({_import_lines(graph, a, b)})" for a, b in itertools.pairwise(path)]
    return "\n".join([f"import circle between {len(circle)} modules: {', '.join(circle)}", *hops])


def oversized_modules(package_dir: Path, max_lines: int) -> list[tuple[Path, int]]:
    """Every ``.py`` file under ``package_dir`` with more than ``max_lines`` lines, with its count."""
    found = []
    for path in sorted(package_dir.rglob("*.py")):
        count = len(path.read_text(encoding="utf-8").splitlines())
        if count > max_lines:
            found.append((path, count))
    return found


def check(package: str, max_lines: int) -> list[str]:
    """One message per broken rule (empty when the package keeps both)."""
    spec = importlib.util.find_spec(package)  # locates the package without running its code
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"check_structure: no package named {package!r} on the path")
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    graph = grimp.build_graph(package, exclude_type_checking_imports=False, cache_dir=None)
    problems = [describe_circle(graph, circle) for circle in import_circles(graph)]
    problems += [f"{path.relative_to(package_dir.parent)}: {count} lines, over the limit of {max_lines} "
                 "(split it into modules that each hold one thing)"
                 for path, count in oversized_modules(package_dir, max_lines)]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--package", default=DEFAULT_PACKAGE, help="the importable package to check")
    parser.add_argument("--max-lines", type=int, default=DEFAULT_MAX_LINES, help="the most lines a module may have")
    args = parser.parse_args(argv)
    problems = check(args.package, args.max_lines)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"check_structure: {len(problems)} problem(s) in {args.package}", file=sys.stderr)
        return 1
    print(f"check_structure: {args.package} has no import circle and no module over {args.max_lines} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
