"""Docker image references: which registry host an image names.

An image reference names its registry the way ``docker pull`` reads it: the part before the
first ``/`` is a registry host when it contains ``.`` or ``:`` or is ``localhost``
(``myregistry.azurecr.io/tools/app:1``, ``localhost:5000/app``); otherwise the image is on
Docker Hub (``python:3.12``, ``library/python``, ``myorg/app``). Docker Hub and
mcr.microsoft.com serve public images without credentials, so an image there needs no entry.

Pure text rules with no imports of batchyard: the config normalises a registry's server with
them, and :mod:`batchyard.core.image_registries` (which reads the config) matches images to entries.
"""

from __future__ import annotations

DOCKER_HUB = "docker.io"
# Names Docker Hub answers under; all compare equal to "docker.io", so a `server = "docker.io"`
# entry (a private Docker Hub repository) matches `myorg/app` as well as `index.docker.io/myorg/app`.
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})
PUBLIC_HOSTS = frozenset({DOCKER_HUB, "mcr.microsoft.com"})


def normalize_server(server: str) -> str:
    """``https://MyRegistry.azurecr.io/`` -> ``myregistry.azurecr.io`` (host names ignore case)."""
    text = server.strip().lower()
    for scheme in ("https://", "http://"):
        text = text.removeprefix(scheme)
    text = text.rstrip("/")
    return DOCKER_HUB if text in _HUB_ALIASES else text


def image_host(image: str) -> str:
    """The registry host of an image reference (``docker.io`` when it names none)."""
    first, slash, _ = image.strip().partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return normalize_server(first)
    return DOCKER_HUB


__all__ = ["DOCKER_HUB", "PUBLIC_HOSTS", "image_host", "normalize_server"]
