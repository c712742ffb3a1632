"""Issue #17, point 2: jobs side by side on the local backend.

Each job's messages are on a queue of its own (batchyard/backends/local/job_queues.py). ``run y``
runs only y's tasks while x's wait untouched; ``worker --job`` serves only the jobs named and
``worker`` every job, round-robin; ``delete`` leaves no message of the job; a message of a job
deleted meanwhile is dropped without a warning; another configuration's messages (another
``table_prefix`` on the same ``[storage] queue``) are never received, let alone poisoned.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from batchyard.backends import get_backend
from batchyard.backends.local.job_queues import job_queue_name
from batchyard.backends.local.store import StorageLostError
from batchyard.backends.local.worker import Worker, WorkerOptions
from batchyard.core.config import load_config
from batchyard.core.job import load_job

from .support import drain_queue, job_queue, queued, runs_of, serve_until_idle, tool_command

pytestmark = pytest.mark.timeout(300)


def _job_file(project: Any, job_id: str, runs: Path, count: int, *, folder: Path | None = None) -> Path:
    """A job file of ``count`` tasks, each appending ``<job_id>-<i>`` to ``runs`` when it runs."""
    folder = folder or project.dir
    (folder / f"{job_id}.csv").write_text("KEY\n" + "".join(f"{job_id}-{i}\n" for i in range(count)),
                                          encoding="utf-8")
    command = tool_command("count", str(runs), "{KEY}", "0", "-", "0")
    path = folder / f"{job_id}.toml"
    path.write_text(f'id = "{job_id}"\ncommand = {command!r}\ntasks = "{job_id}.csv"\n', encoding="utf-8")
    return path


def _ran(runs: Path, job_id: str) -> list[str]:
    return [key for key in runs_of(runs) if key.startswith(f"{job_id}-")]


def _job_queue_names(be: Any) -> list[str]:
    """Every queue of this configuration's jobs (the poison queue aside)."""
    return [q.name for q in be.storage.queue_service.list_queues(name_starts_with=f"{be.store.queue_name}-")
            if q.name != be.store.poison_queue_name]


def test_run_runs_only_its_job_while_anothers_messages_wait(project: Any, tmp_path: Path) -> None:
    """The issue's case: x (30 tasks) submitted with --no-wait, then ``run y``: only y's tasks run,
    and x's messages were never even received (dequeue count 0), all 30 tasks still pending."""
    runs = tmp_path / "runs.txt"
    submitted = project.cli("run", str(_job_file(project, "x", runs, 30)), "--no-wait")
    assert submitted.returncode == 0, submitted.stderr
    assert "batchyard worker --job x" in submitted.stderr, submitted.stderr
    ran = project.cli("run", str(_job_file(project, "y", runs, 6)), "--workers", "2")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert sorted(_ran(runs, "y")) == sorted(f"y-{i}" for i in range(6))
    assert _ran(runs, "x") == [], "run y ran tasks of job x"
    with get_backend("local", project.config()) as be:
        counts = be.task_counts("x")
        assert (counts.pending, counts.total) == (30, 30), counts
        waiting = job_queue(be, "x").peek_messages(max_messages=32)
        assert waiting and {m.dequeue_count for m in waiting} == {0}, "x's messages were received by y's run"
        assert queued(be, "y") == 0
        assert drain_queue(be.store.poison_queue) == []


def test_worker_job_serves_only_the_jobs_named(project: Any, tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    for job_id in ("alpha", "beta", "gamma"):
        assert project.cli("run", str(_job_file(project, job_id, runs, 3)), "--no-wait").returncode == 0
    unknown = project.cli("worker", "--job", "nosuchjob", "--idle-exit", "1")
    assert unknown.returncode != 0 and "nosuchjob" in unknown.stderr, unknown.stderr
    # Ids are compared without case: --job ALPHA is alpha.
    served = project.cli("worker", "--job", "ALPHA", "--job", "gamma", "--workers", "1", "--idle-exit", "3")
    assert served.returncode == 0, served.stderr
    assert "job(s) alpha, gamma" in served.stderr, served.stderr
    assert sorted(_ran(runs, "alpha")) == ["alpha-0", "alpha-1", "alpha-2"]
    assert sorted(_ran(runs, "gamma")) == ["gamma-0", "gamma-1", "gamma-2"]
    assert _ran(runs, "beta") == []
    with get_backend("local", project.config()) as be:
        assert be.task_counts("beta").pending == 3
    everything = project.cli("worker", "--workers", "1", "--idle-exit", "3")
    assert everything.returncode == 0, everything.stderr
    assert sorted(_ran(runs, "beta")) == ["beta-0", "beta-1", "beta-2"]
    assert len(runs_of(runs)) == 9, "a task ran twice"


def test_a_worker_serving_every_job_takes_them_in_turn(project: Any, tmp_path: Path) -> None:
    """Round-robin by message, jobs in the order they were created: one worker, two jobs of three
    one-task messages each, submitted before it starts, runs them p, q, p, q, p, q."""
    runs = tmp_path / "runs.txt"
    with get_backend("local", project.config()) as be:
        for job_id in ("p", "q"):
            be.submit(load_job(_job_file(project, job_id, runs, 3)))
        worker = serve_until_idle(be, tmp_path, lease_s=10)
    assert worker.tasks_run == 6
    assert [key.split("-")[0] for key in runs_of(runs)] == ["p", "q", "p", "q", "p", "q"], runs_of(runs)


def test_delete_leaves_no_message_of_the_job(project: Any, tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    with get_backend("local", project.config()) as be:
        be.submit(load_job(_job_file(project, "kept", runs, 5)))
        be.submit(load_job(_job_file(project, "gone", runs, 40)))
        gone_queue = job_queue(be, "gone").queue_name
        assert queued(be, "gone") > 0 and len(_job_queue_names(be)) == 2
    deleted = project.cli("delete", "gone")
    assert deleted.returncode == 0, deleted.stderr
    with get_backend("local", project.config()) as be:
        assert _job_queue_names(be) == [job_queue(be, "kept").queue_name], "the job's queue is still there"
        assert gone_queue not in _job_queue_names(be)
        assert queued(be, "kept") == 5, "delete touched another job's messages"
        assert drain_queue(be.store.poison_queue) == []
        # The same id submitted again gets a queue of its own, and only its new messages.
        be.submit(load_job(_job_file(project, "gone", runs, 2)))
        assert job_queue(be, "gone").queue_name != gone_queue
        assert queued(be, "gone") == 2
    assert runs_of(runs) == []


def test_cancelled_and_deleted_jobs_leave_no_warning_in_a_new_run(project: Any, tmp_path: Path) -> None:
    """The issue's case: after cancelling and deleting jobs, a new 2-task run printed 23 warnings
    "message ... to the poison queue: job 'delrun' not found"."""
    runs = tmp_path / "runs.txt"
    for job_id in ("delrun", "cancelled"):
        assert project.cli("run", str(_job_file(project, job_id, runs, 25)), "--no-wait").returncode == 0
        assert project.cli("cancel", job_id).returncode == 0
    assert project.cli("delete", "delrun").returncode == 0
    ran = project.cli("run", str(_job_file(project, "fresh", runs, 2)), "-v")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    said = ran.stdout + ran.stderr
    assert "poison" not in said and "WARNING" not in said.upper(), said
    served = project.cli("worker", "--workers", "1", "--idle-exit", "3", "-v")  # every job: the cancelled one too
    assert served.returncode == 0, served.stderr
    assert "poison" not in served.stdout + served.stderr and "WARNING" not in served.stderr.upper(), served.stderr
    assert sorted(_ran(runs, "fresh")) == ["fresh-0", "fresh-1"]
    assert _ran(runs, "delrun") == _ran(runs, "cancelled") == []
    with get_backend("local", project.config()) as be:
        assert be.task_counts("cancelled").cancelled == 25
        assert queued(be, "cancelled") == 0
        assert drain_queue(be.store.poison_queue) == []


def test_a_message_held_when_its_job_is_deleted_is_dropped_quietly(project: Any, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A worker received a message, then the job was deleted (its queue with it): the message is
    dropped, logged at debug only, not put on the poison queue, and nothing of it runs."""
    runs = tmp_path / "runs.txt"
    caplog.set_level(logging.DEBUG, logger="batchyard")
    with get_backend("local", project.config()) as be:
        be.submit(load_job(_job_file(project, "held", runs, 2)))
        worker = Worker(be.storage, be.config, work_dir=tmp_path / "work", options=WorkerOptions(lease_s=30))
        try:
            message, source = worker.queues.receive(visibility_timeout=30)
            be.delete("held")
            assert worker.open_message(message, source) is None
            assert worker.queues.receive(visibility_timeout=30) is None
        finally:
            worker.close()
        assert drain_queue(be.store.poison_queue) == []
        assert _job_queue_names(be) == []
    assert runs_of(runs) == []
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("batchyard")]
    assert loud == [], loud
    assert any("dropped" in r.getMessage() and "'held'" in r.getMessage()
               for r in caplog.records if r.levelno == logging.DEBUG)


def test_another_table_prefixs_message_is_left_for_its_owner(project: Any, tmp_path: Path) -> None:
    """Two configurations share the account and ``[storage] queue`` but not ``table_prefix``, each with
    a job "shared": each worker runs its own, never receives the other's (dequeue count 0), and the
    shared poison queue stays empty. Then the owner's worker runs its job."""
    runs, other_runs = tmp_path / "runs.txt", tmp_path / "other-runs.txt"
    other_dir = project.dir / "other"
    other_dir.mkdir()
    text = (project.dir / "batchyard.toml").read_text(encoding="utf-8")
    (other_dir / "batchyard.toml").write_text(text.replace(f't{project.uid}', f'u{project.uid}'), encoding="utf-8")
    other_config = load_config(other_dir / "batchyard.toml", env=project.env)
    assert other_config.storage.queue == project.config().storage.queue
    with get_backend("local", other_config) as theirs:
        theirs.submit(load_job(_job_file(project, "shared", other_runs, 3, folder=other_dir)))
        their_queue = job_queue(theirs, "shared").queue_name
    ran = project.cli("run", str(_job_file(project, "shared", runs, 2)))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    served = project.cli("worker", "--workers", "1", "--idle-exit", "3", "-v")
    assert served.returncode == 0 and "poison" not in served.stderr, served.stderr
    assert sorted(runs_of(runs)) == ["shared-0", "shared-1"] and runs_of(other_runs) == []
    with get_backend("local", other_config) as theirs:
        left = job_queue(theirs, "shared").peek_messages(max_messages=32)
        assert len(left) == 3 and {m.dequeue_count for m in left} == {0}, "another configuration received them"
        assert drain_queue(theirs.store.poison_queue) == []
        assert theirs.task_counts("shared").pending == 3
        with get_backend("local", project.config()) as mine:
            assert job_queue(mine, "shared").queue_name != their_queue
        worker = Worker(theirs.storage, theirs.config, work_dir=tmp_path / "work",
                        options=WorkerOptions(lease_s=10, idle_exit_s=1.5))
        worker.serve(threading.Event())
        worker.close()
        assert theirs.task_counts("shared").succeeded == 3
    assert sorted(runs_of(other_runs)) == ["shared-0", "shared-1", "shared-2"]


@pytest.mark.parametrize("base", ["batchyard-tasks", "q", "q" * 60])
@pytest.mark.parametrize("job_id", ["MyJob", "a_b__c", "-x-", "_", "z" * 64, "0"])
def test_job_queue_names_are_valid_queue_names(base: str, job_id: str) -> None:
    """3-63 lower-case letters, digits and single hyphens, starting and ending with a letter or digit."""
    name = job_queue_name(base, job_id)
    assert re.fullmatch(r"[a-z0-9](?:[a-z0-9]|-(?!-))*[a-z0-9]", name) and 3 <= len(name) <= 63, name
    assert name.startswith(base[:54]) and job_queue_name(base, job_id) != name  # a new token each time


def test_a_lost_job_queue_stops_that_jobs_workers_and_no_other_jobs(project: Any, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A job's queue deleted behind batchyard's back (its row still names it): a worker there for that
    job stops with StorageLostError; one serving every job says so and runs the other jobs."""
    runs = tmp_path / "runs.txt"
    with get_backend("local", project.config()) as be:
        be.submit(load_job(_job_file(project, "lostq", runs, 2)))
        be.submit(load_job(_job_file(project, "other", runs, 2)))
        job_queue(be, "lostq").delete_queue()
        with pytest.raises(StorageLostError, match=r"queue .* of job 'lostq' is gone"):
            serve_until_idle(be, tmp_path, jobs=("lostq",))
        worker = serve_until_idle(be, tmp_path)
        assert worker.tasks_run == 2 and be.task_counts("other").succeeded == 2
    assert sorted(runs_of(runs)) == ["other-0", "other-1"]
    lost = [r for r in caplog.records if r.levelno == logging.ERROR and "of job 'lostq' is gone" in r.getMessage()]
    assert len(lost) == 1, [r.getMessage() for r in caplog.records]


def test_a_job_deleted_while_it_runs_stops_its_commands_and_its_run_says_so(project: Any, tmp_path: Path) -> None:
    """`delete` while `run` waits: the running commands are stopped, each worker says its task's record
    was deleted (not that "the new owner records it": there is none), and `run` ends with exit code 3
    naming the deletion, not a bare "job not found"."""
    import subprocess
    import sys
    import time

    import psutil

    runs, gate = tmp_path / "runs.txt", tmp_path / "never-opened"
    job_id = f"deleted-{project.uid}"
    # Claims renewed every 2 s: a worker learns of the deletion long before `run` stops waiting for it (15 s).
    config = project.dir / "batchyard.toml"
    config.write_text(config.read_text(encoding="utf-8").replace("[local]\n", "[local]\nlease_seconds = 6\n"),
                      encoding="utf-8")
    (project.dir / f"{job_id}.csv").write_text("KEY\nk0\nk1\n", encoding="utf-8")
    (project.dir / f"{job_id}.toml").write_text(
        f'id = "{job_id}"\ncommand = {tool_command("count", str(runs), "{KEY}", "@" + str(gate), "-", "0")!r}\n'
        f'tasks = "{job_id}.csv"\n', encoding="utf-8")
    running = subprocess.Popen([sys.executable, "-m", "batchyard", "run", f"{job_id}.toml", "--workers", "2"],
                               cwd=project.dir, env=project.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        deadline = time.monotonic() + 120
        while len(runs_of(runs)) < 2 and running.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(runs_of(runs)) == 2, "the two commands never started"
        pids = [int(line.split()[1]) for line in runs.read_text().splitlines()]
        deleted = project.cli("delete", job_id)
        assert deleted.returncode == 0, deleted.stderr
        _, said = running.communicate(timeout=180)
    finally:
        if running.poll() is None:
            running.kill()
            running.communicate()
    assert running.returncode == 3, said
    assert f"job '{job_id}' was deleted while this command waited for it" in said, said
    assert "new owner" not in said, said
    assert "its record was deleted while it ran" in " ".join(said.split()), said

    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + 60
    while any(map(alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(map(alive, pids)), "a command of the deleted job still runs"


def test_a_queued_message_of_a_task_a_later_submission_dropped_runs_nothing(project: Any, tmp_path: Path) -> None:
    """Submitted with no worker (`run --no-wait`, or a run stopped by Ctrl-C), then a row edited away and
    submitted again: the first submission's messages are still queued, the dropped task's among them.
    A worker runs the job's current tasks only, and the counts are the last submission's."""
    runs = tmp_path / "runs.txt"
    job_id = f"edited-{project.uid}"
    table = project.dir / f"{job_id}.csv"
    command = tool_command("count", str(runs), "{KEY}", "0", "-", "0")
    job_file = project.dir / f"{job_id}.toml"
    job_file.write_text(f'id = "{job_id}"\ncommand = {command!r}\ntasks = "{job_id}.csv"\n', encoding="utf-8")
    with get_backend("local", project.config()) as be:
        table.write_text("KEY\nkept\ngone\nlast\n", encoding="utf-8")
        be.submit(load_job(job_file))
        table.write_text("KEY\nkept\nlast\nadded\n", encoding="utf-8")
        again = be.submit(load_job(job_file))
        assert again.rerun is not None and len(again.rerun.dropped) == 0  # no row yet: nothing to drop
        assert queued(be, job_id) >= 2  # the first submission's message is still there
        serve_until_idle(be, tmp_path, pace_s=0.001)  # tasks claimed in groups: the dropped one follows 'kept'
        assert sorted(runs_of(runs)) == ["added", "kept", "last"], runs_of(runs)
        counts = be.task_counts(job_id)
        assert (counts.total, counts.succeeded) == (3, 3), counts
        assert sorted(r.label for r in be.list_task_results(job_id)) == ["KEY=added", "KEY=kept", "KEY=last"]
        assert drain_queue(be.store.poison_queue) == []
