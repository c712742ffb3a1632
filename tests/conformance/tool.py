"""The command the conformance scenarios run on every backend (a resource file).

python3 tool.py MODE ARGS...:
  upper IN OUT            uppercase IN into OUT
  argv OUT ARG...         write the argv it received (and AZ_BATCH_* env) as JSON into OUT
  fail CODE               print to stderr, exit CODE
  flaky DIR KEY OUT       fail the first time KEY is seen under DIR, succeed after (writes OUT)
  hang PIDFILE            start a child and a grandchild, write their pids, sleep forever
  nothing                 succeed without writing anything
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "upper":
        data = Path(args[0]).read_bytes()
        Path(args[1]).write_bytes(data.upper())
        print(f"uppercased {len(data)} bytes")
        return 0
    if mode == "argv":
        env = {k: v for k, v in os.environ.items() if k.startswith("AZ_BATCH_") or k.startswith("BY_")}
        secrets = [k for k in ("AZURE_STORAGE_CONNECTION_STRING", "BATCHYARD_BATCH_KEY") if k in os.environ]
        Path(args[0]).write_text(json.dumps({"argv": args[1:], "env": env, "cwd": os.getcwd(),
                                             "secrets_seen": secrets}), encoding="utf-8")
        return 0
    if mode == "fail":
        print(f"tool: failing on purpose with code {args[0]}", file=sys.stderr)
        return int(args[0])
    if mode == "flaky":
        marker = Path(args[0]) / f"{args[1]}.seen"
        if not marker.exists():
            marker.write_text("1")
            print("tool: first attempt fails", file=sys.stderr)
            return 7
        Path(args[2]).write_text("ok on retry\n")
        return 0
    if mode == "hang":
        child = subprocess.Popen([sys.executable, "-c",
                                  "import subprocess,sys,time;"
                                  "g=subprocess.Popen(['sleep','300']);"
                                  f"open({args[0]!r}+'.grandchild','w').write(str(g.pid));"
                                  "time.sleep(300)"])
        Path(args[0]).write_text(str(child.pid))
        time.sleep(300)
        return 0
    if mode == "nothing":
        return 0
    print(f"tool: unknown mode {mode}", file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main())
