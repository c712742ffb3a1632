"""Private registries for the azure backend's container jobs: the SDK references pools and tasks get.

Built once per submit of a container job, from ``[[azure.container_registries]]`` and the
passwords the config read from the environment, and dropped afterwards: the SDK models' repr
shows the password, so they never live on a long-lived object (the :class:`ContainerSetup`
fields holding them are ``repr=False``). See docs/azure.md, "Container tasks".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from azure.batch import models as bm

from batchyard.core.config import Config, RegistrySection
from batchyard.core.errors import ConfigError
from batchyard.core.image_registries import registry_for, unconfigured_private_host
from batchyard.core.redact import register_secret

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContainerSetup:
    """What a container job's pool and tasks need from the configured registries."""

    image: str
    # The registry of the job's image, set on every task (works on any pool, even one without it).
    task_registry: bm.ContainerRegistryReference | None = field(default=None, repr=False)
    # Every username/password registry: listed on a pool batchyard creates, so its nodes can prefetch
    # the image and later jobs' images on the same (named) pool pull too.
    pool_registries: tuple[bm.ContainerRegistryReference, ...] = field(default=(), repr=False)
    # Set when the image's registry signs in with a managed identity: the message refusing to create a pool.
    pool_refusal: str | None = None


def registry_reference(reg: RegistrySection, index: int, config: Config) -> bm.ContainerRegistryReference:
    """The SDK reference for one entry; a ConfigError naming the field when its password is not set."""
    if reg.identity_resource_id:
        return bm.ContainerRegistryReference(
            registry_server=reg.server,
            identity_reference=bm.BatchNodeIdentityReference(resource_id=reg.identity_resource_id))
    password = config.registry_password(reg.server)
    if not password:
        raise ConfigError(f"azure.container_registries.{index}.password_env: the environment variable "
                          f"{reg.password_env} (the password of registry {reg.server}) is not set; export it "
                          "before submitting a container job (the password never goes in batchyard.toml)")
    register_secret(password)
    return bm.ContainerRegistryReference(registry_server=reg.server, username=reg.username, password=password)


def container_setup(image: str, config: Config) -> ContainerSetup:
    """Resolve every configured registry (so a missing password fails the submit before anything exists)."""
    registries = config.azure.container_registries
    refs = [registry_reference(reg, i, config) for i, reg in enumerate(registries)]
    host = unconfigured_private_host(image, registries)
    if host is not None:
        log.warning("container_image %r comes from %s, which no [[azure.container_registries]] entry names: "
                    "Azure Batch pulls it only if the registry allows anonymous pulls or the pool already "
                    "has its credentials", image, host)
    used = registry_for(image, registries)
    task_ref = refs[registries.index(used)] if used is not None else None
    refusal = None
    if used is not None and used.identity_resource_id:
        # The data-plane API that creates pools cannot give them an identity, so such a pool could never pull.
        refusal = (f"container_image {image!r} is in {used.server}, which signs in with a managed identity "
                   "(identity_resource_id); a pool batchyard creates has no identity, so it could not pull the "
                   "image. Create a container-enabled pool with that user-assigned identity (Azure portal, ARM or "
                   "Bicep template) and set [azure] pool_id to it")
    pool_refs = tuple(ref for reg, ref in zip(registries, refs, strict=True) if not reg.identity_resource_id)
    return ContainerSetup(image=image, task_registry=task_ref, pool_registries=pool_refs, pool_refusal=refusal)


__all__ = ["ContainerSetup", "container_setup", "registry_reference"]
