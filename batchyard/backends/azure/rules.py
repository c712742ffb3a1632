"""Batch's rules for the pool a job would run on, checked before anything is created.

Each broken rule is a :class:`~batchyard.core.findings.Finding` (``submit`` refuses the job on an
error-level one; ``batchyard plan`` lists them all). Where each rule comes from:

- ``taskSlotsPerNode``: "The maximum value is the smaller of 4 times the number of cores of the
  vmSize of the pool or 256" (Batch REST 2025-06-01, ``BatchPoolCreateOptions``). Cores come from
  the bundled ``batchyard/data/vm_prices.toml``; a size missing there is checked against 256 only.
- ``resizeTimeout``: "The minimum value is 5 minutes. If you specify a value less than 5 minutes,
  the Batch service returns an error" (same reference).
- Image and node agent SKU: the agent SKU names the OS it runs on (``batch.node.ubuntu 24.04``,
  ``batch.node.el 9``, ``batch.node.windows amd64``...); the pair must be one that the account's
  "list supported images" answer holds. The rule below is the static part of that table: an
  Ubuntu agent needs a Canonical (or Batch/DSVM Ubuntu) image of the same release.
- Spot: "Spot VMs aren't available for some clouds, VM sizes, and subscription offer types"
  (MicrosoftDocs/azure-docs ``articles/batch/batch-spot-vms.md``); the VM article's limitations list
  the B-series and promo sizes.
- A reused pool and the job: "All regular Tasks ... run on this Pool must specify the
  containerSettings property" when the pool has a ``containerConfiguration``, and a task's
  ``containerSettings`` "must not be set" when it has none (``VirtualMachineConfiguration`` and
  ``TaskContainerSettings`` references). batchyard's command lines are POSIX (``shlex``), so a
  Windows pool cannot run them.
"""

from __future__ import annotations

import re
import tomllib
from functools import cache
from importlib import resources
from typing import Any

from batchyard.core.config import Config, PoolSection
from batchyard.core.findings import Finding
from batchyard.core.job import Job, parse_duration

MAX_SLOTS = 256
SLOTS_PER_CORE = 4
MIN_RESIZE_TIMEOUT_S = 5 * 60
UBUNTU_CODENAMES = {"20.04": "focal", "22.04": "jammy", "24.04": "noble"}
_AGENT = re.compile(r"^batch\.node\.(?P<os>[a-z]+)(?: (?P<version>\S+))?$")
_NO_SPOT = re.compile(r"^standard_b\d|_promo$")  # B-series (burstable) and promo sizes


@cache
def vm_cores() -> dict[str, int]:
    """Cores per VM size (lower case) from the bundled price table."""
    text = resources.files("batchyard").joinpath("data/vm_prices.toml").read_text(encoding="utf-8")
    sizes = tomllib.loads(text).get("sizes", {})
    return {name.lower(): int(entry["cores"]) for name, entry in sizes.items() if "cores" in entry}


def max_slots(vm_size: str) -> int | None:
    """Batch's limit of task slots per node for ``vm_size`` (None when its cores are unknown)."""
    cores = vm_cores().get(vm_size.lower())
    return None if cores is None else min(SLOTS_PER_CORE * cores, MAX_SLOTS)


def agent_fits_image(agent: str, publisher: str, offer: str, sku: str) -> bool | None:
    """Whether the node agent SKU runs on the image; None when the static rule does not know the pair."""
    found = _AGENT.match(agent.strip().lower())
    if not found:
        return False
    os_name, version = found.group("os"), found.group("version") or ""
    publisher, image = publisher.lower(), f"{offer} {sku}".lower()
    if os_name == "ubuntu":
        if publisher not in ("canonical", "microsoft-azure-batch", "microsoft-dsvm"):
            return False if publisher in ("microsoftwindowsserver", "almalinux", "rockylinux", "redhat") else None
        release = version.replace(".", "_")
        codename = UBUNTU_CODENAMES.get(version, "\0")
        return release in image or version in image or codename in image or version.replace(".", "") in image
    if os_name == "windows":
        return publisher.startswith("microsoftwindows") or None
    if publisher == "canonical":  # any other agent on an Ubuntu image
        return False
    return None


def check_pool_section(section: PoolSection, *, where: str = "[azure.pool]") -> list[Finding]:
    """The settings of a pool batchyard would create, against Batch's rules."""
    findings: list[Finding] = []
    limit = max_slots(section.vm_size)
    slots = section.task_slots_per_node
    if limit is not None and slots > limit:
        findings.append(Finding("error", "pool-slots-over-limit", f"{where} task_slots_per_node = {slots} on "
                                f"{section.vm_size}: Azure Batch allows at most min(4 x cores, 256) = {limit}",
                                f"set task_slots_per_node to at most {limit}, or pick a larger vm_size"))
    elif limit is None and slots > MAX_SLOTS:
        findings.append(Finding("error", "pool-slots-over-limit", f"{where} task_slots_per_node = {slots}: Azure "
                                f"Batch allows at most {MAX_SLOTS}", f"set it to at most {MAX_SLOTS}"))
    elif limit is None:
        findings.append(Finding("info", "pool-slots-unchecked", f"{section.vm_size} is not in batchyard's VM table: "
                                "task_slots_per_node was checked against 256 only (Batch allows min(4 x cores, 256))",
                                "check the size's cores in the Azure portal"))
    if not section.autoscale_formula:
        try:
            timeout = parse_duration(section.resize_timeout)
        except ValueError as exc:
            timeout = None
            findings.append(Finding("error", "pool-resize-timeout", f"{where} resize_timeout: {exc}",
                                    "use a duration such as \"15m\""))
        if timeout is not None and timeout < MIN_RESIZE_TIMEOUT_S:
            findings.append(Finding("error", "pool-resize-timeout", f"{where} resize_timeout = "
                                    f"{section.resize_timeout!r}: Azure Batch refuses a resize timeout under 5 minutes",
                                    "set resize_timeout to \"5m\" or more (default \"15m\")"))
    fits = agent_fits_image(section.node_agent_sku_id, section.image_publisher, section.image_offer,
                            section.image_sku)
    image = f"{section.image_publisher}/{section.image_offer}/{section.image_sku}"
    if fits is False:
        findings.append(Finding("error", "pool-node-agent", f"{where} node_agent_sku_id = "
                                f"{section.node_agent_sku_id!r} does not run on the image {image}: Azure Batch "
                                "refuses the pair", "use the agent SKU that `az batch pool supported-images list` "
                                "gives for the image (batch.node.ubuntu 24.04 for ubuntu-24_04-lts)"))
    elif fits is None:
        findings.append(Finding("info", "pool-node-agent", f"{where}: the pair {image} + "
                                f"{section.node_agent_sku_id!r} was not checked (batchyard knows Ubuntu and Windows "
                                "images only)", "`az batch pool supported-images list` lists the valid pairs"))
    if section.spot_nodes and _NO_SPOT.search(section.vm_size.lower()):
        findings.append(Finding("error", "pool-spot-unsupported", f"{where} spot_nodes = {section.spot_nodes} on "
                                f"{section.vm_size}: Azure offers no Spot VMs of B-series or promo sizes",
                                "use dedicated nodes, or a D/F/E-series size for spot nodes"))
    return findings


def check_existing_pool(pool: Any, job: Job, config: Config) -> list[Finding]:
    """A pool that exists already (``[azure] pool_id``, or a kept per-job pool) against the job."""
    findings: list[Finding] = []
    vm = getattr(pool, "virtual_machine_configuration", None)
    containers = getattr(vm, "container_configuration", None) if vm is not None else None
    name = f"pool {pool.id!r}"
    if job.container_image and containers is None:
        findings.append(Finding("error", "pool-not-container", f"job {job.id} runs in container_image "
                                f"{job.container_image!r}, but {name} has no containerConfiguration: Azure Batch "
                                "refuses container tasks there", "use a container-enabled pool, or leave [azure] "
                                "pool_id unset so batchyard creates one"))
    if not job.container_image and containers is not None:
        findings.append(Finding("error", "pool-is-container", f"{name} is container-enabled: Azure Batch runs only "
                                f"container tasks there, and job {job.id} has no container_image",
                                "set container_image, or use a pool without containerConfiguration"))
    agent = str(getattr(vm, "node_agent_sku_id", "") or "")
    if agent.lower().startswith("batch.node.windows"):
        findings.append(Finding("error", "pool-windows", f"{name} runs Windows ({agent}): batchyard's command lines "
                                "are POSIX and its output check needs /bin/sh", "use a Linux pool"))
    section = config.azure.pool
    slots = int(getattr(pool, "task_slots_per_node", None) or 1)
    if section is not None and section.task_slots_per_node != slots:
        findings.append(Finding("warning", "pool-slots-differ", f"{name} has {slots} task slot(s) per node; "
                                f"[azure.pool] task_slots_per_node = {section.task_slots_per_node} applies only to "
                                "pools batchyard creates", "resize or recreate the pool to change its slots"))
    size = str(getattr(pool, "vm_size", "") or "")
    limit = max_slots(size) if size else None
    if limit is not None and slots > limit:
        findings.append(Finding("warning", "pool-slots-over-limit", f"{name}: {slots} slots per node on {size} "
                                f"(Batch's limit is {limit})", "check the pool's VM size"))
    return findings


def errors_of(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "error"]


__all__ = ["agent_fits_image", "check_existing_pool", "check_pool_section", "errors_of", "max_slots", "vm_cores"]
