"""Fault injection: make the emulator misbehave the way Azure Batch sometimes does.

Set through ``BatchEmulator(faults=FaultConfig(...))`` or the environment variable
``BATCHYARD_EMULATOR_FAULTS`` holding a JSON object with the same field names, e.g.
``{"node_lost_after_s": 0.5, "node_lost_count": 1, "http_503_count": 2}``.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, fields
from typing import Any

from batchyard.emulator.batch.common import BatchApiError

ENV_VAR = "BATCHYARD_EMULATOR_FAULTS"


@dataclass(frozen=True)
class FaultConfig:
    """All zero = no faults.

    - ``node_lost_after_s`` / ``node_lost_count``: a node running a task for that long is
      lost (like a preempted Spot node): its tasks are killed and requeued (state back to
      ``active``, ``requeueCount`` + 1); happens ``node_lost_count`` times in all.
    - ``add_collection_too_large_over``: an add-task-collection request with more tasks than
      this is refused with 413 ``RequestBodyTooLarge`` (the SDK halves the chunk and retries).
    - ``http_500_every``: every Nth authenticated request answers 500 ``InternalServerError``.
    - ``http_503_count``: the first N authenticated requests answer 503 ``ServerBusy``.
    - ``job_quota``: at most N jobs not yet completed; one more -> 409
      ``ActiveJobAndScheduleQuotaReached``.
    """

    node_lost_after_s: float = 0.0
    node_lost_count: int = 0
    add_collection_too_large_over: int = 0
    http_500_every: int = 0
    http_503_count: int = 0
    job_quota: int = 0

    @classmethod
    def from_json(cls, text: str) -> FaultConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{ENV_VAR}: not valid JSON ({exc.msg})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{ENV_VAR}: expected a JSON object")
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"{ENV_VAR}: unknown field(s) {', '.join(unknown)}; known: {', '.join(known)}")
        values: dict[str, Any] = {}
        for name, value in data.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{ENV_VAR}: {name} must be a non-negative number")
            values[name] = float(value) if name == "node_lost_after_s" else int(value)
        return cls(**values)

    @classmethod
    def from_env(cls) -> FaultConfig | None:
        text = os.environ.get(ENV_VAR, "").strip()
        return cls.from_json(text) if text else None


class FaultState:
    """Counters behind a :class:`FaultConfig` (thread-safe)."""

    def __init__(self, config: FaultConfig | None) -> None:
        self.config = config or FaultConfig()
        self._lock = threading.Lock()
        self._requests = 0
        self._nodes_lost = 0

    def on_request(self) -> None:
        """Raise the injected 5xx for this request, if one is due."""
        cfg = self.config
        with self._lock:
            self._requests += 1
            n = self._requests
        if cfg.http_503_count and n <= cfg.http_503_count:
            raise BatchApiError(503, "ServerBusy", "The server is currently unable to receive requests. "
                                "Please retry your request. (injected fault)")
        if cfg.http_500_every and n % cfg.http_500_every == 0:
            raise BatchApiError(500, "InternalServerError",
                                "The server encountered an internal error. Please retry the request. "
                                "(injected fault)")

    def collection_too_large(self, count: int) -> bool:
        over = self.config.add_collection_too_large_over
        return bool(over) and count > over

    def take_node_loss(self, running_for_s: float) -> bool:
        """Whether a node that has been running a task for ``running_for_s`` is lost now."""
        cfg = self.config
        if not cfg.node_lost_count or running_for_s < cfg.node_lost_after_s:
            return False
        with self._lock:
            if self._nodes_lost >= cfg.node_lost_count:
                return False
            self._nodes_lost += 1
            return True
