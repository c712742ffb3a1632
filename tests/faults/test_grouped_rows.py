"""Promise 17: claims and results written in groups (table transactions) keep every promise.

When a worker's recent commands were short, it claims the next tasks of a message in one
transaction and holds finished results up to half a second to share one. These tests show
that a worker killed while holding such claims loses nothing and starts no command twice
but the one it was running, that a group meeting a row made by someone else falls back to
one write each without taking that task, and that a held result reaches the table while
the next, long command still runs. Real Azurite, real worker processes, real SIGKILL.

Nothing here depends on how busy the machine is: the commands that must still be running when
the test acts wait for a gate file the test opens afterwards (fault_tool's ``@PATH``), and the
workers' pace is pinned (``WorkerOptions.pace_s``), so how many tasks they claim together does
not depend on how fast the machine runs a command.
"""

from __future__ import annotations

import itertools
import json
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from batchyard.backends import get_backend
from batchyard.backends.base import TaskState
from batchyard.backends.local.admission import job_message_key
from batchyard.backends.local.messages import TaskMessage, pack
from batchyard.backends.local.pipeline import TRANSFER_BURST
from batchyard.backends.local.store import JobStore
from batchyard.backends.local.worker import Worker, WorkerOptions
from batchyard.core.job import job_from_dict
from batchyard.storage.fast_rest import FastRest

from .support import (
    drain_queue,
    gate,
    job_queue,
    kill_quietly,
    open_gate,
    runs_of,
    serve_until_idle,
    spawn_worker,
    stop_worker,
    table_job,
    tool_command,
    wait_for,
)

SHORT_PACE_S = 0.01  # the pace a worker is told its commands take: it claims up to 32 tasks at once
NEVER_S = 3600.0  # a timing knob set so far off that the event it waits for always comes first


def _one_message(be: Any, job: Any) -> list[str]:
    """Re-queue a submitted job's tasks as a single message (small jobs get one message per task)."""
    drain_queue(job_queue(be, job.id))
    tasks = be.fan_out(job)
    for message in pack(job.id, tasks, len(tasks), key=job_message_key(be.store, job.id)):
        assert isinstance(message, TaskMessage)
        be.store.send(message)
    return [t.task_id for t in tasks]


def _short_task_worker(be: Any, tmp_path: Path, *, lease_s: float, **options: Any) -> Worker:
    """An in-process worker pinned to a short pace, so it groups from its first claim on."""
    return Worker(be.storage, be.config, index=0, work_dir=tmp_path / "work",
                  options=WorkerOptions(lease_s=lease_s, idle_exit_s=1.5, pace_s=SHORT_PACE_S, **options))


def _states(be: Any, job: Any) -> dict[str, str]:
    """Each task row's state, by KEY."""
    return {_key(r["label"]): r["state"] for r in be.store.task_entities(job.id)}


def _all_final(be: Any, job: Any, total: int) -> bool:
    states = _states(be, job)
    return len(states) == total and all(s in ("succeeded", "failed") for s in states.values())


def _key(label: str) -> str:
    """The KEY of a task label like "KEY=g04, SLEEP=4.0"."""
    return label.split(",")[0].removeprefix("KEY=")


def _sleepy_job(project: Any, job_id: str, runs: Path, sleeps: dict[str, float | str]) -> Any:
    (project.dir / f"{job_id}.csv").write_text(
        "KEY,SLEEP\n" + "".join(f"{k},{s}\n" for k, s in sleeps.items()), encoding="utf-8")
    from batchyard.core.job import job_from_dict

    return job_from_dict({"id": job_id, "command": tool_command("count", str(runs), "{KEY}", "{SLEEP}", "-", "0"),
                          "tasks": f"{job_id}.csv"}, source="test", base_dir=project.dir)


def test_worker_killed_holding_claims_made_ahead_loses_nothing(project: Any, tmp_path: Path) -> None:
    runs, g04_gate = tmp_path / "runs.txt", tmp_path / "g04.gate"
    sleeps: dict[str, float | str] = {f"g{i:02d}": 0.0 for i in range(12)}
    sleeps["g04"] = gate(g04_gate)  # runs until the worker is killed; g05.. are claimed ahead, not started
    job = _sleepy_job(project, "grouped-kill", runs, sleeps)
    first = second = None
    with get_backend("local", project.config()) as be:
        be.submit(job)
        _one_message(be, job)
        try:
            first = spawn_worker(project, index=0, lease_s=2, pace_s=SHORT_PACE_S)
            wait_for(lambda: "g04" in runs_of(runs), timeout=120, what="g04 to start under worker 0")
            # The results before g04 may be held back a moment to share a write: once they are
            # written, killing the worker can cost only g04 and the claims made ahead.
            states = wait_for(lambda: (st := _states(be, job)) and all(
                st.get(f"g{i:02d}") == "succeeded" for i in range(4)) and st,
                timeout=120, what="the results of g00..g03 to be written")
            first.send_signal(signal.SIGKILL)
            assert first.wait(timeout=60) == -signal.SIGKILL
            held = {key for key, state in states.items() if state == "running"}
            assert {f"g{i:02d}" for i in range(5, 12)} <= held, f"no group was claimed ahead: {held}"
            open_gate(g04_gate)  # g04 runs again under worker 1, and may end this time
            second = spawn_worker(project, index=1, lease_s=2)
            wait_for(lambda: _all_final(be, job, 12), timeout=180, what="worker 1 to finish every task")
            assert stop_worker(project, second, 1) == 0, (project.dir / "worker-1.log").read_text()
        finally:
            open_gate(g04_gate)
            for line in runs.read_text().splitlines() if runs.exists() else []:
                kill_quietly(int(line.split()[1]))
            for proc in (first, second):
                if proc is not None:
                    kill_quietly(proc.pid)
        results = {_key(r.label): r for r in be.list_task_results(job.id)}
        assert len(list(be.store.task_entities(job.id))) == 12, "exactly one row per task"
    assert {r.state for r in results.values()} == {TaskState.SUCCEEDED}, results
    started = runs_of(runs)
    assert sorted(set(started)) == sorted(sleeps)
    assert started.count("g04") == 2, "the killed command runs again (its worker was lost)"
    twice = sorted(k for k in set(started) if started.count(k) > 1)
    assert twice == ["g04"], f"a task claimed ahead but never started ran twice: {twice}"
    for i in range(5, 12):
        attempts = results[f"g{i:02d}"].attempt_records
        assert [a["failure_category"] for a in attempts] == ["lost", None], attempts


def test_group_meeting_a_row_made_elsewhere_falls_back_and_leaves_that_task(project: Any, tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    job = _sleepy_job(project, "grouped-race", runs, {f"r{i}": 0.0 for i in range(8)})
    with get_backend("local", project.config()) as be:
        be.submit(job)
        ids = _one_message(be, job)
        other = next(t for t in be.fan_out(job) if t.task_id == ids[5])
        worker = _short_task_worker(be, tmp_path, lease_s=30)
        groups: list[tuple[int, int, bool]] = []
        real_get_tasks, real_write_group = worker.store.get_tasks, worker.store.write_group

        def get_tasks_then_race(job_id: str, task_ids: Any) -> Any:
            found = real_get_tasks(job_id, task_ids)
            # Another delivery of task 5 claims it right after our look-up: our group will meet its row.
            JobStore(be.storage, be.config).claim_new(job_id, other, owner="elsewhere:1:x", lease_s=60)
            return found

        def write_group(creates: Any, merges: Any) -> Any:
            answer = real_write_group(creates, merges)
            groups.append((len(creates), len(merges), answer is not None))
            return answer

        worker.store.get_tasks, worker.store.write_group = get_tasks_then_race, write_group  # type: ignore[method-assign]
        worker.serve(threading.Event())
        worker.close()
        rows = {r["RowKey"]: r for r in be.store.task_entities(job.id)}
    assert groups and groups[0][0] == 8 and groups[0][2] is False, f"the first group was not refused: {groups}"
    assert rows[ids[5]]["state"] == "running" and rows[ids[5]]["claim_owner"] == "elsewhere:1:x"
    assert sorted(runs_of(runs)) == [f"r{i}" for i in range(8) if i != 5], "the task claimed elsewhere ran here"
    assert all(rows[i]["state"] == "succeeded" and int(rows[i]["deliveries"]) == 1 for i in ids if i != ids[5])


def test_held_result_is_written_while_the_next_long_command_runs(project: Any, tmp_path: Path) -> None:
    runs, h3_gate = tmp_path / "runs.txt", tmp_path / "h3.gate"
    sleeps: dict[str, float | str] = {"h0": 0.0, "h1": 0.0, "h2": 0.0, "h3": gate(h3_gate)}
    job = _sleepy_job(project, "grouped-held", runs, sleeps)
    with get_backend("local", project.config()) as be:
        be.submit(job)
        _one_message(be, job)
        worker = spawn_worker(project, index=0, lease_s=5, pace_s=SHORT_PACE_S)
        try:
            wait_for(lambda: "h3" in runs_of(runs), timeout=120, what="the long command to start")
            # h3 runs until the gate opens: the short tasks' results, held back to share a write,
            # must not wait for it.
            wait_for(lambda: all(_states(be, job).get(k) == "succeeded" for k in ("h0", "h1", "h2")),
                     timeout=120, what="the short tasks' results, written while h3 runs")
            assert _states(be, job)["h3"] == "running"
            open_gate(h3_gate)
            wait_for(lambda: _all_final(be, job, 4), timeout=120, what="h3 to finish")
            assert stop_worker(project, worker, 0) == 0, (project.dir / "worker-0.log").read_text()
        finally:
            open_gate(h3_gate)
            kill_quietly(worker.pid)
        assert be.task_counts(job.id).succeeded == 4
    assert sorted(runs_of(runs)) == sorted(sleeps)


def test_tiny_tasks_in_one_message_share_transactions(project: Any, tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    keys = [f"t{i:02d}" for i in range(30)]
    job = table_job(project, "grouped-tiny", tool_command("count", str(runs), "{KEY}", "0", "-", "0"), keys)
    with get_backend("local", project.config()) as be:
        be.submit(job)
        _one_message(be, job)
        sizes: list[tuple[int, int]] = []
        real = JobStore.write_group

        def counting(self: JobStore, creates: Any, merges: Any) -> Any:
            sizes.append((len(creates), len(merges)))
            return real(self, creates, merges)

        JobStore.write_group = counting  # type: ignore[method-assign]
        try:  # results wait for others (up to a group of 32) however long the commands take
            worker = serve_until_idle(be, tmp_path, lease_s=10, pace_s=SHORT_PACE_S, record_delay_s=NEVER_S)
        finally:
            JobStore.write_group = real  # type: ignore[method-assign]
        rows = list(be.store.task_entities(job.id))
    assert worker.tasks_run == 30
    assert sorted(runs_of(runs)) == keys
    assert len(rows) == 30 and all(r["state"] == "succeeded" and int(r["attempt_count"]) == 1 for r in rows)
    claimed_in_groups = sum(c for c, _ in sizes)
    recorded_in_groups = sum(m for _, m in sizes)
    assert claimed_in_groups >= 20 and recorded_in_groups >= 20, f"writes were not grouped: {sizes}"
    assert len(sizes) <= 15, f"{len(sizes)} transactions for 30 tasks"
    for row in rows:  # a claim made ahead is not the start: the row says when the command started
        attempt = json.loads(row["attempts_json"])[0]
        assert row["started_at"] == attempt["started_at"]
    # One slot, one command at a time: staging ahead and uploading behind do not make its attempts
    # overlap on the timeline (the report would draw a second lane for the slot).
    spans = sorted((a["started_at"], a["ended_at"]) for r in rows for a in json.loads(r["attempts_json"]))
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans)), spans


def test_cancel_while_claims_are_held_records_them_cancelled_unrun(project: Any, tmp_path: Path) -> None:
    runs, c3_gate = tmp_path / "runs.txt", tmp_path / "c3.gate"
    sleeps: dict[str, float | str] = {f"c{i}": 0.0 for i in range(10)}
    sleeps["c3"] = gate(c3_gate)  # runs until the job is cancelled (the gate opens only at the end)
    job = _sleepy_job(project, "grouped-cancel", runs, sleeps)
    with get_backend("local", project.config()) as be:
        be.submit(job)
        _one_message(be, job)
        worker = spawn_worker(project, index=0, lease_s=2, pace_s=SHORT_PACE_S)
        try:
            wait_for(lambda: "c3" in runs_of(runs), timeout=120, what="c3 to start")
            held = {k for k, state in _states(be, job).items() if state == "running"}
            assert {f"c{i}" for i in range(4, 10)} <= held, f"no group was claimed ahead: {held}"
            be.cancel(job.id)
            wait_for(lambda: _all_final(be, job, 10), timeout=120, what="every task to be final after the cancel")
            assert stop_worker(project, worker, 0) == 0, (project.dir / "worker-0.log").read_text()
        finally:
            open_gate(c3_gate)
            for line in runs.read_text().splitlines() if runs.exists() else []:
                kill_quietly(int(line.split()[1]))
            kill_quietly(worker.pid)
        results = {_key(r.label): r for r in be.list_task_results(job.id)}
        assert be.task_counts(job.id).finished
    assert sorted(runs_of(runs)) == ["c0", "c1", "c2", "c3"], "a task claimed ahead ran after the cancel"
    assert {k: r.state for k, r in results.items() if k in ("c0", "c1", "c2")} == dict.fromkeys(
        ("c0", "c1", "c2"), TaskState.SUCCEEDED)
    for key in [f"c{i}" for i in range(3, 10)]:
        assert (results[key].state, results[key].failure_category) == (TaskState.CANCELLED, "cancelled"), results[key]


def test_held_results_meeting_a_taken_over_row_write_the_others_and_leave_it(project: Any, tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    job = _sleepy_job(project, "grouped-taken", runs, {f"m{i}": 0.0 for i in range(6)})
    with get_backend("local", project.config()) as be:
        be.submit(job)
        ids = _one_message(be, job)
        # Results wait for the message's end to share one transaction, however long the commands take.
        worker = _short_task_worker(be, tmp_path, lease_s=30, record_delay_s=NEVER_S)
        other = JobStore(be.storage, be.config)
        real_write_group = worker.store.write_group
        refused: list[int] = []

        def write_group(creates: Any, merges: Any) -> Any:
            # The first group holding task 2's result: task 2 was taken over by another worker meanwhile.
            taken = not refused and any(update["RowKey"] == ids[2] for update, _ in merges)
            if taken:
                row = other.get_task(job.id, ids[2])
                assert row is not None
                other.claim(row, owner="elsewhere:2:y", lease_s=60, attempts=[])
            answer = real_write_group(creates, merges)
            if taken:
                refused.append(len(merges))
                assert answer is None, "a transaction with a stale ETag was accepted"
            return answer

        worker.store.write_group = write_group  # type: ignore[method-assign]
        worker.serve(threading.Event())
        worker.close()
        rows = {r["RowKey"]: r for r in be.store.task_entities(job.id)}
    assert refused and refused[0] >= 2, f"results were not grouped: {refused}"
    assert rows[ids[2]]["state"] == "running" and rows[ids[2]]["claim_owner"] == "elsewhere:2:y", \
        "the result of a task another worker took over was written over its claim"
    assert all(rows[i]["state"] == "succeeded" for i in ids if i != ids[2]), {i: rows[i]["state"] for i in ids}


def test_claims_made_ahead_are_renewed_together_while_a_long_command_runs(project: Any, tmp_path: Path) -> None:
    runs, n2_gate = tmp_path / "runs.txt", tmp_path / "n2.gate"
    sleeps: dict[str, float | str] = {f"n{i}": 0.0 for i in range(8)}
    sleeps["n2"] = gate(n2_gate)  # runs until every claim the worker holds was renewed, in one transaction
    job = _sleepy_job(project, "grouped-renew", runs, sleeps)
    with get_backend("local", project.config()) as be:
        be.submit(job)
        _one_message(be, job)
        # A lease long enough that a keeper delayed by a busy machine still renews in time.
        worker = _short_task_worker(be, tmp_path, lease_s=6)
        renewals: list[int] = []
        real_renew_claims = worker.store.renew_claims

        def renew_claims(job_id: str, held: Any, *, lease_s: float) -> Any:
            renewals.append(len(held))
            return real_renew_claims(job_id, held, lease_s=lease_s)

        worker.store.renew_claims = renew_claims  # type: ignore[method-assign]
        serving = threading.Thread(target=worker.serve, args=(threading.Event(),))
        serving.start()
        try:
            wait_for(lambda: "n2" in runs_of(runs), timeout=120, what="n2 to start")
            rows = {_key(r["label"]): r for r in be.store.task_entities(job.id)}
            claimed = {f"n{i}": float(rows[f"n{i}"]["claim_expires"]) for i in range(2, 8)
                       if rows.get(f"n{i}", {}).get("state") == "running"}
            assert len(claimed) == 6, f"not claimed ahead: {sorted(claimed)}"
            renewals.clear()  # from here on, while n2 runs: n2 and the five claimed ahead are held

            def renewed() -> bool:
                rows = {_key(r["label"]): r for r in be.store.task_entities(job.id)}
                return bool(renewals) and all(float(rows[k]["claim_expires"]) > claimed[k] for k in claimed)

            wait_for(renewed, timeout=120, what="the claims held while n2 runs to be renewed")
        finally:
            open_gate(n2_gate)
            serving.join(timeout=120)
            worker.close()
        results = list(be.list_task_results(job.id))
        rows_after = list(be.store.task_entities(job.id))
    assert max(renewals) >= 6, f"claims were renewed one by one: {renewals}"
    assert sorted(runs_of(runs)) == sorted(sleeps)
    assert all(r.state == TaskState.SUCCEEDED and r.attempts == 1 for r in results), results
    assert all(int(r["deliveries"]) == 1 for r in rows_after)


@pytest.mark.fast_path
def test_tiny_tasks_stage_inputs_and_upload_outputs_in_bursts(project: Any, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    inputs, outputs = project.container("inputs"), project.container("outputs")
    files = {f"f{i:02d}.txt": f"payload {i}\n".encode() for i in range(24)}
    project.put_inputs(inputs, files)
    job = job_from_dict({"id": "bursts", "command": "cp {input} {input_stem}.out", "inputs": {"container": inputs},
                         "outputs": [{"pattern": "*.out", "container": outputs, "path": "out/"}]},
                        source="test", base_dir=project.dir)
    bursts: dict[str, list[int]] = {"get_first_many": [], "put_blob_many": []}
    for name, sizes in bursts.items():
        real = getattr(FastRest, name)

        def counting(self: FastRest, items: list[Any], *args: Any, _real: Any = real, _sizes: list[int] = sizes) -> Any:
            _sizes.append(len(items))
            return _real(self, items, *args)

        monkeypatch.setattr(FastRest, name, counting)
    with get_backend("local", project.config()) as be:
        be.submit(job)
        _one_message(be, job)
        # Finished outputs wait for the command running (however long it takes) to gather a burst.
        worker = _short_task_worker(be, tmp_path, lease_s=10, upload_hold_s=NEVER_S)
        worker.serve(threading.Event())
        worker.close()
        rows = list(be.store.task_entities(job.id))
    assert worker.tasks_run == 24
    assert len(rows) == 24 and all(r["state"] == "succeeded" and int(r["attempt_count"]) == 1 for r in rows)
    for kind, sizes in bursts.items():  # most tasks' transfers went in bursts of up to TRANSFER_BURST
        assert sum(sizes) >= 16 and max(sizes) == TRANSFER_BURST, (kind, sizes)
    for name, data in files.items():
        assert project.storage.download_bytes(outputs, f"out/{name.removesuffix('.txt')}.out") == data
