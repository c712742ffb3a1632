"""The environment a task's command sees: the host's (minus secrets), Batch's ``AZ_BATCH_*``
variables, then the job's own, as on an Azure Batch node."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from batchyard.core.redact import known_secrets, redact
from batchyard.node.taskspec import NodeContext, TaskSpec

# Environment variables that carry batchyard's own credentials; a task never inherits them.
SECRET_ENV_VARS: frozenset[str] = frozenset({
    "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN",
    "BATCHYARD_BATCH_KEY", "AZURE_BATCH_ACCESS_KEY", "AZURE_CLIENT_SECRET",
})


def task_environment(spec: TaskSpec, node: NodeContext, task_dir: Path) -> dict[str, str]:
    """The command's environment: the host's (minus secrets), AZ_BATCH_*, then the job's own.

    Host variables are dropped by name (:data:`SECRET_ENV_VARS`) and by value: any that holds a
    known secret or a secret's shape (e.g. the connection string under a custom
    ``connection_string_env`` name, a SAS URL) never reaches the command.
    """
    env = dict(_host_environment(tuple(os.environ.items()), known_secrets()))
    env.update({
        "AZ_BATCH_ACCOUNT_NAME": node.account_name,
        "AZ_BATCH_ACCOUNT_URL": node.account_url,
        "AZ_BATCH_POOL_ID": node.pool_id,
        "AZ_BATCH_NODE_ID": node.node_id,
        "AZ_BATCH_NODE_IS_DEDICATED": "true" if node.is_dedicated else "false",
        "AZ_BATCH_NODE_ROOT_DIR": str(node.root),
        "AZ_BATCH_NODE_SHARED_DIR": str(node.shared_dir),
        "AZ_BATCH_NODE_STARTUP_DIR": str(node.startup_dir),
        "AZ_BATCH_JOB_ID": spec.job_id,
        "AZ_BATCH_TASK_ID": spec.task_id,
        "AZ_BATCH_TASK_DIR": str(task_dir),
        "AZ_BATCH_TASK_WORKING_DIR": str(task_dir / "wd"),
    })
    env.update(spec.environment)
    return env


@functools.lru_cache(maxsize=4)
def _host_environment(items: tuple[tuple[str, str], ...], secrets: int) -> tuple[tuple[str, str], ...]:
    # Cached by the environment's content and the number of registered secrets (a newly
    # registered one must be masked): scanning every value costs ~0.2 ms, a noticeable share
    # of a tiny task's overhead, and a node process's environment does not change between tasks.
    return tuple((k, v) for k, v in items
                 if k not in SECRET_ENV_VARS and not k.startswith(("AZ_BATCH_", "BATCHYARD_")) and redact(v) == v)
