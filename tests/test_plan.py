"""`batchyard plan`: the dry run lists tasks, uploads and outputs, finds what would fail on Azure
Batch, and forecasts time and cost. Most tests need no storage at all (a plan never starts Azurite)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchyard.analysis.plan import check_chunks, check_task_ids, make_plan
from batchyard.cli.plan import plan as plan_command
from batchyard.core.config import load_config
from batchyard.core.findings import Finding
from batchyard.core.image_registries import image_host

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "uppercase" / "job.toml"


def offline_config(tmp_path: Path, text: str = ""):
    (tmp_path / "batchyard.toml").write_text(text, encoding="utf-8")
    return load_config(tmp_path / "batchyard.toml", env={"BATCHYARD_HOME": str(tmp_path / "home")})


def write_job(tmp_path: Path, body: str, *, inputs: dict[str, str] | None = None) -> Path:
    folder = tmp_path / "job"
    (folder / "in").mkdir(parents=True, exist_ok=True)
    for name, text in (inputs or {"a.txt": "a", "b.txt": "b"}).items():
        (folder / "in" / name).write_text(text, encoding="utf-8")
    (folder / "job.toml").write_text(body, encoding="utf-8")
    return folder / "job.toml"


BASE = """id = "crafted"
command = "python3 run.py {input} {input_stem}.out"
[inputs]
container = "in-data"
local_dir = "in"
"""


def codes(plan) -> set[str]:
    return {f.code for f in plan.findings}


def test_example_job_plan_lists_tasks_findings_and_forecast(tmp_path: Path) -> None:
    result = make_plan(EXAMPLE, offline_config(tmp_path), show=3)
    assert result.job_id == "uppercase" and result.tasks == 20
    first = result.sample[0]
    assert first["argv"][:2] == ["python3", "upper.py"] and first["argv"][2].endswith(".txt")
    assert result.uploads["local_dir"]["files"] == 20
    assert result.uploads["resource_files"][0]["blob"] == "jobs/uppercase/resources/upper.py"
    assert result.outputs[0]["first_task_prefix"] == "uppercase/"
    assert not result.has_errors
    assert "job-quota" in codes(result)
    assert result.forecast["previous_run"] == "no previous run"
    assert result.forecast["usd_per_node_hour"] == pytest.approx(0.096)


def test_plan_command_text_and_json(tmp_path: Path) -> None:
    offline_config(tmp_path)
    runner = CliRunner()
    env = {"BATCHYARD_HOME": str(tmp_path / "home"), "AZURE_STORAGE_CONNECTION_STRING": "",
           "BATCHYARD_BACKEND": ""}
    text = runner.invoke(plan_command, [str(EXAMPLE), "--config", str(tmp_path / "batchyard.toml")], env=env)
    assert text.exit_code == 0, text.output
    for expected in ("tasks: 20", 'argv ["python3", "upper.py"', "findings", "forecast on Azure Batch",
                     "no previous run", "assumptions"):
        assert expected in text.output
    js = runner.invoke(plan_command, [str(EXAMPLE), "--json", "--config", str(tmp_path / "batchyard.toml")], env=env)
    data = json.loads(js.output)
    assert data["tasks"] == 20 and data["forecast"]["vm_size"] == "standard_d2s_v3"
    assert all({"severity", "code", "message", "fix"} <= set(f) for f in data["findings"])


def test_invalid_output_patterns_are_findings(tmp_path: Path) -> None:
    for pattern in ("/etc/passwd", "../up.txt"):
        job = write_job(tmp_path, BASE + f'[[outputs]]\npattern = "{pattern}"\ncontainer = "out-data"\n')
        result = make_plan(job, offline_config(tmp_path))
        assert result.has_errors and "job-invalid" in codes(result)
        assert any("outputs.0.pattern" in f.message for f in result.findings)


def test_output_patterns_that_cannot_match(tmp_path: Path) -> None:
    outputs = "".join(f'[[outputs]]\npattern = "{p}"\ncontainer = "out-data"\n'
                      for p in ("results/", "{input_stem}.out", "summary.json", "*.txt", "*.out"))
    result = make_plan(write_job(tmp_path, BASE + outputs), offline_config(tmp_path))
    by_pattern = {f.message.split("'")[1]: f.code for f in result.findings
                  if f.code.startswith("output-") and f.code != "output-collision"}
    assert by_pattern == {"results/": "output-directory", "{input_stem}.out": "output-placeholder",
                          "summary.json": "output-unmentioned", "*.txt": "output-matches-input"}
    # Those without a wildcard name one blob, the same for every task under the default path.
    (clash,) = [f for f in result.findings if f.code == "output-collision"]
    assert clash.severity == "error" and clash.message.startswith("outputs.1: tasks ")


def test_task_id_rules() -> None:
    found = check_task_ids(["x" * 65, "abc-1", "ABC-1", "dup", "dup"])
    assert [f.code for f in found] == ["task-id-too-long", "task-id-collision", "task-id-collision"]
    assert all(f.severity == "error" and f.fix for f in found)


def test_chunk_rules() -> None:
    assert {f.code for f in check_chunks([100] * 150, chunk=150)} == {"chunk-too-many-tasks"}
    assert {f.code for f in check_chunks([20_000] * 100)} == {"chunk-too-large"}
    assert "task-too-large" in {f.code for f in check_chunks([2_000_000])}
    assert check_chunks([3_000] * 250) == []


def test_big_csv_rows_exceed_the_add_collection_limit(tmp_path: Path) -> None:
    folder = tmp_path / "sweep"
    folder.mkdir()
    rows = "\n".join(f"{i},{'v' * 15_000}" for i in range(120))
    (folder / "p.csv").write_text(f"n,blob\n{rows}\n", encoding="utf-8")
    (folder / "job.toml").write_text('id = "sweep"\ncommand = "echo {n}"\ntasks = "p.csv"\n', encoding="utf-8")
    result = make_plan(folder / "job.toml", offline_config(tmp_path))
    assert result.tasks == 120 and "chunk-too-large" in codes(result)


def test_environment_limits(tmp_path: Path) -> None:
    big = "x" * (130 * 1024)
    env = "[environment]\n" + f'BIG = "{big}"\n' + "".join(f'V{i} = "{"y" * 120_000}"\n' for i in range(20))
    result = make_plan(write_job(tmp_path, BASE + env), offline_config(tmp_path))
    assert {"env-value-too-long", "environment-too-large"} <= codes(result)


def test_sas_expiry_shorter_than_the_queue(tmp_path: Path) -> None:
    inputs = {f"f{i}.txt": str(i) for i in range(10)}
    job = write_job(tmp_path, BASE + '[constraints]\nmax_wall_clock_time = "1h"\nmax_task_retry_count = 1\n',
                    inputs=inputs)
    result = make_plan(job, offline_config(tmp_path))
    sas = [f for f in result.findings if f.code == "sas-expiry"]
    assert sas and "sas_margin" in sas[0].fix
    roomy = make_plan(job, offline_config(tmp_path, '[azure]\nsas_margin = "12h"\n'))
    assert "sas-expiry" not in codes(roomy)
    unlimited = make_plan(write_job(tmp_path, BASE), offline_config(tmp_path))
    assert "sas-long-lived" in codes(unlimited)


def test_pool_that_cannot_run_tasks(tmp_path: Path) -> None:
    job = write_job(tmp_path, BASE)
    empty = make_plan(job, offline_config(tmp_path, "[azure.pool]\ndedicated_nodes = 0\n"))
    assert "pool-no-slots" in codes(empty)
    crowded = make_plan(job, offline_config(tmp_path, "[azure.pool]\ntask_slots_per_node = 16\n"))
    assert "pool-slots-over-limit" in codes(crowded)


def test_active_job_quota(tmp_path: Path) -> None:
    job = write_job(tmp_path, BASE)
    full = make_plan(job, offline_config(tmp_path), active_jobs=100, durations=[])
    assert any(f.code == "job-quota" and f.severity == "error" for f in full.findings)
    zero = make_plan(job, offline_config(tmp_path, "[azure]\nactive_job_quota = 0\n"))
    assert any(f.code == "job-quota" and f.severity == "error" for f in zero.findings)
    roomy = make_plan(job, offline_config(tmp_path), active_jobs=3, durations=[])
    assert "job-quota" not in codes(roomy)


def test_forecast_from_durations_and_configured_prices(tmp_path: Path) -> None:
    job = write_job(tmp_path, BASE, inputs={f"f{i}.txt": "x" for i in range(8)})
    config = offline_config(tmp_path, "[azure.pool]\nvm_size = \"custom_size\"\ndedicated_nodes = 2\n"
                                      "task_slots_per_node = 2\n[azure.prices]\ncustom_size = 1.5\n")
    result = make_plan(job, config, durations=[60.0] * 8, active_jobs=0)
    fc = result.forecast
    assert fc["slots"] == 4 and fc["price_source"] == "[azure.prices] in config"
    # 5 min node allocation, then 8 tasks of 60 s + 2 s Batch overhead on 4 slots
    assert fc["wall_time_s"] == pytest.approx(300 + 8 * 62 / 4)
    assert fc["cost_usd"] == pytest.approx(2 * 1.5 * (424 / 3600), rel=1e-3)


def test_the_forecast_counts_allocation_and_batch_overhead_and_the_sas_advice_follows_it(tmp_path: Path) -> None:
    """2,000 tiny tasks on one slot: minutes of allocation and seconds per task, not '5m10s', and the
    sas_margin the plan asks for is the forecast's wait for the last task, not 2,000 x max_wall_clock_time."""
    from batchyard.analysis.forecast import hms

    tasks = 2000
    job = write_job(tmp_path, BASE + '[constraints]\nmax_wall_clock_time = "1m"\nmax_task_retry_count = 0\n',
                    inputs={f"f{i}.txt": "x" for i in range(tasks)})
    durations = [0.01] * tasks
    result = make_plan(job, offline_config(tmp_path), durations=durations, active_jobs=0)
    fc = result.forecast
    assert fc["node_allocation_s"] == 300 and fc["task_overhead_s"] == pytest.approx(tasks * 2.0)
    assert fc["wall_time_s"] == pytest.approx(300 + tasks * 2.01, abs=0.1)
    assert fc["last_task_start_s"] == pytest.approx(300 + (tasks - 1) * 2.01, abs=0.1)
    (sas,) = [f for f in result.findings if f.code == "sas-expiry"]
    assert f"at least {hms(-(-fc['last_task_start_s'] // 1))}" in sas.fix, sas.fix
    assert "as forecast" in sas.message and f"starts {hms(fc['last_task_start_s'])} after submit" in sas.message
    enough = make_plan(job, offline_config(tmp_path, '[azure]\nsas_margin = "75m"\n'), durations=durations,
                       active_jobs=0)
    assert "sas-expiry" not in codes(enough)
    # Without a previous run, the worst case (every task runs for max_wall_clock_time), said as such.
    (worst,) = [f for f in make_plan(job, offline_config(tmp_path), active_jobs=0).findings if f.code == "sas-expiry"]
    assert "at worst" in worst.message


def test_previous_local_run_feeds_the_forecast(project) -> None:
    container = project.container("inputs")
    out = project.container("outputs")
    project.put_inputs(container, {"one.txt": b"1", "two.txt": b"2"})
    (project.dir / "job.toml").write_text(
        f'id = "prev-{project.uid}"\ncommand = "{sys.executable} -c \\"import shutil,sys; '
        f'shutil.copy(sys.argv[1], sys.argv[2])\\" {{input}} {{input_stem}}.out"\n'
        f'[inputs]\ncontainer = "{container}"\n[[outputs]]\npattern = "*.out"\ncontainer = "{out}"\n',
        encoding="utf-8")
    ran = project.cli("run", "job.toml")
    assert ran.returncode == 0, ran.stderr
    result = make_plan(project.dir / "job.toml", project.config(), durations=None, active_jobs=0)
    assert result.tasks == 2
    assert result.forecast["previous_run"].startswith(f"previous run of prev-{project.uid} on local: 2 tasks")
    assert result.forecast["wall_time_s"] is not None and result.forecast["cost_usd"] is not None


REGISTRIES = """[[azure.container_registries]]
server = "myregistry.azurecr.io"
username = "myregistry"
password_env = "MYREGISTRY_PASSWORD"
[[azure.container_registries]]
server = "byid.azurecr.io"
identity_resource_id = "/subscriptions/0/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/x"
"""


def test_image_hosts_follow_docker_reference_rules() -> None:
    hosts = {image: image_host(image) for image in (
        "python:3.12", "library/python", "myorg/app:1", "index.docker.io/myorg/app", "localhost/app",
        "localhost:5000/app", "MyRegistry.azurecr.io/tools/app@sha256:" + "0" * 64, "mcr.microsoft.com/dotnet/sdk:8.0")}
    assert hosts == {"python:3.12": "docker.io", "library/python": "docker.io", "myorg/app:1": "docker.io",
                     "index.docker.io/myorg/app": "docker.io", "localhost/app": "localhost",
                     "localhost:5000/app": "localhost:5000",
                     "MyRegistry.azurecr.io/tools/app@sha256:" + "0" * 64: "myregistry.azurecr.io",
                     "mcr.microsoft.com/dotnet/sdk:8.0": "mcr.microsoft.com"}


def test_container_registry_findings(tmp_path: Path) -> None:
    (tmp_path / "batchyard.toml").write_text(REGISTRIES, encoding="utf-8")

    def registry_findings(image: str | None, *, password: bool = True, extra: str = "") -> dict[str, Finding]:
        if extra:
            (tmp_path / "batchyard.toml").write_text(extra + REGISTRIES, encoding="utf-8")
        env = {"BATCHYARD_HOME": str(tmp_path / "home")}
        if password:
            env["MYREGISTRY_PASSWORD"] = "a-registry-password-0123456789"
        config = load_config(tmp_path / "batchyard.toml", env=env)
        body = BASE.replace("[inputs]", f'container_image = "{image}"\n[inputs]') if image else BASE
        result = make_plan(write_job(tmp_path, body), config, active_jobs=0, durations=[])
        return {f.code: f for f in result.findings if f.code.startswith("registry-")}

    assert registry_findings("myregistry.azurecr.io/tools/app:1") == {}
    for public in ("python:3.12-slim", "myorg/tool:2", "mcr.microsoft.com/azurelinux/base/python:3"):
        assert registry_findings(public) == {}, public
    unknown = registry_findings("ghcr.io/someone/tool:1")["registry-not-configured"]
    assert unknown.severity == "warning" and "ghcr.io" in unknown.message and 'server = "ghcr.io"' in unknown.fix
    missing = registry_findings("myregistry.azurecr.io/tools/app:1", password=False)["registry-password-missing"]
    assert missing.severity == "error" and "azure.container_registries.0.password_env" in missing.message
    assert "MYREGISTRY_PASSWORD" in missing.fix
    assert registry_findings(None, password=False) == {}, "a job without an image needs no registry"
    identity = registry_findings("byid.azurecr.io/app:1")["registry-identity-needs-pool"]
    assert identity.severity == "error" and "pool_id" in identity.fix
    assert registry_findings("byid.azurecr.io/app:1", extra='[azure]\npool_id = "made-with-arm"\n') == {}


def test_a_piped_plan_keeps_each_command_line_and_path_whole(tmp_path: Path) -> None:
    """Piped to a file or a pager, a long command line or file name is one line, as written, so it
    can be searched for and copied (the console's width is no reason to cut it)."""
    import subprocess

    long_name = "a-" + "very-long-name-" * 12 + ".txt"
    command = "python3 run.py --with-a-long-option " + " ".join(f"--flag-{i}=value-{i}" for i in range(14)) + \
        " {input} {input_stem}.out"
    job = write_job(tmp_path, BASE.replace('"python3 run.py {input} {input_stem}.out"', json.dumps(command)),
                    inputs={long_name: "x"})
    offline_config(tmp_path)
    env = {**__import__("os").environ, "BATCHYARD_HOME": str(tmp_path / "home"),
           "AZURE_STORAGE_CONNECTION_STRING": "", "BATCHYARD_BACKEND": "", "COLUMNS": "80"}
    shown = subprocess.run([sys.executable, "-m", "batchyard", "plan", str(job), "--config",
                            str(tmp_path / "batchyard.toml")], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=120)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    lines = shown.stdout.splitlines()
    (command_line,) = [line for line in lines if "run.py --with-a-long-option" in line and "argv" not in line]
    assert len(command_line) > 160 and "--flag-13=value-13" in command_line, shown.stdout
    assert command_line.endswith(long_name[:-4] + ".out"), command_line
    (upload,) = [line for line in lines if line.endswith(f"in/{long_name} -> {long_name}")]
    assert len(upload) > 160, upload


def test_plan_says_run_would_refuse_a_job_id_that_differs_only_in_case(project) -> None:
    """`run` refuses a job id equal to an existing job's without case; `plan` says so as an error, and reads
    none of that job's records as this one's (no "previous run", no records to compare)."""
    (project.dir / "rows.csv").write_text("KEY\nk1\n", encoding="utf-8")
    job_id = f"case-{project.uid}"
    (project.dir / "job.toml").write_text(f'id = "{job_id}"\ncommand = "true {{KEY}}"\ntasks = "rows.csv"\n',
                                          encoding="utf-8")
    assert project.cli("run", "job.toml").returncode == 0
    (project.dir / "upper.toml").write_text(f'id = "{job_id.upper()}"\ncommand = "true {{KEY}}"\ntasks = "rows.csv"\n',
                                            encoding="utf-8")
    planned = project.cli("plan", "upper.toml", "--json")
    assert planned.returncode == 1, planned.stdout + planned.stderr
    data = json.loads(planned.stdout)
    (finding,) = [f for f in data["findings"] if f["code"] == "job-id-case"]
    assert finding["severity"] == "error" and f"the existing job '{job_id}'" in finding["message"], finding
    assert data["rerun"] is None and data["forecast"]["previous_run"] == "no previous run", data["forecast"]
    refused = project.cli("run", "upper.toml")
    assert refused.returncode == 2 and "differ only in case" in refused.stderr, refused.stderr
    unknown = json.loads(project.cli("plan", "job.toml", "--json", "--rerun", "nope").stdout)
    (bad,) = [f for f in unknown["findings"] if f["code"] == "rerun-unknown-task"]
    assert "--rerun ids of the job's tasks" in bad["fix"], bad


def test_a_forecast_of_nothing_to_run_says_whether_a_final_step_may_still_run(tmp_path: Path) -> None:
    from batchyard.analysis.forecast import forecast
    from batchyard.analysis.plan import Plan
    from batchyard.cli.plan import render

    config = offline_config(tmp_path)
    for final_step, said in ((False, "nothing would run: every task is kept"),
                             (True, "no per-file task would run: every one is kept from the previous run; the final "
                                    "step still runs if it is due")):
        fc = forecast(config, tasks=0, total=3, durations=[1.0], previous="previous run", final_step=final_step)
        assert (fc["wall_time_s"], fc["cost_usd"], fc["final_step"]) == (0.0, 0.0, final_step)
        assert fc["assumptions"][0].startswith("0 of the job's 3 tasks run")
        plan = Plan(job_file="job.toml", job_id="kept", backend="azure", tasks=3, forecast=fc)
        runner = CliRunner()
        with runner.isolation() as (out, _err, *_):
            render(plan)
        assert said in out.getvalue().decode(), out.getvalue().decode()


def test_a_plan_whose_reader_goes_away_exits_141_not_1(tmp_path: Path) -> None:
    """`batchyard plan job.toml | head`: the closed pipe ends it as SIGPIPE would (141), never with exit code 1,
    which means an error finding, and with no traceback."""
    import os
    import subprocess

    job = write_job(tmp_path, BASE, inputs={f"input-{i:04d}-{'x' * 60}.txt": "x" for i in range(600)})
    offline_config(tmp_path)
    env = {**os.environ, "BATCHYARD_HOME": str(tmp_path / "home"), "AZURE_STORAGE_CONNECTION_STRING": "",
           "BATCHYARD_BACKEND": ""}
    whole = subprocess.run([sys.executable, "-m", "batchyard", "plan", str(job), "--show", "1000", "--config",
                            str(tmp_path / "batchyard.toml")], capture_output=True, env=env, timeout=120)
    assert whole.returncode == 0 and len(whole.stdout) > 2 * 65536, (whole.returncode, len(whole.stdout))
    piped = subprocess.Popen([sys.executable, "-m", "batchyard", "plan", str(job), "--show", "1000", "--config",
                              str(tmp_path / "batchyard.toml")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=env)
    assert piped.stdout is not None and piped.stderr is not None
    assert piped.stdout.read(100)  # what `head` reads, then it goes away
    piped.stdout.close()
    said = piped.stderr.read().decode()
    assert piped.wait(timeout=120) == 141 and "Traceback" not in said, said
