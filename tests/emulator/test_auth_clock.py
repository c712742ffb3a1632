"""SharedKey with Azure's clock: the request date is required and within 15 minutes, and a
signature is accepted once (a replay with another body of the same length is refused).

Requests are signed by the unmodified SDK (``ocp_date=`` sets the date it signs), except the
undated one, which the SDK cannot send: that one is signed by the emulator's own signer, whose
agreement with the SDK the tutorial tests already prove.
"""

from __future__ import annotations

import http.client
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlsplit

import pytest
from azure.batch import models as bm
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from batchyard.emulator.batch.auth import sign, string_to_sign
from batchyard.emulator.batch.common import BatchApiError

from .test_sdk_tutorial import client_for, make_job, make_pool

pytestmark = pytest.mark.timeout(60)


def auth_detail(error: HttpResponseError) -> str:
    assert error.status_code == 403 and error.error is not None and error.error.code == "AuthenticationFailed"
    return next(d.message for d in error.error.details if d.code == "AuthenticationErrorDetail")


def now_to_the_second() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def raw_get(emu: Any, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    url = urlsplit(emu.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=20)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def signed_get(emu: Any, path: str, date_headers: dict[str, str]) -> tuple[int, bytes]:
    """A GET signed over exactly ``date_headers`` (which may hold no date at all)."""
    signature = sign(emu.account_key, string_to_sign("GET", path, date_headers, emu.account_name))
    return raw_get(emu, path, {**date_headers, "Authorization": f"SharedKey {emu.account_name}:{signature}"})


def test_dates_outside_fifteen_minutes_are_refused(batch_emulator: Any) -> None:
    client = client_for(batch_emulator)
    job_id = f"nojob-{uuid.uuid4().hex[:8]}"
    now = now_to_the_second()
    for when, wording in ((datetime(2000, 1, 1, tzinfo=UTC), "too old"),
                          (datetime(2100, 1, 1, tzinfo=UTC), "future"),
                          (now - timedelta(minutes=16), "too old"),
                          (now + timedelta(minutes=16), "future")):
        with pytest.raises(HttpResponseError) as info:
            client.get_job(job_id, ocp_date=when)
        assert wording in auth_detail(info.value), when
    for when in (now - timedelta(minutes=14), now + timedelta(minutes=14)):  # inside the window: authenticated
        with pytest.raises(ResourceNotFoundError):
            client.get_job(job_id, ocp_date=when)


def test_undated_requests_are_refused_and_date_header_counts(batch_emulator: Any) -> None:
    path = f"/jobs/nojob-{uuid.uuid4().hex[:8]}?api-version=2025-06-01"
    status, body = signed_get(batch_emulator, path, {})
    assert status == 403 and b"Request date header not specified" in body
    # x-ms-date is Storage's header: Batch's signature does not cover it, so it dates nothing.
    status, body = signed_get(batch_emulator, path, {"x-ms-date": format_datetime(datetime.now(UTC), usegmt=True)})
    assert status == 403 and b"Request date header not specified" in body
    status, body = signed_get(batch_emulator, path, {"ocp-date": "yesterday-ish"})
    assert status == 403 and b"The Date header in the request is incorrect" in body
    status, body = signed_get(batch_emulator, path, {"Date": "Sat, 01 Jan 2000 00:00:00 GMT"})
    assert status == 403 and b"too old" in body
    # The same requests dated now are authenticated (the job does not exist: 404).
    for header in ("ocp-date", "Date"):
        status, body = signed_get(batch_emulator, path, {header: format_datetime(datetime.now(UTC), usegmt=True)})
        assert status == 404 and b"JobNotFound" in body, header


def test_replayed_add_task_with_another_body_is_refused(batch_emulator: Any) -> None:
    client = client_for(batch_emulator)
    suffix = uuid.uuid4().hex[:8]
    pool_id, job_id = f"rp-{suffix}", f"rj-{suffix}"
    make_pool(client, pool_id, nodes=0)  # no node: nothing runs, the question is what gets added
    make_job(client, job_id, pool_id)
    captured: dict[str, Any] = {}

    def capture(request: Any) -> None:
        captured["headers"] = dict(request.http_request.headers)
        content = request.http_request.content
        captured["body"] = content.encode() if isinstance(content, str) else bytes(content)

    # Dated a minute ago, as any capture replayed later is (a replay within the SDK-twin grace
    # of 10 s after its date is the documented residual risk, see docs/security.md).
    client.create_task(job_id, bm.BatchTaskCreateOptions(id="good-task", command_line="/bin/echo harmless"),
                       ocp_date=now_to_the_second() - timedelta(minutes=1), raw_request_hook=capture)
    original = captured["body"]
    forged = original.replace(b"good-task", b"evil-task").replace(b"harmless", b"pwned!!!")
    assert forged != original and len(forged) == len(original)
    path = f"/jobs/{job_id}/tasks?api-version=2025-06-01"
    url = urlsplit(batch_emulator.url)
    for body in (forged, original):
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=20)
        try:
            conn.request("POST", path, body=body, headers=captured["headers"])
            response = conn.getresponse()
            answer = response.read()
        finally:
            conn.close()
        assert response.status == 403 and b"already used" in answer, answer
    with pytest.raises(ResourceNotFoundError):
        client.get_task(job_id, "evil-task")
    assert [t.id for t in client.list_tasks(job_id)] == ["good-task"]


def test_same_second_twins_from_the_sdk_are_both_accepted(batch_emulator: Any) -> None:
    """Two different requests the SDK signs in the same second carry one signature: both must pass."""
    client = client_for(batch_emulator)
    suffix = uuid.uuid4().hex[:8]
    pool_id, job_id = f"tp-{suffix}", f"tj-{suffix}"
    make_pool(client, pool_id, nodes=0)
    make_job(client, job_id, pool_id)
    signatures: list[str] = []

    def capture(request: Any) -> None:
        signatures.append(request.http_request.headers["Authorization"])

    when = now_to_the_second()
    for task_id in ("twin-a", "twin-b"):
        client.create_task(job_id, bm.BatchTaskCreateOptions(id=task_id, command_line="true"), ocp_date=when,
                           raw_request_hook=capture)
    assert len(signatures) == 2 and signatures[0] == signatures[1]
    assert sorted(t.id for t in client.list_tasks(job_id)) == ["twin-a", "twin-b"]


def test_replay_guard_window_grace_and_capacity() -> None:
    from batchyard.emulator.batch.auth import Verified
    from batchyard.emulator.batch.replay import ReplayGuard

    guard = ReplayGuard(grace=timedelta(seconds=10), capacity=3)
    signed_at = datetime(2030, 1, 1, tzinfo=UTC)
    first = Verified(signature="sig-1", date=signed_at)
    guard.claim(first, now=signed_at + timedelta(seconds=1))
    guard.claim(first, now=signed_at + timedelta(seconds=9))  # a same-second twin
    for late in (timedelta(seconds=11), timedelta(minutes=14, seconds=59)):
        with pytest.raises(BatchApiError) as info:
            guard.claim(first, now=signed_at + late)
        assert info.value.status == 403 and "already used" in dict(info.value.values)["AuthenticationErrorDetail"]
    # Past the window the date check refuses the request; the guard forgets the signature.
    guard.claim(Verified(signature="sig-2", date=signed_at + timedelta(minutes=16)),
                now=signed_at + timedelta(minutes=16))
    assert len(guard) == 1
    for n in range(3, 7):
        guard.claim(Verified(signature=f"sig-{n}", date=signed_at + timedelta(minutes=16, seconds=n)),
                    now=signed_at + timedelta(minutes=16, seconds=n))
    assert len(guard) == 3  # the capacity holds: the entries nearest to expiry went first
