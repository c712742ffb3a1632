"""Request bodies checked against the 2025-06-01 schema: Azure's codes and values, a lenient switch."""

from __future__ import annotations

import copy
import importlib.util
import json
import random
from datetime import timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from azure.batch import BatchClient
from azure.batch import models as bm
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest

from batchyard.emulator.batch.common import BatchApiError
from batchyard.emulator.batch.schema_checks import CompiledSchema
from batchyard.emulator.batch.validation import (
    RULES,
    SCHEMA,
    BodyValidator,
    SchemaWalk,
    invalid_value,
    lenient_from_env,
    load_schema,
)

pytestmark = pytest.mark.timeout(60)
MAKE_SCHEMA = Path(__file__).resolve().parents[1] / "data" / "batch_schema" / "make_schema.py"
VM = {"imageReference": {"publisher": "canonical", "offer": "ubuntu-24_04-lts", "sku": "server"},
      "nodeAgentSKUId": "batch.node.ubuntu 24.04"}


def pool_body(**extra: Any) -> dict[str, Any]:
    return {"id": "p1", "vmSize": "standard_d2s_v3", "virtualMachineConfiguration": VM, **extra}


def refusal(name: str, body: Any) -> BatchApiError:
    with pytest.raises(BatchApiError) as info:
        BodyValidator().check_body(name, body)
    return info.value


def test_schema_file_is_what_make_schema_writes() -> None:
    spec = importlib.util.spec_from_file_location("make_schema", MAKE_SCHEMA)
    assert spec is not None and spec.loader is not None
    make_schema = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_schema)
    if version("azure-batch") != make_schema.SDK_VERSION:
        pytest.skip(f"the schema comes from azure-batch {make_schema.SDK_VERSION}, not {version('azure-batch')}")
    committed = json.loads((Path(__file__).resolve().parents[2] / "batchyard" / SCHEMA).read_text(encoding="utf-8"))
    assert committed == make_schema.build()


def test_every_recorded_request_body_passes() -> None:
    validator = BodyValidator()
    checked = 0
    for path in sorted((Path(__file__).resolve().parents[1] / "data" / "batch_recordings").glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        for entry in data["fixtures"] + data["entries"]:
            method, _, target = entry["call"].partition(" ")
            name = validator.definition_for(method, target.split("?")[0])
            if name and "body" in entry and not entry.get("unreplayable") and entry.get("status", 201) < 300:
                validator.check_body(name, entry["body"])
                checked += 1
    assert checked >= 20


def test_unknown_property_is_an_invalid_request_body() -> None:
    error = refusal("BatchPoolCreateOptions", pool_body(vmSizes="oops"))
    assert (error.status, error.code) == (400, "InvalidRequestBody")
    assert ("PropertyName", "vmSizes") in error.values and "vmSizes" in error.message


def test_nested_unknown_property_names_its_path() -> None:
    error = refusal("BatchPoolCreateOptions", pool_body(virtualMachineConfiguration={**VM, "osDisks": {}}))
    assert error.code == "InvalidRequestBody" and "virtualMachineConfiguration.osDisks" in error.message


def test_missing_required_property_names_its_leaf() -> None:
    error = refusal("BatchPoolCreateOptions", {"id": "p1"})
    assert (error.code, error.values) == ("MissingRequiredProperty", [("PropertyName", "vmSize")])
    error = refusal("BatchTaskCreateOptions", {"id": "t", "commandLine": "true", "resourceFiles": [{}],
                                               "environmentSettings": [{"value": "v"}]})
    assert error.values == [("PropertyName", "name")] and "environmentSettings[0].name" in error.message


@pytest.mark.parametrize(("body", "name", "reason"), [
    (pool_body(taskSchedulingPolicy={"nodeFillType": "diagonal"}), "nodeFillType", "must be one of spread, pack"),
    (pool_body(targetDedicatedNodes="2"), "targetDedicatedNodes", "must be an integer"),
    (pool_body(targetDedicatedNodes=True), "targetDedicatedNodes", "must be an integer"),
    (pool_body(enableAutoScale="yes"), "enableAutoScale", "must be true or false"),
    (pool_body(resizeTimeout="ten minutes"), "resizeTimeout", "must be an ISO 8601 duration such as PT10M"),
    (pool_body(id="has space"), "id",
     "ids may contain letters, digits, hyphens and underscores, at most 64 characters"),
    (pool_body(metadata={"name": "x"}), "metadata", "must be a JSON array"),
])
def test_bad_values_are_invalid_property_values(body: dict[str, Any], name: str, reason: str) -> None:
    error = refusal("BatchPoolCreateOptions", body)
    assert (error.status, error.code) == (400, "InvalidPropertyValue")
    assert error.values[0] == ("PropertyName", name) and error.values[-1] == ("Reason", reason)


def test_enums_compare_case_insensitively_and_dates_parse() -> None:
    validator = BodyValidator()
    validator.check_body("BatchPoolCreateOptions", pool_body(taskSchedulingPolicy={"nodeFillType": "PACK"}))
    validator.check_body("BatchJobScheduleCreateOptions", {
        "id": "s", "schedule": {"doNotRunUntil": "2026-01-01T00:00:00Z", "startWindow": "PT01H00M00S"},
        "jobSpecification": {"poolInfo": {"poolId": "p"}}})
    error = refusal("BatchJobScheduleCreateOptions", {
        "id": "s", "schedule": {"doNotRunUntil": "tomorrow"}, "jobSpecification": {"poolInfo": {"poolId": "p"}}})
    assert error.values[0] == ("PropertyName", "doNotRunUntil")


def test_secrets_are_never_echoed() -> None:
    error = refusal("BatchPoolCreateOptions", pool_body(userAccounts=[{"name": "u", "password": 1234567}]))
    assert error.code == "InvalidPropertyValue" and [k for k, _ in error.values] == ["PropertyName", "Reason"]
    assert "1234567" not in json.dumps(error.body("http://x", "r"))
    shown = invalid_value("httpUrl", "resourceFiles[0].httpUrl", "https://a/c/b?sv=1&sig=SECRETSIG", "bad")
    assert "SECRETSIG" not in json.dumps(shown.body("http://x", "r"))


def test_malformed_image_id_is_refused_like_azure() -> None:
    image = {"virtualMachineImageId": "/subscriptions/0/resourceGroups/test/providers/Microsoft.Compute/gallery/G"
                                      "/images/I/versions/v"}
    error = refusal("BatchPoolCreateOptions", pool_body(virtualMachineConfiguration={
        "imageReference": image, "nodeAgentSKUId": "batch.node.ubuntu 22.04"}))
    assert error.code == "InvalidPropertyValue"
    assert [k for k, _ in error.values] == ["PropertyName", "PropertyValue", "Reason"]
    good = "/subscriptions/0/resourceGroups/test/providers/Microsoft.Compute/galleries/G/images/I/versions/1.0.0"
    BodyValidator().check_body("BatchPoolCreateOptions", pool_body(virtualMachineConfiguration={
        "imageReference": {"virtualMachineImageId": good}, "nodeAgentSKUId": "batch.node.ubuntu 22.04"}))


def test_every_operation_body_has_a_definition() -> None:
    definitions = load_schema()
    refs = {ref.rsplit("/", 1)[-1] for ref in _refs(definitions)}
    assert refs and refs <= set(definitions), sorted(refs - set(definitions))
    validator = BodyValidator()
    assert validator.definition_for("POST", "/jobs/j1/addtaskcollection") == "BatchTaskGroup"
    assert validator.definition_for("GET", "/pools") is None
    assert all(name in definitions for name in ("BatchTaskGroup", "BatchPoolCreateOptions", "BatchJob"))


def _refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        own = [value["$ref"]] if "$ref" in value else []
        return own + [r for item in value.values() for r in _refs(item)]
    return [r for item in value for r in _refs(item)] if isinstance(value, list) else []


def test_lenient_switch_from_environment() -> None:
    assert lenient_from_env({"BATCHYARD_EMULATOR_LENIENT": "1"}) is True
    assert lenient_from_env({"BATCHYARD_EMULATOR_LENIENT": "0"}) is False
    assert lenient_from_env({}) is False


def _raw_create_pool(emu: Any, body: dict[str, Any]) -> int:
    client = BatchClient(emu.url, AzureNamedKeyCredential(emu.account_name, emu.account_key), retry_total=0)
    request = HttpRequest("POST", "/pools?api-version=2025-06-01", headers={
        "Content-Type": "application/json; odata=minimalmetadata"}, content=json.dumps(body))
    try:
        return client.send_request(request).status_code
    except HttpResponseError as refused:
        return refused.status_code or 0


def test_strict_refuses_and_lenient_accepts_an_unknown_property(batch_emulator_factory: Any) -> None:
    body = pool_body(id="lenient-pool", targetDedicatedNodes=0, futureProperty={"x": 1})
    assert _raw_create_pool(batch_emulator_factory(strict=True), body) == 400
    assert _raw_create_pool(batch_emulator_factory(strict=False), body) == 201


def test_lenient_still_refuses_a_malformed_image_id(batch_emulator_factory: Any) -> None:
    body = pool_body(id="lenient-image", virtualMachineConfiguration={
        "imageReference": {"virtualMachineImageId": "/subscriptions/x/images/y"},
        "nodeAgentSKUId": "batch.node.ubuntu 22.04"})
    assert _raw_create_pool(batch_emulator_factory(strict=False), body) == 400


def test_sdk_sees_azure_error_for_a_malformed_image_id(batch_emulator: Any) -> None:
    client = BatchClient(batch_emulator.url, AzureNamedKeyCredential(batch_emulator.account_name,
                                                                     batch_emulator.account_key), retry_total=0)
    with pytest.raises(HttpResponseError) as info:
        client.create_pool(bm.BatchPoolCreateOptions(
            id="image-pool", vm_size="standard_d2_v2", virtual_machine_configuration=bm.VirtualMachineConfiguration(
                image_reference=bm.BatchVmImageReference(virtual_machine_image_id="/subscriptions/x/images/y"),
                node_agent_sku_id="batch.node.ubuntu 22.04")))
    assert info.value.status_code == 400 and info.value.error.code == "InvalidPropertyValue"
    assert [v.key for v in info.value.model.error_values] == ["PropertyName", "PropertyValue", "Reason"]


def test_add_collection_judges_each_task_but_refuses_a_malformed_one(batch_emulator: Any) -> None:
    client = BatchClient(batch_emulator.url, AzureNamedKeyCredential(batch_emulator.account_name,
                                                                     batch_emulator.account_key), retry_total=0)
    client.create_job(bm.BatchJobCreateOptions(id="coll-job", pool_info=bm.BatchPoolInfo(pool_id="nowhere")))
    result = client.create_task_collection("coll-job", bm.BatchTaskGroup(task_values=[
        bm.BatchTaskCreateOptions(id="good", command_line="true"),
        bm.BatchTaskCreateOptions(id="bad id", command_line="true")]))
    assert [(r.task_id, r.status) for r in result.result_values] == [
        ("good", bm.BatchTaskAddStatus.SUCCESS), ("bad id", bm.BatchTaskAddStatus.CLIENT_ERROR)]
    body = {"value": [{"id": "t1", "commandLine": "true", "commandLines": ["x"]}]}
    request = HttpRequest("POST", "/jobs/coll-job/addtaskcollection?api-version=2025-06-01", content=json.dumps(body),
                          headers={"Content-Type": "application/json; odata=minimalmetadata"})
    with pytest.raises(HttpResponseError) as info:
        client.send_request(request)
    assert info.value.status_code == 400 and info.value.error.code == "InvalidRequestBody"


# --- the compiled checks (schema_checks.py) against the walk they compile ---------------------------
ODD_VALUES: list[Any] = [None, 0, -1, 2**63, 1.5, True, "x", "", "PT10M", "P1D", "soon", "2025-06-01T00:00:00Z",
                         "not a date", [], {}, [1], {"a": 1}, [{}], "TaskCompletion", "tasksuccess", "bad id!",
                         "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/images/i", "a" * 1100]


def _recorded_bodies() -> list[tuple[str, Any]]:
    validator = BodyValidator()
    bodies = []
    for path in sorted((Path(__file__).resolve().parents[1] / "data" / "batch_recordings").glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        for entry in data["fixtures"] + data["entries"]:
            method, _, target = entry["call"].partition(" ")
            name = validator.definition_for(method, target.split("?")[0])
            if name and isinstance(entry.get("body"), dict):
                bodies.append((name, entry["body"]))
    sas = "http://127.0.0.1:10000/devstoreaccount1/c?sv=2025-01-05&sig=x"
    task = bm.BatchTaskCreateOptions(
        id="t1", display_name="t1", command_line="true a",
        environment_settings=[bm.EnvironmentSetting(name="K", value="v")],
        resource_files=[bm.ResourceFile(http_url=sas, file_path="in/a.txt")],
        output_files=[bm.OutputFile(file_pattern="*.out", destination=bm.OutputFileDestination(
            container=bm.OutputFileBlobContainerDestination(container_url=sas, path="out/")),
            upload_options=bm.OutputFileUploadConfiguration(upload_condition=bm.OutputFileUploadCondition.TASK_SUCCESS))],
        constraints=bm.BatchTaskConstraints(max_task_retry_count=1, max_wall_clock_time=timedelta(minutes=5)),
        exit_conditions=bm.ExitConditions(default=bm.ExitOptions(dependency_action=bm.DependencyAction.SATISFY)))
    as_json = task.as_dict(exclude_readonly=True)
    bodies += [("BatchTaskCreateOptions", as_json), ("BatchTaskGroup", {"value": [as_json, {**as_json, "id": "t2"}]})]
    return bodies


def _odd(rng: random.Random) -> Any:
    return copy.deepcopy(rng.choice(ODD_VALUES))  # a fresh copy: a later change must not reach another case


def _mutated(body: Any, rng: random.Random) -> Any:
    """``body`` with one to three random changes: a key added, dropped or given an odd value, an item replaced."""
    body = copy.deepcopy(body)
    for _ in range(rng.randint(1, 3)):
        nodes: list[Any] = []
        stack = [body]
        while stack:
            node = stack.pop()
            nodes.append(node)
            stack.extend(v for v in (node.values() if isinstance(node, dict) else node) if isinstance(v, dict | list))
        node = rng.choice(nodes)
        if isinstance(node, list):
            if node:
                node[rng.randrange(len(node))] = _odd(rng)
            else:
                node.append(_odd(rng))
        elif not node or rng.random() < 0.15:
            node[rng.choice(["zzUnknown", "odata.type", "x@odata.etag"])] = _odd(rng)
        elif rng.random() < 0.3:
            del node[rng.choice(list(node))]
        else:
            node[rng.choice(list(node))] = _odd(rng)
    return body


def _outcome(check: Any) -> tuple[Any, ...] | None:
    try:
        check()
    except BatchApiError as exc:
        return (exc.status, exc.code, exc.message, exc.values)
    return None


@pytest.mark.parametrize("rules", [RULES, {}], ids=["with rules", "structure only"])
def test_compiled_checks_refuse_exactly_what_the_walk_refuses(rules: dict[Any, Any]) -> None:
    definitions = load_schema()
    walk, compiled = SchemaWalk(definitions, rules), CompiledSchema(definitions, rules, invalid_value)
    rng = random.Random(20)
    refused = 0
    for name, body in _recorded_bodies():
        for case in [body, *(_mutated(body, rng) for _ in range(60))]:
            expected = _outcome(lambda n=name, c=case: walk.object(n, definitions[n], c, ""))
            assert _outcome(lambda n=name, c=case: compiled.check(n, c)) == expected, (name, case)
            refused += expected is not None
    assert refused > 500  # the mutations reach the checks: most cases are refused, each the same way
