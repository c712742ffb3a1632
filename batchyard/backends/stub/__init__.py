"""An in-memory backend for tests: no storage, no process, outcomes scripted by the test.

Like dsub's stub provider and libcloud's dummy driver, it keeps the :class:`~batchyard.backends.base.Backend`
contract (ids, idempotent submit, counts, results, logs, cancel, delete, errors) without running
anything, so the command line, ``status`` and ``report`` can be tested without Azurite. It is
never registered by default: :func:`register` adds it under a name (tests: ``"stub"``) and
:func:`unregister` removes it again.
"""

from __future__ import annotations

from batchyard.backends import register_backend, unregister_backend
from batchyard.backends.stub.world import StubOutcome, StubWorld

__all__ = ["StubOutcome", "StubWorld", "register", "unregister"]


def register(name: str = "stub") -> None:
    """Make the stub available to :func:`batchyard.backends.get_backend` (and ``--backend``) as ``name``."""
    register_backend(name, "batchyard.backends.stub.backend", "StubBackend", install_hint="pip install batchyard",
                     clobber=True)


def unregister(name: str = "stub") -> None:
    unregister_backend(name)
