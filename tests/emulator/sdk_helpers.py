"""What the emulator's SDK-level tests share: polling with a deadline, unique ids, Azure's refusals."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from azure.batch import models as bm
from azure.core.exceptions import HttpResponseError

from .test_sdk_tutorial import IMAGE

VM = bm.VirtualMachineConfiguration(image_reference=IMAGE, node_agent_sku_id="batch.node.ubuntu 24.04")


def wait_for(check: Any, timeout: float = 60, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something true (a generous deadline: never a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not reached in time"
        time.sleep(0.1)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def refused(call: Any) -> tuple[int, str, dict[str, str]]:
    """(status, error code, values) of the HttpResponseError ``call`` must raise."""
    with pytest.raises(HttpResponseError) as err:
        call()
    details = {v["key"]: v["value"] for v in err.value.model.get("values") or []}
    return err.value.status_code, err.value.error.code, details
