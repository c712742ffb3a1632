"""The values Azure Batch fills in when it answers, so a GET shows what a GET on Azure shows.

Every rule here is one the service's own recorded answers show (tests/data/batch_recordings):
a pool created with ``{"nodeFillType": "pack"}`` comes back as ``{"nodeFillType": "Pack",
"jobDefaultOrder": "none"}``, an image without a version as ``"version": "latest"``, a data disk
with ``"caching": "none"`` and a ``standard_lrs`` managed disk, and so on. The stored request body
is never changed (the scheduler reads it as sent); only the views pass through these functions,
which take and return plain JSON so that ``state`` can call them without an import circle.
"""

from __future__ import annotations

import copy
from typing import Any

FILL_TYPES = {"spread": "Spread", "pack": "Pack"}
OS_DISK_CACHING = {"none": "None", "readonly": "ReadOnly", "readwrite": "ReadWrite"}
# A node that has not booted yet has neither of these on Azure (see the compute node recordings).
BOOT_ONLY_KEYS = ("lastBootTime", "nodeAgentInfo")
BOOTING_STATES = ("creating", "starting")
# Loopback stands in for the public addresses Azure hands out: nothing listens there for a node.
NODE_IPV4 = "127.0.0.1"
NODE_IPV6 = "::1"
NODE_FQDN = "localhost"


def scheduling_policy(policy: Any) -> dict[str, Any]:
    """``taskSchedulingPolicy`` as Azure echoes it: PascalCase fill type and a ``jobDefaultOrder``."""
    out = dict(policy) if isinstance(policy, dict) else {}
    fill = str(out.get("nodeFillType") or "spread")
    out["nodeFillType"] = FILL_TYPES.get(fill.lower(), fill)
    out.setdefault("jobDefaultOrder", "none")
    return out


def image_reference(image: Any) -> dict[str, Any]:
    out = dict(image) if isinstance(image, dict) else {}
    if "virtualMachineImageId" not in out and "publisher" in out:
        out.setdefault("version", "latest")
    return out


def _disk_defaults(disk: dict[str, Any]) -> dict[str, Any]:
    out = dict(disk)
    out.setdefault("caching", "none")
    managed = dict(out.get("managedDisk") or {})
    managed.setdefault("storageAccountType", "standard_lrs")
    out["managedDisk"] = managed
    return out


def _os_disk(disk: dict[str, Any]) -> dict[str, Any]:
    out = dict(disk)
    out.setdefault("ephemeralOSDiskSettings", {})
    managed = dict(out.get("managedDisk") or {})
    managed.setdefault("storageAccountType", "standard_lrs")
    out["managedDisk"] = managed
    if isinstance(out.get("caching"), str):
        out["caching"] = OS_DISK_CACHING.get(out["caching"].lower(), out["caching"])
    return out


def vm_configuration(config: Any) -> Any:
    if not isinstance(config, dict):
        return config
    out = dict(config)
    if "imageReference" in out:
        out["imageReference"] = image_reference(out["imageReference"])
    if isinstance(out.get("dataDisks"), list):
        out["dataDisks"] = [_disk_defaults(d) if isinstance(d, dict) else d for d in out["dataDisks"]]
    if isinstance(out.get("osDisk"), dict):
        out["osDisk"] = _os_disk(out["osDisk"])
    return out


def network_configuration(network: Any) -> Any:
    if not isinstance(network, dict):
        return network
    out = copy.deepcopy(network)
    out.setdefault("dynamicVNetAssignmentScope", "none")
    out.setdefault("enableAcceleratedNetworking", False)
    for nat in (out.get("endpointConfiguration") or {}).get("inboundNATPools") or []:
        rules = nat.get("networkSecurityGroupRules") if isinstance(nat, dict) else None
        for rule in rules or []:
            if isinstance(rule, dict):
                rule.setdefault("sourcePortRanges", ["*"])
    return out


def _windows(spec: dict[str, Any]) -> bool:
    sku = str((spec.get("virtualMachineConfiguration") or {}).get("nodeAgentSKUId") or "")
    return sku.lower().startswith("batch.node.windows")


def user_accounts(accounts: Any, *, windows: bool) -> Any:
    if not isinstance(accounts, list):
        return accounts
    out = []
    for account in accounts:
        if isinstance(account, dict):
            account = dict(account)
            account.setdefault("elevationLevel", "nonadmin")
            if windows:
                account.setdefault("windowsUserConfiguration", {"loginMode": "batch"})
        out.append(account)
    return out


def pool_view(view: dict[str, Any]) -> dict[str, Any]:
    """A pool's GET (or a pool spec inside an auto-pool) with Azure's defaults filled in."""
    for key in ("previousState", "previousStateTransitionTime"):
        view.pop(key, None)  # jobs and tasks have a previous state; pools have none in the 2025-06-01 API
    view["taskSchedulingPolicy"] = scheduling_policy(view.get("taskSchedulingPolicy"))
    if "virtualMachineConfiguration" in view:
        view["virtualMachineConfiguration"] = vm_configuration(view["virtualMachineConfiguration"])
    if "networkConfiguration" in view:
        view["networkConfiguration"] = network_configuration(view["networkConfiguration"])
    if "userAccounts" in view:
        view["userAccounts"] = user_accounts(view["userAccounts"], windows=_windows(view))
    return view


def auto_pool_spec(pool: Any) -> Any:
    """The ``pool`` of an ``autoPoolSpecification`` as a job's GET shows it."""
    if not isinstance(pool, dict):
        return pool
    out = dict(pool)
    for key, value in (("taskSlotsPerNode", 1), ("resizeTimeout", "PT15M"), ("targetDedicatedNodes", 0),
                       ("targetLowPriorityNodes", 0), ("enableAutoScale", False),
                       ("enableInterNodeCommunication", False)):
        out.setdefault(key, value)
    return pool_view(out)


def job_view(view: dict[str, Any]) -> dict[str, Any]:
    """A job's GET: the auto-pool specification with its defaults."""
    auto = (view.get("poolInfo") or {}).get("autoPoolSpecification")
    if isinstance(auto, dict):
        auto = {**auto, "keepAlive": bool(auto.get("keepAlive", False))}
        if "pool" in auto:
            auto["pool"] = auto_pool_spec(auto["pool"])
        view["poolInfo"] = {**view["poolInfo"], "autoPoolSpecification": auto}
    return view


def ip_families(spec: dict[str, Any]) -> set[str]:
    public = (spec.get("networkConfiguration") or {}).get("publicIPAddressConfiguration") or {}
    return {str(f).lower() for f in public.get("ipFamilies") or []}


def inbound_endpoints(spec: dict[str, Any], index: int) -> list[dict[str, Any]]:
    """One endpoint per inbound NAT pool (``<name>.<node index>``), plus its IPv6 twin when asked."""
    nat_pools = ((spec.get("networkConfiguration") or {}).get("endpointConfiguration") or {}).get("inboundNATPools")
    ipv6 = "ipv6" in ip_families(spec)
    out: list[dict[str, Any]] = []
    for nat in nat_pools or []:
        if not isinstance(nat, dict):
            continue
        start = int(nat.get("frontendPortRangeStart") or 0)
        width = max(1, int(nat.get("frontendPortRangeEnd") or start) - start + 1)
        endpoint = {"name": f"{nat.get('name')}.{index}", "protocol": nat.get("protocol"),
                    "publicIPAddress": NODE_IPV4, "publicFQDN": NODE_FQDN,
                    "frontendPort": start + index % width, "backendPort": nat.get("backendPort")}
        out.append(endpoint)
        if ipv6:
            out.append({**endpoint, "name": f"{nat.get('name')}-ipv6.{index}", "publicIPAddress": NODE_IPV6})
    return out


def node_view(view: dict[str, Any], pool_spec: dict[str, Any], index: int) -> dict[str, Any]:
    """A node's GET: its image (``virtualMachineInfo``), endpoints, IPv6 address; boot-only keys once booted."""
    if view.get("state") in BOOTING_STATES:
        for key in BOOT_ONLY_KEYS:
            view.pop(key, None)
    if "ipv6" in ip_families(pool_spec):
        view["ipv6Address"] = NODE_IPV6
    endpoints = inbound_endpoints(pool_spec, index)
    if endpoints:
        view["endpointConfiguration"] = {"inboundEndpoints": endpoints}
    image = image_reference((pool_spec.get("virtualMachineConfiguration") or {}).get("imageReference"))
    if image:
        image["exactVersion"] = image.get("version", "latest")
        view["virtualMachineInfo"] = {"imageReference": image}
    return view
