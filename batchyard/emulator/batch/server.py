"""The HTTP front: stdlib ThreadingHTTPServer, SharedKey auth, routing, Batch's headers.

Request lines are logged at DEBUG through :func:`batchyard.core.redact.redact`; bodies, the
Authorization header and the account key are never logged.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import secrets
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from batchyard.core.errors import EmulatorError
from batchyard.core.redact import install_log_filter, redact, redacting_filter, register_secret
from batchyard.emulator.batch.auth import verify
from batchyard.emulator.batch.common import BatchApiError, utcnow
from batchyard.emulator.batch.connections import ConnectionSlots
from batchyard.emulator.batch.faults import FaultConfig, FaultState
from batchyard.emulator.batch.intervals import IntervalScale
from batchyard.emulator.batch.ops_autoscale import AutoscaleOps
from batchyard.emulator.batch.ops_jobs import JobOps
from batchyard.emulator.batch.ops_nodes import NodeOps
from batchyard.emulator.batch.ops_pools import PoolOps
from batchyard.emulator.batch.ops_schedules import JobScheduleOps
from batchyard.emulator.batch.ops_tasks import TaskOps
from batchyard.emulator.batch.protocol import Request, Response, Router
from batchyard.emulator.batch.replay import ReplayGuard
from batchyard.emulator.batch.scheduler import Engine
from batchyard.emulator.batch.schedules import ScheduleClock
from batchyard.emulator.batch.state import Store
from batchyard.emulator.batch.transitions import KINDS, Timing
from batchyard.emulator.batch.validation import BodyValidator, lenient_from_env
from batchyard.emulator.batch.wire import FramingError, read_body
from batchyard.storage.account import Storage
from batchyard.storage.transfer import BlobTransfer

log = logging.getLogger("batchyard.emulator.batch")
JSON_TYPE = "application/json;odata=minimalmetadata"
# A connection that sends nothing for this long (between requests or mid-request) is closed.
IDLE_TIMEOUT_S = 30.0
# Connections served at once (one thread each); see connections.py for what happens past it.
MAX_CONNECTIONS = 64
# Loggers that see the nodes' SAS URLs in full (urllib3 logs request lines at DEBUG). A filter
# on a logger only covers records logged on that very logger, so each is named here.
_SCRUBBED = ("urllib3.connectionpool", "azure.core.pipeline.policies.http_logging_policy",
             "azure.storage.blob", "batchyard.emulator.batch", "batchyard.node.runner", "batchyard.storage.account")


def _scrub_logs() -> None:
    install_log_filter()
    for name in _SCRUBBED:
        logger = logging.getLogger(name)
        if redacting_filter() not in logger.filters:
            logger.addFilter(redacting_filter())


def _busy_answer(base_url: str) -> bytes:
    body = json.dumps(BatchApiError(503, "ServerBusy", "The server is currently unable to receive requests. "
                                    "Please retry your request.").body(base_url, str(uuid.uuid4()))).encode()
    head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: {JSON_TYPE}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode("ascii") + body


class _Server(ThreadingHTTPServer):
    """One thread per connection, at most ``slots.limit`` of them; errors of a dropped connection go to DEBUG."""

    daemon_threads = True
    allow_reuse_address = True
    emulator: BatchEmulator
    slots: ConnectionSlots

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.admit(request):
            log.info("batch emulator: %d connections are all mid-request; refusing one with 503", self.slots.limit)
            with contextlib.suppress(OSError):  # the client may be gone already
                request.settimeout(1.0)
                request.sendall(_busy_answer(self.emulator.url))
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints a traceback to stderr; a reset or timed-out client is not news.
        log.debug("batch emulator: connection from %s ended with an error", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the SDK reuses connections
    server_version = "batchyard-batch-emulator"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        self.timeout = self.server.emulator.idle_timeout_s  # applied to the socket by StreamRequestHandler
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s", redact(format % args))

    def handle_one_request(self) -> None:
        self.server.slots.waiting(self.connection)  # reclaimable until its request line and headers are in
        super().handle_one_request()

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        self.server.slots.serving(self.connection)
        return parsed

    def _handle(self) -> None:
        emu = self.server.emulator
        request_id = str(uuid.uuid4())
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            body = read_body(self.command, self.headers, self.rfile,
                             deadline=time.monotonic() + emu.idle_timeout_s)
        except FramingError as refused:
            if refused.close:
                self.close_connection = True
            self._send(self._error(refused.error, request_id), request_id, headers)
            return
        except (TimeoutError, ConnectionError) as exc:
            log.debug("batch emulator: %s %s: %s; connection closed", self.command, redact(self.path[:200]), exc)
            self.close_connection = True
            return
        split = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        request = Request(self.command, self.path, split.path, query, headers, body)
        try:
            now = utcnow()
            signed = verify(self.command, self.path, dict(self.headers.items()), emu.account_name, emu._key, now=now)
            emu.faults.on_request()  # an injected 5xx runs nothing, so its retry is no replay
            emu.replay.claim(signed, now)
            if "api-version" not in query:
                raise BatchApiError(400, "MissingRequiredQueryParameter",
                                    "A query parameter that's mandatory for this request is not specified.",
                                    [("QueryParameterName", "api-version")])
            handler = emu.router.match(request)
            emu.validator.check(request)  # Azure reads the body against the schema before acting on it
            response = handler(request)
        except BatchApiError as exc:
            if exc.status >= 500 or exc.status == 403:
                log.info("batch emulator: %s %s -> %s", self.command, redact(split.path), exc.code)
            response = self._error(exc, request_id)
        except Exception:
            log.exception("batch emulator: %s %s failed", self.command, redact(split.path))
            response = self._error(BatchApiError(500, "InternalServerError",
                                                 "The emulator hit an internal error (see its log)."), request_id)
        self._send(response, request_id, headers)

    def _error(self, exc: BatchApiError, request_id: str) -> Response:
        emu = self.server.emulator
        return Response(exc.status, exc.body(emu.url, request_id), dict(exc.headers))

    def _send(self, response: Response, request_id: str, req_headers: dict[str, str]) -> None:
        data = b""
        headers = {"request-id": request_id, "DataServiceVersion": "3.0"}
        if "client-request-id" in req_headers:
            headers["client-request-id"] = req_headers["client-request-id"]
        if isinstance(response.body, bytes):
            data = response.body
        elif response.body is not None:
            data = json.dumps(response.body, separators=(",", ":")).encode()
            headers["Content-Type"] = JSON_TYPE
        headers.update(response.headers)
        if self.close_connection:
            headers["Connection"] = "close"  # the client must not send another request on this connection
        length = response.content_length if self.command == "HEAD" and response.content_length is not None \
            else len(data)
        self.send_response(response.status)
        for name, value in headers.items():
            self.send_header(name, value)
        if response.status != 304 and not (response.status == 204 and not data):
            self.send_header("Content-Length", str(length))
        try:
            self.end_headers()
            if self.command != "HEAD" and data and response.status not in (204, 304):
                self.wfile.write(data)
        except OSError as exc:  # reset, broken pipe, or a reader stalled past the timeout
            log.debug("batch emulator: answer to %s not delivered: %s", self.command, exc)
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle


class BatchEmulator:
    """An Azure Batch data-plane API (2025-06-01) on loopback, backed by Azurite and local processes."""

    def __init__(self, *, storage_connection_string: str, data_dir: Path, account_name: str = "batchyard",
                 account_key: str | None = None, host: str = "127.0.0.1", port: int = 0,
                 faults: FaultConfig | None = None, idle_timeout_s: float = IDLE_TIMEOUT_S,
                 max_connections: int = MAX_CONNECTIONS, interval_scale: float | None = None,
                 timing: Timing | None = None, strict: bool | None = None) -> None:
        if account_key is None:
            account_key = base64.b64encode(secrets.token_bytes(64)).decode()
        try:
            base64.b64decode(account_key, validate=True)
        except ValueError:
            raise EmulatorError("the Batch emulator's account key must be base64") from None
        register_secret(account_key)
        _scrub_logs()
        if idle_timeout_s <= 0 or max_connections < 1:
            raise EmulatorError("the Batch emulator needs idle_timeout_s > 0 and max_connections >= 1")
        self.account_name = account_name
        self._key = account_key
        self.idle_timeout_s = idle_timeout_s
        self.replay = ReplayGuard()
        # Resolved once: node roots then hold no symlink, so the files API can refuse any it meets.
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.faults = FaultState(faults if faults is not None else FaultConfig.from_env())
        try:
            self.timing = timing if timing is not None else Timing.from_env()
        except ValueError as exc:
            raise EmulatorError(str(exc)) from None
        self.validator = BodyValidator(strict=strict if strict is not None else not lenient_from_env())
        self.storage = Storage.from_connection_string(storage_connection_string)
        self.store = Store()
        try:
            self._server = _Server((host, port), _Handler)
        except OSError as exc:
            raise EmulatorError(f"Batch emulator cannot listen on {host}:{port}: {exc.strerror}") from None
        self._server.emulator = self
        self._server.slots = ConnectionSlots(max_connections)
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self.engine = Engine(self.store, data_dir=self.data_dir, account_name=account_name, account_url=self.url,
                             storage=self.storage, transfer=BlobTransfer(self.storage), faults=self.faults,
                             timing=self.timing)
        self.intervals = IntervalScale(interval_scale) if interval_scale is not None else IntervalScale.from_env()
        self.router = Router()
        self.pools = PoolOps(self)
        jobs, autoscale = JobOps(self), AutoscaleOps(self, self.intervals)
        clock = ScheduleClock(self.store, self.engine, self.intervals, jobs.add_job)
        nodes = NodeOps(self)
        for ops in (self.pools, jobs, TaskOps(self), autoscale, JobScheduleOps(self, clock, jobs.check_job_body),
                    nodes):
            ops.register(self.router)
        self.engine.periodic += [autoscale.tick, clock.tick, nodes.tick]
        self._thread: threading.Thread | None = None
        self._started = False

    @property
    def account_key(self) -> str:
        return self._key

    @property
    def connections(self) -> tuple[int, int]:
        """(connections open, of which in the middle of a request): for tests and debugging."""
        return self._server.slots.counts()

    def __repr__(self) -> str:
        return f"BatchEmulator(url={self.url!r}, account_name={self.account_name!r}, data_dir={str(self.data_dir)!r})"

    def finish_transitions(self, *kinds: str) -> None:
        """End at once the transitional states now under way (all, or of ``pools``/``nodes``/``jobs``).

        For tests that hold states (``timing=transitions.hold()``) to see them, then move on without sleeping.
        """
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown transition kind(s) {sorted(unknown)}; known: {', '.join(KINDS)}")
        with self.store.lock:
            self.engine.finish_transitions(kinds or KINDS)

    def listing(self, kind: str, items: list[dict[str, Any]], next_link: str | None) -> Response:
        body: dict[str, Any] = {"odata.metadata": f"{self.url}/$metadata#{kind}", "value": items}
        if next_link:
            body["odata.nextLink"] = next_link
        return Response(200, body)

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Serve in a background thread; returns once the socket is listening (it already is)."""
        if self._started:
            return
        self._started = True
        self.engine.start()
        self._thread = threading.Thread(target=self._server.serve_forever, name="batch-emulator-http",
                                        kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()
        log.info("Batch emulator listening on %s (account %s)", self.url, self.account_name)

    def serve_forever(self) -> None:
        self._started = True
        self.engine.start()
        log.info("Batch emulator listening on %s (account %s)", self.url, self.account_name)
        try:
            self._server.serve_forever(poll_interval=0.2)
        finally:
            self.engine.stop()
            self._server.server_close()

    def stop(self) -> None:
        """Stop serving, kill running task processes, join threads."""
        self.engine.stop()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> BatchEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
