"""Uppercase one text file: python3 upper.py INPUT OUTPUT.

The demo's per-file command. It refuses input whose first line is "!fail", which is how
the example shows a failed task (exit code 2, reason on stderr).
"""

import os
import sys


def main() -> int:
    if len(sys.argv) != 3:
        print(f"usage: {sys.argv[0]} INPUT OUTPUT (got {len(sys.argv) - 1} arguments)", file=sys.stderr)
        return 64
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, encoding="utf-8", newline="") as fh:
        text = fh.read()
    if text.startswith("!fail"):
        print(f"{src}: refusing input marked '!fail' (the demo's deliberate failure)", file=sys.stderr)
        return 2
    with open(dst, "w", encoding="utf-8", newline="") as fh:
        fh.write(text.upper())
    print(f"{os.environ.get('AZ_BATCH_TASK_ID', '?')}: {src} -> {dst} ({len(text)} chars)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
