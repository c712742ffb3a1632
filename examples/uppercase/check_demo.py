"""Check the demo's result: every task succeeded except the one input that fails on purpose.

`make demo` runs this after `batchyard run examples/uppercase/job.toml`, which exits 1
because a task failed. This script turns "failed exactly as intended" into exit 0 and
anything else (a wrong output, an unexpected failure) into exit 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

from batchyard.backends import get_backend
from batchyard.core.config import load_config
from batchyard.core.job import load_job

HERE = Path(__file__).resolve().parent
EXPECTED_FAILURE = "deliberately failing.txt"


def main() -> int:
    job = load_job(HERE / "job.toml")
    problems: list[str] = []
    with get_backend(None, load_config()) as backend:
        results = list(backend.list_task_results(job.id))
        inputs = sorted(p.name for p in (HERE / "inputs").iterdir())
        if len(results) != len(inputs):
            problems.append(f"{len(results)} tasks, expected {len(inputs)}")
        for result in results:
            name = result.label.rsplit("/", 1)[-1]
            if name == EXPECTED_FAILURE:
                if (result.state, result.exit_code) != ("failed", 2):
                    problems.append(f"{name}: expected to fail with exit code 2, got {result.state} {result.exit_code}")
                continue
            if result.state != "succeeded":
                problems.append(f"{name}: {result.state} ({result.failure_category}: {result.failure_message})")
                continue
            stem = name.rsplit(".", 1)[0]
            got = backend.storage.download_bytes("output-data", f"{job.id}/{stem}.out.txt")
            want = (HERE / "inputs" / name).read_text(encoding="utf-8").upper().encode()
            if got != want:
                problems.append(f"{name}: output differs from the uppercased input")
    if problems:
        print("demo check FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(f"demo OK: {len(results) - 1} tasks succeeded with byte-exact outputs; "
          f"'{EXPECTED_FAILURE}' failed with exit code 2, as intended.")
    print("Try: .venv/bin/batchyard status uppercase   |   .venv/bin/batchyard logs uppercase TASK_ID --stderr")
    return 0


if __name__ == "__main__":
    sys.exit(main())
