"""``batchyard.toml`` plus the environment: which backend, which storage, how many workers.

Precedence, highest first: command-line flags, environment variables, ``batchyard.toml``
(found in the working dir or a parent, or given with ``--config``), built-in defaults.
Secrets should come from environment variables; a literal key in the file works but warns.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from batchyard.core.durations import parse_duration
from batchyard.core.errors import ConfigError
from batchyard.core.image_refs import normalize_server
from batchyard.core.paths import make_private_dir
from batchyard.core.redact import register_secret
from batchyard.core.toml_files import TomlFileError, read_toml

log = logging.getLogger(__name__)

CONFIG_NAME = "batchyard.toml"
ENV_BACKEND = "BATCHYARD_BACKEND"
ENV_STORAGE = "AZURE_STORAGE_CONNECTION_STRING"
ENV_HOME = "BATCHYARD_HOME"
ENV_BATCH_URL = "BATCHYARD_BATCH_URL"
ENV_BATCH_ACCOUNT = "BATCHYARD_BATCH_ACCOUNT"
ENV_BATCH_KEY = "BATCHYARD_BATCH_KEY"
ENV_FAST_PATH = "BATCHYARD_FAST_PATH"
FAST_PATH_MODES = ("auto", "off")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageSection(_Section):
    connection_string: str | None = Field(default=None, repr=False)
    connection_string_env: str = ENV_STORAGE
    queue: str = "batchyard-tasks"
    table_prefix: str = "batchyard"
    system_container: str = "batchyard"
    log_container: str = "batchyard-logs"
    # "auto": a worker's per-task calls to a loopback endpoint go by hand-signed REST, the rest
    # through the SDK; "off": all through the SDK (batchyard/storage/fast_path.py decides).
    fast_path: Literal["auto", "off"] = "auto"


class LocalSection(_Section):
    workers: int | None = Field(default=None, ge=1, le=512)
    lease_seconds: float = Field(default=30.0, ge=1, le=7 * 24 * 3600)
    max_dequeue_count: int = Field(default=5, ge=1, le=100)
    work_dir: str | None = None
    keep_task_dirs: bool = False
    nodes: int | None = Field(default=None, ge=1)
    task_slots_per_node: int | None = Field(default=None, ge=1)
    # Run as many workers as the cloud pool has slots, so a local run's concurrency matches Azure's.
    mirror_pool: bool = False


class PoolSection(_Section):
    vm_size: str = "standard_d2s_v3"
    image_publisher: str = "canonical"
    image_offer: str = "ubuntu-24_04-lts"
    image_sku: str = "server"
    image_version: str = "latest"
    node_agent_sku_id: str = "batch.node.ubuntu 24.04"
    dedicated_nodes: int = Field(default=1, ge=0)
    spot_nodes: int = Field(default=0, ge=0)
    task_slots_per_node: int = Field(default=1, ge=1, le=256)
    start_task: str | None = None
    requirements: tuple[str, ...] = ()
    autoscale_formula: str | None = None
    # How often Azure applies the formula (Batch allows 5 minutes to 168 hours); `plan` simulates it.
    autoscale_evaluation_interval: str = "5m"
    # map_files/map_lines jobs: pools batchyard creates get a start task that installs the
    # submitter's batchyard and dill versions unless the node already has them (docs/inline.md).
    install_batchyard: bool = True
    resize_timeout: str = "15m"

    @field_validator("resize_timeout")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)  # read when a pool is made: a typo is reported now, naming the setting
        return value

    @field_validator("autoscale_evaluation_interval")
    @classmethod
    def _evaluation_interval(cls, value: str) -> str:
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise PydanticCustomError("duration", str(exc)) from None
        if not 5 * 60 <= seconds <= 168 * 3600:
            raise PydanticCustomError("autoscale_interval", "Azure Batch evaluates a formula every 5 minutes to "
                                      "168 hours, not {value}", {"value": value})
        return value


class RegistrySection(_Section):
    """One ``[[azure.container_registries]]`` entry: a private registry container jobs pull from.

    Signs in with ``username`` and the password in the environment variable ``password_env``
    (read when the config loads, needed at submit), or with a user-assigned managed identity
    (``identity_resource_id``) that the pool must carry. See docs/configuration.md.
    """

    server: str = Field(min_length=1)
    username: str | None = None
    password_env: str | None = None
    identity_resource_id: str | None = None
    # Declared only to refuse it with a message saying what to do instead (extra="forbid" would just
    # say "unknown setting"); a password in a file is readable by every task the local backend runs.
    password: str | None = Field(default=None, repr=False, exclude=True)

    @field_validator("server")
    @classmethod
    def _server(cls, value: str) -> str:
        server = normalize_server(value)
        if not server or "/" in server:
            raise PydanticCustomError("registry_server", "the registry's host name (and :port), e.g. "
                                      "myregistry.azurecr.io, without a path")
        return server

    @field_validator("password")
    @classmethod
    def _no_literal_password(cls, value: str | None) -> None:
        register_secret(value)  # refused, but masked should anything print the file's content
        raise PydanticCustomError("literal_password", "a password is never read from batchyard.toml: put it in an "
                                  "environment variable and set password_env to that variable's name")

    @field_validator("password_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.fullmatch(value):
            register_secret(value)  # most likely the password itself, pasted in the wrong place
            raise PydanticCustomError("env_name", "the NAME of the environment variable holding the password "
                                      "(letters, digits, _), not the password")
        return value

    @model_validator(mode="after")
    def _one_sign_in(self) -> RegistrySection:
        keyed = self.username is not None or self.password_env is not None
        if self.identity_resource_id is not None:
            if keyed:
                raise PydanticCustomError("registry_sign_in", "set either username and password_env, or "
                                          "identity_resource_id, not both")
            if not self.identity_resource_id.lower().startswith("/subscriptions/"):
                raise PydanticCustomError("registry_identity", "identity_resource_id must be the ARM id of a "
                                          "user-assigned identity (/subscriptions/.../userAssignedIdentities/NAME)")
        elif self.username is None or self.password_env is None:
            raise PydanticCustomError("registry_sign_in", "set username and password_env (or identity_resource_id "
                                      "for a managed identity)")
        return self


class AzureSection(_Section):
    batch_url: str | None = None
    batch_account: str | None = None
    batch_key: str | None = Field(default=None, repr=False)
    batch_key_env: str = ENV_BATCH_KEY
    pool_id: str | None = None
    pool: PoolSection | None = None
    steady_timeout: str = "30m"
    poll_interval: float = Field(default=2.0, gt=0)
    sas_margin: str = "1h"
    keep_auto_pool: bool = False
    active_job_quota: int = Field(default=100, ge=0)  # the account's active jobs + schedules quota (plan checks it)
    prices: dict[str, float] = Field(default_factory=dict)  # [azure.prices] vm size -> USD/hour (plan's forecast)
    container_registries: tuple[RegistrySection, ...] = ()  # [[azure.container_registries]]

    @field_validator("steady_timeout", "sas_margin")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)  # read at submit: a typo is reported when the configuration loads
        return value

    @field_validator("container_registries")
    @classmethod
    def _distinct_servers(cls, value: tuple[RegistrySection, ...]) -> tuple[RegistrySection, ...]:
        seen: set[str] = set()
        for reg in value:
            if reg.server in seen:
                raise PydanticCustomError("registry_duplicate", "two entries for {server}: one per registry",
                                          {"server": reg.server})
            seen.add(reg.server)
        return value


class FileConfig(_Section):
    backend: str = "local"
    storage: StorageSection = StorageSection()
    local: LocalSection = LocalSection()
    azure: AzureSection = AzureSection()


@dataclass(frozen=True)
class Config:
    """The resolved configuration. Secrets are fields with ``repr=False``."""

    backend: str
    storage: StorageSection
    local: LocalSection
    azure: AzureSection
    source: Path | None = None
    storage_connection_string: str | None = field(default=None, repr=False)
    batch_key: str | None = field(default=None, repr=False)
    # (server, password) of each [[azure.container_registries]] entry whose password_env is set. An unset
    # one is an error only when a container job is submitted: status, logs, delete never need it.
    registry_passwords: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    # Local files a pool batchyard creates stages into its start task's working dir (never read from a
    # file: the Python API sets it to the submitter's batchyard wheel, which nodes then pip-install).
    pool_start_files: tuple[Path, ...] = ()
    home: Path = field(default_factory=lambda: default_home())

    def with_backend(self, name: str | None) -> Config:
        return self if not name else replace(self, backend=name)

    @property
    def workers(self) -> int:
        if self.local.workers:
            return self.local.workers
        if self.local.mirror_pool:
            pool = self.azure.pool or PoolSection()
            return max(1, (pool.dedicated_nodes + pool.spot_nodes) * pool.task_slots_per_node)
        if self.local.nodes and self.local.task_slots_per_node:
            return self.local.nodes * self.local.task_slots_per_node
        return os.cpu_count() or 2

    def registry_password(self, server: str) -> str | None:
        """The password of the registry ``server`` (from its password_env), or None if unset."""
        return dict(self.registry_passwords).get(normalize_server(server))


def default_home() -> Path:
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "batchyard"


def fast_path_mode(value: str | None) -> str:
    """The fast path mode ``value`` names (``auto`` when unset or empty), else a ConfigError."""
    mode = (value or "auto").strip().lower()
    if mode not in FAST_PATH_MODES:
        raise ConfigError(f"{ENV_FAST_PATH}={value!r}: expected one of {', '.join(FAST_PATH_MODES)}")
    return mode


def find_config(start: Path | None = None) -> Path | None:
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_NAME
        if candidate.is_file():
            return candidate
    return None


def _read_file(path: Path) -> dict[str, Any]:
    try:
        return read_toml(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except TomlFileError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def check_endpoint(url: str, what: str) -> str:
    """``url`` if it is an http(s) URL with a host; ConfigError naming ``what`` otherwise. Storage and
    Batch speak HTTP only: any other scheme (ftp://, file://) is a typo or worse, never sent to."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        shown = f"{parts.scheme}://{parts.hostname or ''}" if parts.scheme else repr(url.split("?", 1)[0][:60])
        raise ConfigError(f"{what}: {shown} is not an http:// or https:// endpoint")
    return url


def _check_storage_endpoints(conn: str, what: str) -> None:
    """The endpoints a connection string names (a key's value is never shown)."""
    for piece in conn.split(";"):
        name, _, value = piece.partition("=")
        key = name.strip().lower()
        if key.endswith("endpoint") and value.strip():
            check_endpoint(value.strip(), f"{what} ({name.strip()})")
        elif key == "defaultendpointsprotocol" and value.strip().lower() not in ("http", "https"):
            raise ConfigError(f"{what}: DefaultEndpointsProtocol={value.strip()!r}; only http and https are allowed")


def _make_private_dirs(*folders: Path) -> None:
    """Create batchyard's own folders 0700 before anything writes in them (Azurite's data, task dirs)."""
    for folder in folders:
        try:
            make_private_dir(folder)
        except OSError as exc:  # whoever needs the folder reports it; status on the azure backend does not
            log.debug("could not create %s: %s", folder, exc)


def load_config(path: str | Path | None = None, *, backend: str | None = None,
                env: dict[str, str] | None = None) -> Config:
    """Resolve the configuration from ``path`` (or the nearest batchyard.toml), the environment and flags."""
    environ = os.environ if env is None else env
    source = Path(path) if path else find_config()
    data = _read_file(source) if source else {}
    try:
        parsed = FileConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"{source}: invalid configuration"]
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            msg = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
            lines.append(f"  {loc}: {msg}")
        raise ConfigError("\n".join(lines)) from None

    if parsed.storage.connection_string:
        log.warning("%s: [storage] connection_string holds a key in the file; prefer the %s variable",
                    source, parsed.storage.connection_string_env)
    if parsed.azure.batch_key:
        log.warning("%s: [azure] batch_key is a literal secret in the file; prefer the %s variable",
                    source, parsed.azure.batch_key_env)
    conn = environ.get(parsed.storage.connection_string_env) or parsed.storage.connection_string
    batch_key = environ.get(parsed.azure.batch_key_env) or parsed.azure.batch_key
    register_secret(conn)
    register_secret(batch_key)
    if conn:
        _check_storage_endpoints(conn, f"storage connection string (${parsed.storage.connection_string_env} or "
                                       "[storage] connection_string)")
    passwords = []
    for reg in parsed.azure.container_registries:
        password = environ.get(reg.password_env) if reg.password_env else None
        if password:
            register_secret(password)
            passwords.append((reg.server, password))

    azure = parsed.azure
    overrides = {
        "batch_url": environ.get(ENV_BATCH_URL) or azure.batch_url,
        "batch_account": environ.get(ENV_BATCH_ACCOUNT) or azure.batch_account,
    }
    if overrides["batch_url"]:
        check_endpoint(overrides["batch_url"], f"Batch account URL (${ENV_BATCH_URL} or [azure] batch_url)")
    azure = azure.model_copy(update=overrides)
    storage = parsed.storage
    if environ.get(ENV_FAST_PATH):
        storage = storage.model_copy(update={"fast_path": fast_path_mode(environ[ENV_FAST_PATH])})
    chosen = backend or environ.get(ENV_BACKEND) or parsed.backend
    home = Path(environ[ENV_HOME]).expanduser() if environ.get(ENV_HOME) else default_home()
    work_root = Path(parsed.local.work_dir).expanduser() if parsed.local.work_dir else home / "work"
    _make_private_dirs(home, *([work_root] if chosen == "local" else []))
    return Config(
        backend=chosen, storage=storage, local=parsed.local, azure=azure, source=source,
        storage_connection_string=conn or None, batch_key=batch_key or None, registry_passwords=tuple(passwords),
        home=home,
    )

