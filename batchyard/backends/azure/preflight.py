"""The azure backend's preflight: the Batch account answers, and the pool suits Batch and the job.

``run`` authenticates first (:meth:`JobChecks.authenticate`, one cheap call: list one pool id) and
``submit`` refuses a pool Batch would refuse (:meth:`JobChecks.refuse_errors`), both before
anything is created. ``batchyard plan`` gets all of it as findings
(:meth:`JobChecks.findings`, through ``Backend.preflight_findings``), with the active-job count.
The settings themselves (URL without a scheme, key not base64, account name not the URL's)
are refused earlier, when the client is made (:mod:`batchyard.backends.azure.clients`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from batchyard.backends.azure.pools import PoolManager, per_job_pool_id
from batchyard.backends.azure.rules import check_existing_pool, check_pool_section, errors_of
from batchyard.backends.azure.runs import RunChain
from batchyard.backends.azure.tasks import batch_error, enum_text
from batchyard.core.config import Config, PoolSection
from batchyard.core.errors import BatchyardError, ConfigError
from batchyard.core.findings import Finding
from batchyard.core.job import Job
from batchyard.node.docker import image_findings

QUOTA_WARNING = 0.8


class JobChecks:
    def __init__(self, client: Any, pools: PoolManager, config: Config, chain: Callable[[str], RunChain]) -> None:
        self.client = client
        self.pools = pools
        self.config = config
        self._chain = chain

    def authenticate(self) -> None:
        """One authenticated call; a refusal or an unreachable endpoint is an error naming the setting."""
        azure = self.config.azure
        where = f"Batch preflight (account {azure.batch_account or '?'} at {azure.batch_url})"
        try:
            next(iter(self.client.list_pools(max_results=1, select=["id"])), None)
        except BatchyardError:
            raise
        except Exception as exc:
            raise batch_error(exc, where) from None

    def findings(self, job: Job) -> list[Finding]:
        try:
            self.authenticate()
        except BatchyardError as exc:
            return [auth_finding(exc)]
        return self.pool_findings(job) + image_findings(job) + self.quota_findings(job)

    def pool_findings(self, job: Job) -> list[Finding]:
        """The pool the job would run on: an existing one against the job, a new one against Batch's rules."""
        azure = self.config.azure
        if azure.pool_id:
            pool = self.pools.get(azure.pool_id)
            if pool is not None:
                return check_existing_pool(pool, job, self.config)
            if azure.pool is None:
                return [Finding("error", "pool-missing", f"pool {azure.pool_id!r} ([azure] pool_id) does not exist "
                                "on the Batch account", "create it, or add an [azure.pool] section so batchyard "
                                "creates it")]
            return check_pool_section(azure.pool)
        pool = self.pools.get(per_job_pool_id(job.id))
        if pool is not None and enum_text(pool.state) != "deleting":  # kept from an earlier run
            return check_existing_pool(pool, job, self.config)
        return check_pool_section(azure.pool or PoolSection())

    def refuse_errors(self, job: Job) -> None:
        errors = errors_of(self.pool_findings(job) + image_findings(job))
        if errors:
            raise ConfigError("\n".join(f"{f.message}; {f.fix}" if f.fix else f.message for f in errors))

    def quota_findings(self, job: Job) -> list[Finding]:
        quota = self.config.azure.active_job_quota
        fix = ("`batchyard delete` jobs you no longer need (batchyard terminates a job at the end of each run, "
               "so it stops counting), or ask Azure support for a higher quota and set [azure] active_job_quota")
        try:
            active = sum(1 for _ in self.client.list_jobs(filter="state eq 'active'", select=["id"]))
        except Exception as exc:
            return [Finding("warning", "job-quota", f"active jobs not counted: {batch_error(exc, 'listing jobs')}",
                            fix)]
        try:
            current = self.client.get_job(self._chain(job.id).current.batch_job_id)
            needs_job = enum_text(current.state) in ("completed", "terminating")
        except ResourceNotFoundError:
            needs_job = True
        except Exception as exc:
            raise batch_error(exc, f"reading job {job.id!r}") from None
        if needs_job and active >= quota:
            return [Finding("error", "job-quota", f"{active} active jobs on the Batch account, quota {quota} "
                            "([azure] active_job_quota): creating this job fails with "
                            "ActiveJobAndScheduleQuotaReached", fix)]
        in_use = f"{active} of {quota} active jobs in use on the Batch account"
        if active >= QUOTA_WARNING * quota:
            return [Finding("warning", "job-quota", in_use, fix)]
        return [Finding("info", "job-quota", in_use)]


def auth_finding(exc: BaseException) -> Finding:
    return Finding("error", "batch-account", str(exc).splitlines()[0],
                   "fix the setting the message names (docs/troubleshooting.md, \"The preflight refuses\")")


__all__ = ["JobChecks", "auth_finding"]
