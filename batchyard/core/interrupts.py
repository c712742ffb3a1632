"""Ctrl-C and SIGTERM as one KeyboardInterrupt, never lost in a window where Python drops it.

A KeyboardInterrupt raised while a fork runs its at-fork callbacks (logging's ``_releaseLock``, in
the parent right after ``os.fork``) is printed as "Exception ignored" and dropped: a `batchyard
worker` told to stop while it started its worker processes kept serving (seen in CI's compose
route). Such windows are wrapped in :func:`held`: a signal arriving there is kept and raised as
the window closes, in ordinary code.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_state = {"depth": 0, "pending": False}


def _interrupt(signum: int, frame: Any) -> None:
    if _state["depth"]:
        _state["pending"] = True
        return
    raise KeyboardInterrupt


def install() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt (held back inside :func:`held`); main thread only."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _interrupt)
        signal.signal(signal.SIGTERM, _interrupt)


@contextmanager
def held() -> Iterator[None]:
    """Keep an interrupt that arrives inside this block for its end (for the main thread's forks)."""
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        if not _state["depth"] and _state["pending"]:
            _state["pending"] = False
            raise KeyboardInterrupt
