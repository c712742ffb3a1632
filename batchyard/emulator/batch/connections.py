"""A bound on the connections the emulator serves at once (one thread each).

When the bound is reached, the connection that has waited longest for its next request (an
idle keep-alive connection, or one trickling its request line or headers) is closed to make
room: clients reconnect transparently (urllib3 checks a pooled connection before reusing it),
and an SDK that never releases a connection (its streamed downloads that end in an error keep
theirs while the exception lives) cannot exhaust the emulator. Only when every connection is
in the middle of a request (reading a body, running an operation, sending an answer) is the
new one refused with 503 ``ServerBusy``, which the SDK retries. Bodies are bounded in time by
the read deadline, so such a state does not last.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

# How long a new connection may wait for the reclaimed one's thread to finish.
RECLAIM_WAIT_S = 2.0


class ConnectionSlots:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._changed = threading.Condition()
        # connection -> monotonic time it began waiting for a request; None while it serves one
        self._open: dict[socket.socket, float | None] = {}

    def admit(self, conn: socket.socket) -> bool:
        """Take a slot for ``conn``, reclaiming the longest-waiting connection if all are taken."""
        with self._changed:
            if len(self._open) >= self.limit:
                waiting = [(since, id(c), c) for c, since in self._open.items() if since is not None]
                if not waiting:
                    return False
                _, _, victim = min(waiting)
                with contextlib.suppress(OSError):  # wakes its blocked read with end-of-file
                    victim.shutdown(socket.SHUT_RDWR)
                if not self._changed.wait_for(lambda: len(self._open) < self.limit, RECLAIM_WAIT_S):
                    return False
            self._open[conn] = time.monotonic()
            return True

    def waiting(self, conn: socket.socket) -> None:
        with self._changed:
            if conn in self._open:
                self._open[conn] = time.monotonic()

    def serving(self, conn: socket.socket) -> None:
        with self._changed:
            if conn in self._open:
                self._open[conn] = None

    def release(self, conn: socket.socket) -> None:
        with self._changed:
            self._open.pop(conn, None)
            self._changed.notify_all()

    def counts(self) -> tuple[int, int]:
        """(connections open, of which in the middle of a request)."""
        with self._changed:
            return len(self._open), sum(1 for since in self._open.values() if since is None)
