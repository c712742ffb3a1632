"""The storage floor of ``e2e``: the same blob traffic with the raw SDK and nothing else.

``python benchmarks/e2e_raw.py CONN CONTAINER IN_DIR`` (run from the folder holding ``up.py``): two
threads, each taking the next file and doing what a tiny task needs of storage, in the most
favourable order: put the input blob, get it back into a scratch folder, run ``python up.py IN OUT``,
put the output blob. So each file's upload overlaps the other thread's command, there is no queue,
no table, no record, no log upload, no retry bookkeeping: what is left is the commands and the three
blob requests a file costs on Azurite. No tool that stages its tasks' files through this storage
does less; its time over the floor's is what storage alone costs on this machine.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from azure.storage.blob import BlobServiceClient

SLOTS = 2


def main(conn: str, container: str, in_dir: str) -> int:
    service = BlobServiceClient.from_connection_string(conn)
    client = service.get_container_client(container)
    client.create_container()
    files = sorted(Path(in_dir).iterdir())
    lock = threading.Lock()
    failures: list[str] = []

    def slot() -> None:
        with tempfile.TemporaryDirectory(prefix="by-raw-") as scratch:
            while True:
                with lock:
                    if not files:
                        return
                    path = files.pop()
                name = path.name
                client.upload_blob(f"in/{name}", path.read_bytes(), overwrite=True)
                staged = Path(scratch) / name
                staged.write_bytes(client.download_blob(f"in/{name}").readall())
                out = Path(scratch) / (path.stem + ".out")
                done = subprocess.run([sys.executable, "up.py", str(staged), str(out)], capture_output=True)
                if done.returncode != 0:
                    failures.append(f"{name}: exit {done.returncode}")
                    continue
                client.upload_blob(f"out/{out.name}", out.read_bytes(), overwrite=True)

    threads = [threading.Thread(target=slot) for _ in range(SLOTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        print("\n".join(failures[:10]), file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
