"""The emulator's HTTP front under hostile input: bodies it cannot parse, strict framing,
idle and half-sent connections, and a bound on connections. Raw sockets on 127.0.0.1, a
bounded number of them, each read bounded by a generous timeout (never a timing assert)."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest

from .test_sdk_tutorial import client_for

pytestmark = pytest.mark.timeout(90)
READ_TIMEOUT_S = 20.0  # generous: only a server that never answers or never closes gets near it


def connect(emu: Any) -> socket.socket:
    url = urlsplit(emu.url)
    sock = socket.create_connection((url.hostname, url.port), timeout=READ_TIMEOUT_S)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response (status, lower-cased headers, body framed by Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        rest += chunk
    return status, headers, rest[:length]


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closes its end (EOF) before our generous read timeout."""
    try:
        return sock.recv(65536) == b""
    except (TimeoutError, ConnectionResetError):
        return False


def error_code(body: bytes) -> str:
    return json.loads(body)["code"]


def send_raw(emu: Any, raw: bytes, *, expect_close: bool = False) -> tuple[int, dict[str, str], bytes, bool]:
    """Send ``raw`` on a new connection; with ``expect_close``, also whether the server then closed it."""
    with connect(emu) as sock:
        sock.sendall(raw)
        status, headers, body = read_response(sock)
        closed = expect_close and headers.get("connection", "").lower() == "close" and closed_by_server(sock)
    return status, headers, body, closed


@pytest.mark.parametrize("body", [
    b"[" * 1000 + b"]" * 1000,
    b'{"id": "p", "metadata": ' + b"[" * 1000 + b"]" * 1000 + b"}",
    b'{"id": "p", "targetDedicatedNodes": ' + b"7" * 5000 + b"}",
    b'{"id": "p", "targetDedicatedNodes": 1e999}',
    b'{"id": "p", "targetDedicatedNodes": NaN}',
    b'["not", "an", "object"]',
    b'{"id": "p",',
    b'{"id": "\xff"}',
], ids=["deep-array", "deep-property", "5000-digit-int", "huge-float", "nan", "array", "truncated", "not-utf8"])
def test_bodies_azure_cannot_parse_get_400_invalid_request_body(batch_emulator: Any, body: bytes) -> None:
    client = client_for(batch_emulator)  # the SDK signs it: only the body is wrong
    with pytest.raises(HttpResponseError) as info:
        client.send_request(HttpRequest("POST", f"{batch_emulator.url}/pools?api-version=2025-06-01", content=body,
                                        headers={"Content-Type": "application/json; odata=minimalmetadata"}))
    assert info.value.status_code == 400 and info.value.error.code == "InvalidRequestBody"


@pytest.mark.parametrize(("framing", "status", "code", "header"), [
    (b"Transfer-Encoding: chunked\r\n", 411, "MissingContentLengthHeader", None),
    (b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", 400, "InvalidHeaderValue", "Transfer-Encoding"),
    (b"Content-Length: +5\r\n", 400, "InvalidHeaderValue", "Content-Length"),
    (b"Content-Length: -1\r\n", 400, "InvalidHeaderValue", "Content-Length"),
    (b"Content-Length: 5, 5\r\n", 400, "InvalidHeaderValue", "Content-Length"),
    (b"Content-Length: 5\r\nContent-Length: 5\r\n", 400, "InvalidHeaderValue", "Content-Length"),
    (b"Content-Length: 0x5\r\n", 400, "InvalidHeaderValue", "Content-Length"),
], ids=["chunked", "chunked-and-length", "plus", "negative", "list", "twice", "hex"])
def test_framing_is_strict_and_closes_an_unframed_connection(batch_emulator: Any, framing: bytes, status: int,
                                                             code: str, header: str | None) -> None:
    raw = (b"POST /pools?api-version=2025-06-01 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           + framing + b"\r\n5\r\nhello\r\n0\r\n\r\n")
    got, _, body, closed = send_raw(batch_emulator, raw, expect_close=True)
    assert (got, error_code(body)) == (status, code)
    if header:
        assert {"key": "HeaderName", "value": header} in json.loads(body)["values"]
    assert closed, "the body's end is unknown, so the connection must not be reused"


def test_post_without_content_length_is_411_and_the_connection_goes_on(batch_emulator: Any) -> None:
    with connect(batch_emulator) as sock:
        sock.sendall(b"POST /pools?api-version=2025-06-01 HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = read_response(sock)
        assert (status, error_code(body)) == (411, "MissingContentLengthHeader")
        sock.sendall(b"GET /pools?api-version=2025-06-01 HTTP/1.1\r\nHost: x\r\n\r\n")  # same connection
        status, _, body = read_response(sock)
        assert (status, error_code(body)) == (403, "AuthenticationFailed")


def test_idle_and_half_sent_connections_are_closed(batch_emulator_factory: Any, capfd: pytest.CaptureFixture[str]
                                                   ) -> None:
    emu = batch_emulator_factory(idle_timeout_s=0.5)
    half_sent = {
        "idle": b"",
        "half a request line": b"GET /pools?api-ver",
        "headers without their end": b"GET /pools?api-version=2025-06-01 HTTP/1.1\r\nHost: x\r\n",
        "a tenth of a body": (b"POST /pools?api-version=2025-06-01 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                              b"\r\n" + b"x" * 10),
    }
    sockets = {name: connect(emu) for name in half_sent}
    try:
        for name, raw in half_sent.items():
            sockets[name].sendall(raw)
        for name, sock in sockets.items():
            assert closed_by_server(sock), f"{name}: still held open"
    finally:
        for sock in sockets.values():
            sock.close()
    status, _, body, _ = send_raw(emu, b"GET /pools?api-version=2025-06-01 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, error_code(body)) == (403, "AuthenticationFailed")  # still serving
    assert "Traceback" not in capfd.readouterr().err


def test_sdk_rides_over_its_idle_connection_being_closed(batch_emulator_factory: Any) -> None:
    emu = batch_emulator_factory(idle_timeout_s=0.3)
    client = client_for(emu)
    assert list(client.list_pools()) == []
    time.sleep(1.0)  # the pooled keep-alive connection is closed by the server meanwhile
    assert list(client.list_pools()) == []


def wait_until(check: Any, what: str) -> None:
    deadline = time.monotonic() + READ_TIMEOUT_S
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def unsigned_get() -> bytes:
    return b"GET /pools?api-version=2025-06-01 HTTP/1.1\r\nHost: x\r\n\r\n"


def test_idle_connections_are_reclaimed_when_the_bound_is_reached(batch_emulator_factory: Any) -> None:
    emu = batch_emulator_factory(max_connections=4, idle_timeout_s=60)
    baseline = threading.active_count()
    held = [connect(emu) for _ in range(4)]
    newcomers = []
    try:
        wait_until(lambda: emu.connections[0] == 4, "the four idle connections were not all admitted")
        for _ in range(4):
            sock = connect(emu)
            newcomers.append(sock)
            sock.sendall(unsigned_get())
            status, _, body = read_response(sock)  # served: an idle connection made room
            assert (status, error_code(body)) == (403, "AuthenticationFailed")
            assert emu.connections[0] <= 4
        closed: set[socket.socket] = set()
        everyone = held + newcomers
        deadline = time.monotonic() + READ_TIMEOUT_S
        while len(closed) < 4 and time.monotonic() < deadline:
            readable, _, _ = select.select([s for s in everyone if s not in closed], [], [], 0.2)
            closed.update(s for s in readable if s.recv(65536) == b"")
        assert len(closed) == 4, "the server must hold exactly four connections"
        assert threading.active_count() - baseline <= 4  # one thread per held connection
    finally:
        for sock in held + newcomers:
            sock.close()


def test_503_when_every_connection_is_mid_request(batch_emulator_factory: Any) -> None:
    emu = batch_emulator_factory(max_connections=4, idle_timeout_s=60)
    stalled = [connect(emu) for _ in range(4)]
    try:
        for sock in stalled:  # headers in, a tenth of the body: each connection is mid-request
            sock.sendall(b"POST /pools?api-version=2025-06-01 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
                         + b"x" * 10)
        wait_until(lambda: emu.connections == (4, 4), "the four stalled requests were not all being read")
        for _ in range(3):
            with connect(emu) as extra:
                status, headers, body = read_response(extra)
                assert (status, error_code(body)) == (503, "ServerBusy")
                assert headers.get("connection") == "close" and closed_by_server(extra)
    finally:
        for sock in stalled:
            sock.close()
    wait_until(lambda: emu.connections[0] == 0, "the stalled connections' slots were not freed")
    status, _, body, _ = send_raw(emu, unsigned_get())
    assert (status, error_code(body)) == (403, "AuthenticationFailed")
