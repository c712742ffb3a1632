"""The one place that decides whether a storage request goes by hand-signed REST or through the Azure SDK.

:mod:`batchyard.storage.fast_rest` makes a worker's per-task calls (Get Blob, Put Blob, a table
transaction) in one urllib3 request each, signed by hand with a pinned API version. Against Azurite
on loopback that saves most of the client's CPU per call (docs/performance.md, round 5), and the
network costs nothing. Against a real account the network dwarfs that CPU, and the SDK pipeline
brings what the hand-signed path lacks: the SDKs' retry policies, their User-Agent, the current API
version. So a request goes by the fast path only when all of these hold, and otherwise through the
SDK:

- the mode is ``auto`` (``[storage] fast_path`` in batchyard.toml, or ``BATCHYARD_FAST_PATH``;
  ``off`` sends everything through the SDK);
- every endpoint the request goes to is loopback: ``localhost``, ``127.0.0.0/8`` or ``::1``
  (never a host name that merely resolves there: that answer could change);
- no proxy variable is set (requests, under the SDKs, honours them and ``no_proxy``; urllib3
  alone does not).

:class:`FastPath` answers for one account (or for SAS URLs, with no account); ``Storage.fast`` and
:class:`~batchyard.storage.transfer.BlobTransfer` ask it, nothing else chooses.
"""

from __future__ import annotations

import ipaddress
import os
import threading
import urllib.request
from collections.abc import Callable
from urllib.parse import urlsplit

from batchyard.core.config import ENV_FAST_PATH, fast_path_mode
from batchyard.storage.fast_rest import FastRest


def is_loopback(url: str) -> bool:
    """Whether ``url``'s host is ``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost: not known to stay on this machine
        return False


class FastPath:
    """Hands out the fast client for requests the rules above allow, None for the rest.

    ``make_client`` builds the :class:`FastRest` (once, on the first request allowed);
    ``mode`` is ``"auto"`` or ``"off"``, by default ``BATCHYARD_FAST_PATH`` (``auto`` when unset),
    read now so a bad value fails where the storage is set up. Proxy variables are read on the
    first decision. Thread-safe.
    """

    def __init__(self, make_client: Callable[[], FastRest], mode: str | None = None) -> None:
        self.mode = fast_path_mode(os.environ.get(ENV_FAST_PATH) if mode is None else mode)
        self._make_client = make_client
        self._lock = threading.Lock()
        self._client: FastRest | None = None
        self._proxied: bool | None = None
        self._hosts: dict[str, bool] = {}  # scheme://netloc -> loopback (few distinct, many requests)

    def __repr__(self) -> str:
        return f"FastPath(mode={self.mode!r})"

    def allows(self, url: str) -> bool:
        """Whether a request to ``url`` goes by the fast path."""
        if self.mode == "off":
            return False
        if self._proxied is None:
            self._proxied = bool(urllib.request.getproxies_environment())
        if self._proxied:
            return False
        origin = url.split("/", 3)[:3]  # scheme:, "", netloc: what decides, without the path
        key = "/".join(origin)
        loopback = self._hosts.get(key)
        if loopback is None:
            loopback = self._hosts.setdefault(key, is_loopback(key))
        return loopback

    def client_for(self, *urls: str) -> FastRest | None:
        """The fast client if every one of ``urls`` :meth:`allows` it, else None (use the SDK)."""
        if not urls or not all(self.allows(url) for url in urls):
            return None
        return self.client

    @property
    def client(self) -> FastRest:
        """The fast client, for a request :meth:`allows` said yes to."""
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client
