"""Refuses a SharedKey signature presented again (a replayed request) within its 15-minute window.

Batch's signature covers the verb, the path and query, ``Content-Length``/``Content-Type`` and
the ``ocp-*`` headers, but not the body. So someone who captured one request can send another
body of the same length under the same signature until its date leaves the window; only
remembering signatures stops that.

The azure-batch SDK, though, dates requests to the second (``ocp-date``) and signs nothing
unique per request, so two *different* requests of the same shape signed within the same second
(two ``create_task`` calls with same-length bodies, parallel add-collection chunks) carry the
same signature. Refusing those would break the unmodified SDK. A repeat is therefore accepted
while its date is at most ``grace`` old (10 s by default: same-second requests reach us within
that even on a loaded machine) and refused after, until the date leaves the window. The
residual risk (a replay within the grace) is written down in docs/security.md.
"""

from __future__ import annotations

import heapq
import threading
from datetime import datetime, timedelta

from batchyard.emulator.batch.auth import DATE_WINDOW, Verified, failed
from batchyard.emulator.batch.common import utcnow

DEFAULT_GRACE = timedelta(seconds=10)
# An entry is ~200 bytes. Only authenticated requests are remembered, so only a key holder can
# fill it; past this, the entries nearest to leaving the window are forgotten first.
MAX_REMEMBERED = 200_000


class ReplayGuard:
    """Remembers each accepted signature until its request date leaves the 15-minute window."""

    def __init__(self, *, grace: timedelta = DEFAULT_GRACE, capacity: int = MAX_REMEMBERED) -> None:
        self.grace = grace
        self.capacity = capacity
        self._expiry: dict[str, datetime] = {}
        self._by_expiry: list[tuple[datetime, str]] = []
        self._lock = threading.Lock()

    def claim(self, verified: Verified, now: datetime | None = None) -> None:
        """Remember this signature, or raise 403 ``AuthenticationFailed`` if it is a replay."""
        now = now or utcnow()
        with self._lock:
            self._forget_expired(now)
            if verified.signature in self._expiry:
                if now - verified.date > self.grace:
                    raise failed("The signature of this request was already used: a request is accepted "
                                 "once (sign each request anew, with its own ocp-date).")
                return  # a same-second twin from the SDK (see the module docstring)
            expiry = verified.date + DATE_WINDOW
            self._expiry[verified.signature] = expiry
            heapq.heappush(self._by_expiry, (expiry, verified.signature))
            while len(self._by_expiry) > self.capacity:
                _, oldest = heapq.heappop(self._by_expiry)
                self._expiry.pop(oldest, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._expiry)

    def _forget_expired(self, now: datetime) -> None:
        # Past its expiry a signature's date is refused by the clock check anyway.
        while self._by_expiry and self._by_expiry[0][0] < now:
            _, signature = heapq.heappop(self._by_expiry)
            self._expiry.pop(signature, None)
