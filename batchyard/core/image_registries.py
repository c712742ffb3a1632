"""Private container registries: which configured registry a job's image comes from.

How an image reference names its host is in :mod:`batchyard.core.image_refs` (re-exported here).
Pure functions shared by ``batchyard plan`` and the azure backend; nothing here reads a password
(the config does, from the environment).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from batchyard.core.findings import Finding
from batchyard.core.image_refs import DOCKER_HUB, PUBLIC_HOSTS, image_host, normalize_server

if TYPE_CHECKING:
    from batchyard.core.config import Config, RegistrySection
    from batchyard.core.job import Job


def registry_for(image: str, registries: Sequence[RegistrySection]) -> RegistrySection | None:
    """The configured registry whose server is the image's host, if any."""
    host = image_host(image)
    return next((r for r in registries if r.server == host), None)


def unconfigured_private_host(image: str, registries: Sequence[RegistrySection]) -> str | None:
    """The image's host when it is neither configured nor a public registry (it may need credentials)."""
    host = image_host(image)
    if host in PUBLIC_HOSTS or registry_for(image, registries) is not None:
        return None
    return host


def check_registries(job: Job, config: Config) -> list[Finding]:
    """``batchyard plan``'s registry rules for a container job (see docs/plan.md)."""
    image = job.container_image
    if not image:
        return []
    registries = config.azure.container_registries
    findings: list[Finding] = []
    host = unconfigured_private_host(image, registries)
    if host is not None:
        findings.append(Finding(
            "warning", "registry-not-configured",
            f"container_image {image!r} comes from {host}, which no [[azure.container_registries]] entry names: "
            "Azure Batch can pull it only if that registry allows anonymous pulls or the existing pool "
            "already holds its credentials",
            f'add [[azure.container_registries]] with server = "{host}", username and password_env '
            "(docs/configuration.md)"))
    for i, reg in enumerate(registries):
        if reg.password_env and config.registry_password(reg.server) is None:
            findings.append(Finding(
                "error", "registry-password-missing",
                f"azure.container_registries.{i}.password_env: the variable {reg.password_env} (password of "
                f"{reg.server}) is not set, so submitting this container job would fail",
                f"export {reg.password_env} before `batchyard run`"))
    used = registry_for(image, registries)
    if used is not None and used.identity_resource_id and not config.azure.pool_id:
        findings.append(Finding(
            "error", "registry-identity-needs-pool",
            f"{used.server} signs in with a managed identity (identity_resource_id), which only a pool created "
            "with that identity has; the pool batchyard would create has none, so it could not pull the image",
            "create a container-enabled pool with that user-assigned identity (Azure portal, ARM or Bicep "
            "template) and set [azure] pool_id to it"))
    return findings


__all__ = ["DOCKER_HUB", "PUBLIC_HOSTS", "check_registries", "image_host", "normalize_server", "registry_for",
           "unconfigured_private_host"]
