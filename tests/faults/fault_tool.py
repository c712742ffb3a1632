"""The command the fault tests run (by absolute path, so every backend and worker finds it).

python3 fault_tool.py MODE ARGS...:
  count RUNS KEY SLEEP OUT MB   append "KEY pid" to RUNS, sleep SLEEP s, write MB MiB of known bytes to OUT
                                (OUT '-' writes nothing); SLEEP '@PATH' waits until the file PATH
                                exists instead (a gate the test opens when it has seen what it
                                waited for; at most GATE_LIMIT_S, so no command outlives a test)
  fail RUNS KEY CODE            append "KEY pid" to RUNS, print to stderr, exit CODE
  hang PIDDIR                   start: a child in our group, a grandchild that called setsid (its parent
                                lives), and a daemon (setsid + double fork, its parent exits); write their
                                pids into PIDDIR; sleep forever
  argv OUT ARG...               write the argv it received as JSON into OUT (an absolute path)
  links OUTSIDE                 in the cwd: real.out, a symlink leak.out -> OUTSIDE/secret.txt, a symlinked
                                dir linkdir -> OUTSIDE
  env OUT                       write its environment as JSON into OUT
"""

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

MIB = 1024 * 1024
GATE_LIMIT_S = 600.0


def block(i: int) -> bytes:
    """The i-th MiB of every 'known bytes' file (tests recompute it to check md5s)."""
    return hashlib.sha256(str(i).encode()).digest() * (MIB // 32)


def note(runs: str, key: str) -> None:
    fd = os.open(runs, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{key} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def pause(sleep: str) -> None:
    """Sleep ``sleep`` seconds, or with ``@PATH`` until the file PATH exists."""
    if not sleep.startswith("@"):
        time.sleep(float(sleep))
        return
    gate, deadline = Path(sleep[1:]), time.monotonic() + GATE_LIMIT_S
    while not gate.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def main() -> int:
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "count":
        runs, key, sleep, out, mb = args
        note(runs, key)
        pause(sleep)
        if out != "-":
            with open(out, "wb") as fh:
                for i in range(int(mb)):
                    fh.write(block(i))
        print(f"count {key} done")
        return 0
    if mode == "fail":
        runs, key, code = args
        note(runs, key)
        print("line one of stderr", file=sys.stderr)
        print(f"fault_tool: failing on purpose with code {code}", file=sys.stderr)
        return int(code)
    if mode == "hang":
        piddir = Path(args[0])
        sleeper = [sys.executable, "-c", "import time; time.sleep(300)"]
        child = subprocess.Popen(sleeper)
        (piddir / "child").write_text(str(child.pid))
        # A grandchild in a new session, whose parent (the middle process) stays alive.
        middle = subprocess.Popen([sys.executable, "-c",
                                   "import subprocess,sys,time;"
                                   "g=subprocess.Popen(sys.argv[2:],start_new_session=True);"
                                   "open(sys.argv[1],'w').write(str(g.pid));time.sleep(300)",
                                   str(piddir / "setsid_grandchild"), *sleeper])
        (piddir / "middle").write_text(str(middle.pid))
        # A daemon: setsid in a grandchild whose parent exits at once (it is reparented away from us).
        subprocess.run([sys.executable, "-c",
                        "import subprocess,sys;"
                        "g=subprocess.Popen(sys.argv[2:],start_new_session=True);"
                        "open(sys.argv[1],'w').write(str(g.pid))",
                        str(piddir / "daemon"), *sleeper], check=True)
        (piddir / "ready").write_text("1")
        time.sleep(300)
        return 0
    if mode == "argv":
        Path(args[0]).write_text(json.dumps({"argv": args[1:], "cwd": os.getcwd(),
                                             "files": sorted(os.listdir("."))}), encoding="utf-8")
        return 0
    if mode == "links":
        outside = Path(args[0])
        Path("real.out").write_text("real\n")
        os.symlink(outside / "secret.txt", "leak.out")
        os.symlink(outside, "linkdir")
        return 0
    if mode == "env":
        Path(args[0]).write_text(json.dumps(dict(os.environ)), encoding="utf-8")
        return 0
    print(f"fault_tool: unknown mode {mode}", file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main())
