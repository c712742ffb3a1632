"""One test's project on the local backend or on the azure backend against the Batch emulator.

``on_backend(kind, project, request)`` rewrites the project's batchyard.toml for ``kind`` ("local" or
"emulator") and returns the config and the environment a ``batchyard`` subprocess needs. The
emulator case gets its own pool (named after the project) of one node with two slots.
"""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from batchyard.core.config import Config, load_config

KINDS = ("local", "emulator")


def on_backend(kind: str, project: Any, request: pytest.FixtureRequest) -> tuple[Config, dict[str, str]]:
    if kind == "local":
        return project.config(), dict(project.env)
    emulator = request.getfixturevalue("batch_emulator")
    toml = project.dir / "batchyard.toml"
    text = toml.read_text(encoding="utf-8").replace('backend = "local"', 'backend = "azure"')
    toml.write_text(text + textwrap.dedent(f"""
        [azure]
        pool_id = "pool-{project.uid}"
        poll_interval = 0.3
        [azure.pool]
        dedicated_nodes = 1
        task_slots_per_node = 2
        """), encoding="utf-8")
    env = {**project.env, "BATCHYARD_BATCH_URL": emulator.url, "BATCHYARD_BATCH_ACCOUNT": emulator.account_name,
           "BATCHYARD_BATCH_KEY": emulator.account_key}
    return load_config(toml, env=env), env
