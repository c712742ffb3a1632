"""Azure's own answers, replayed: the azure-batch SDK's recordings against the emulator.

Prints its figure ("replay: N of M (P%)"), split by cause, and every difference. Two bars:

- every request the emulator implements is answered as Azure did, but for ``IMPLEMENTED_BAR`` of them;
- of all replayable requests, at least ``REPLAY_BAR`` (95%) are. Every remaining difference is listed
  with its reason in docs/emulator.md.
"""

from __future__ import annotations

import collections
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

from batchyard.emulator.batch.transitions import hold

from .replay_harness import Outcome, Replay, load, recordings

pytestmark = pytest.mark.timeout(300)
REPLAY_BAR = 0.95
IMPLEMENTED_BAR = 0.95


def _logs_container(connection_string: str, name: str) -> str:
    blobs = BlobServiceClient.from_connection_string(connection_string)
    blobs.create_container(name)
    cred = blobs.credential
    sas = generate_container_sas(cred.account_name, name, account_key=cred.account_key,
                                 permission=ContainerSasPermissions(write=True, create=True),
                                 expiry=datetime.now(UTC) + timedelta(hours=1))
    return f"{blobs.url}/{name}?{sas}"


def test_recorded_traffic_is_answered_as_azure_did(batch_emulator_factory: Any, azurite_connection_string: str,
                                                    capsys: pytest.CaptureFixture[str],
                                                    record_property: Any) -> None:
    outcomes: list[Outcome] = []
    for path in recordings():
        # A fresh emulator per recording, its transitional states held until an entry polls them away.
        emulator = batch_emulator_factory(timing=hold())
        client = BatchClient(emulator.url, AzureNamedKeyCredential(emulator.account_name, emulator.account_key),
                             retry_total=0)
        names = {"logs_container_url": _logs_container(azurite_connection_string, f"logs-{uuid.uuid4().hex[:12]}")}
        outcomes += Replay(emulator, client, names).run(path.stem, load(path))
        emulator.stop()

    causes = collections.Counter(o.cause for o in outcomes)
    replayable = [o for o in outcomes if o.cause != "unreplayable"]
    implemented = [o for o in replayable if o.cause in ("match", "mismatch")]
    matched = causes["match"]
    share = matched / len(replayable)
    figure = f"replay: {matched} of {len(replayable)} ({100 * share:.1f}%); by cause: {dict(sorted(causes.items()))}"
    record_property("figure", figure)  # the suite's summary shows it (tests/conftest.py), xdist or not
    with capsys.disabled():
        print("\n" + figure)
        for outcome in outcomes:
            if outcome.cause != "match":
                print("  " + outcome.line())
    assert len(recordings()) == 9 and len(outcomes) == 98, "the recordings in tests/data changed: update the bars"
    assert matched / len(implemented) >= IMPLEMENTED_BAR, [o.line() for o in implemented if o.cause == "mismatch"]
    assert share >= REPLAY_BAR, f"replay: {matched} of {len(replayable)} ({100 * share:.1f}%)"
