"""batchyard.core.batch_semantics: the one place Batch's task semantics are written.

The node side and the Batch side of each rule are checked against each other: a failure
category survives the trip to Batch's failureInfo and back, the blob names the runner gives
outputs are the ones Batch gives for the OutputFile path the azure backend sends, a command
line joined for Batch splits back into the same argv.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from batchyard.core.batch_semantics import (
    BATCH_CODES,
    ENDED_BY_USER,
    FAILURE_CATEGORIES,
    OUTPUT_MISSING_EXIT,
    PERMANENT_FAILURES,
    READS_BACK_AS,
    SERVER_ERROR,
    STDERR_TAIL_BYTES,
    USER_ERROR,
    WALL_CLOCK_EXCEEDED,
    batch_exit_code,
    batch_failure,
    batch_output_path,
    category_of,
    final_record,
    join_command_line,
    log_blob_name,
    log_file_name,
    log_prefix,
    output_blob_name,
    split_command_line,
    staging_code,
    tail_offset,
    tail_text,
)
from batchyard.core.errors import AuthenticationError, SourceMissingError, StorageError
from batchyard.core.paths import match_outputs, pattern_base
from batchyard.core.redact import register_secret


def _exit_code_batch_reports(category: str) -> int | None:
    """The exit code a Batch task failing as ``category`` comes back with."""
    if category == "output_missing":
        return OUTPUT_MISSING_EXIT  # the azure backend's output check
    return 3 if batch_failure(category).code == "FailureExitCode" else None


@pytest.mark.parametrize("category", FAILURE_CATEGORIES)
def test_every_category_round_trips_through_batch_failure_info(category: str) -> None:
    failure = batch_failure(category, detail=f"why {category} happened")
    back = category_of(failure, _exit_code_batch_reports(category), checks_outputs=True)
    assert back == READS_BACK_AS.get(category, category)
    assert failure.category in (USER_ERROR, SERVER_ERROR)
    assert failure.to_json()["details"] == [{"name": "Message", "value": f"why {category} happened"}]


def test_only_categories_batch_cannot_express_read_back_as_another() -> None:
    assert set(READS_BACK_AS) <= set(FAILURE_CATEGORIES)
    assert set(READS_BACK_AS.values()) <= set(FAILURE_CATEGORIES)
    # Distinct failureInfos for every category that reads back as itself.
    exact = [c for c in FAILURE_CATEGORIES if c not in READS_BACK_AS]
    assert len({(batch_failure(c).code, batch_failure(c).category, batch_failure(c).message) for c in exact}) \
        == len(exact)


@pytest.mark.parametrize("code", sorted(BATCH_CODES))
def test_the_category_always_follows_the_code(code: str) -> None:
    """Wherever a failure is found (a task, a start task, a container listing), its Batch category
    is the one Azure reports with its code."""
    expected, message = BATCH_CODES[code]
    for category in ("staging_failed", "input_missing", "exit_code"):
        failure = batch_failure(category, code=code, detail="x")
        assert (failure.code, failure.category, failure.message) == (code, expected, message)


def test_categories_match_microsofts_table_of_task_errors() -> None:
    assert BATCH_CODES["BlobNotFound"][0] == USER_ERROR
    assert BATCH_CODES["BlobAccessDenied"][0] == USER_ERROR
    assert BATCH_CODES["BlobDownloadMiscError"][0] == SERVER_ERROR
    assert BATCH_CODES["ResourceFileCreateFailed"][0] == SERVER_ERROR
    assert BATCH_CODES["CommandProgramNotFound"][0] == USER_ERROR
    assert (ENDED_BY_USER.code, ENDED_BY_USER.category) == ("TaskEnded", USER_ERROR)
    assert (WALL_CLOCK_EXCEEDED.code, WALL_CLOCK_EXCEEDED.category) == ("TaskEnded", SERVER_ERROR)


def test_staging_codes_by_cause() -> None:
    assert staging_code(SourceMissingError("gone")) == "BlobNotFound"
    assert staging_code(AuthenticationError("403")) == "BlobAccessDenied"
    assert staging_code(StorageError("500")) == "BlobDownloadMiscError"
    assert staging_code(AuthenticationError("403"), listing=True) == "ResourceContainerAccessDenied"
    assert staging_code(StorageError("400"), listing=True) == "ResourceContainerListMiscError"


def test_missing_blob_is_the_inputs_unless_it_names_a_resource_file() -> None:
    failure = batch_failure("staging_failed", code="BlobNotFound", detail="jobs/j/resources/model%20v1.bin")
    assert category_of(failure, None) == "input_missing"
    assert category_of(failure, None, resource_names=["jobs/j/resources/model v1.bin"]) == "staging_failed"
    assert category_of(batch_failure("staging_failed", code="BlobAccessDenied"), None) == "staging_failed"


def test_exit_codes_as_batch_reports_them() -> None:
    assert category_of(None, 2) == "exit_code"
    assert category_of(None, None) == "lost"
    assert category_of(batch_failure("exit_code"), OUTPUT_MISSING_EXIT) == "exit_code"  # no output check
    assert batch_exit_code(-9) == 137 and batch_exit_code(5) == 5 and batch_exit_code(None) is None


def test_retries_are_for_exit_codes_and_lost_attempts_only() -> None:
    assert set(FAILURE_CATEGORIES) - PERMANENT_FAILURES == {"exit_code", "lost"}


# --------------------------------------------------------------------------------------------- outputs
def _batch_blob_names(wd: Path, pattern: str, path: str | None) -> list[str]:
    """What Azure Batch names the uploads of ``pattern`` with ``OutputFile.path = path``: with a
    wildcard, path is a virtual directory; without one, the blob name (the file's name if absent)."""
    matches = match_outputs(wd, pattern)
    if pattern_base(pattern)[1]:
        return [f"{path}/{rel}" if path else rel for _, rel in matches]
    return [path or p.name for p, _ in matches]


@pytest.mark.parametrize("pattern", ["result.txt", "out/result.txt", "*.txt", "out/**/*.csv", "out/r?.csv"])
@pytest.mark.parametrize("prefix", ["", "results/", "results/run-1", "a/b/"])
def test_node_and_batch_give_outputs_the_same_blob_names(tmp_path: Path, pattern: str, prefix: str) -> None:
    for name in ("result.txt", "other.txt", "out/result.txt", "out/r1.csv", "out/deep/er/r2.csv"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    wildcard = pattern_base(pattern)[1]
    on_node = [output_blob_name(prefix, rel, wildcard=wildcard) for _, rel in match_outputs(tmp_path, pattern)]
    assert on_node, "the pattern should match a file"
    assert on_node == _batch_blob_names(tmp_path, pattern, batch_output_path(pattern, prefix))


def test_output_rule_examples() -> None:
    assert output_blob_name("out", "a/b.txt", wildcard=True) == "out/a/b.txt"
    assert output_blob_name("", "b.txt", wildcard=True) == "b.txt"
    assert output_blob_name("exact-name.bin", "b.txt", wildcard=False) == "exact-name.bin"
    assert output_blob_name("dir/", "b.txt", wildcard=False) == "dir/b.txt"
    assert batch_output_path("*.txt", "dir/") == "dir"
    assert batch_output_path("*.txt", "") is None


# ---------------------------------------------------------------------------------------- logs, tail
def test_log_layout() -> None:
    assert log_file_name("stderr") == "stderr.txt"
    assert log_blob_name("job-1", "task-a", "stdout") == "job-1/task-a/stdout.txt"
    assert log_prefix("job-1", "task-a") == "job-1/task-a" and log_prefix("job-1") == "job-1/"
    with pytest.raises(ValueError, match="stdout, stderr"):
        log_blob_name("job-1", "task-a", "../secrets")


def test_stderr_tail_is_the_last_bytes_without_secrets() -> None:
    secret = "tail-secret-" + "k" * 20
    register_secret(secret)
    data = b"x" * 100_000 + f"\nfailed with {secret}\n".encode()
    tail = tail_text(data)
    assert len(tail.encode()) <= STDERR_TAIL_BYTES and tail.endswith("failed with ***\n")
    assert tail_offset(100) == 0 and tail_offset(STDERR_TAIL_BYTES + 5) == 5
    assert tail_text(b"\xff\xfeok") == "\ufffd\ufffdok"  # undecodable bytes never raise


# ------------------------------------------------------------------------------------- command lines
@pytest.mark.parametrize("argv", [
    ("echo", "hello"),
    ("python3", "-c", "print('a b')", "it's \"quoted\""),
    ("sh", "-c", "echo $HOME; rm -rf / #", ""),
    ("tool", "two\nlines", "tab\there", "ünïcödé", "*.txt", "a;b|c&d>e"),
])
def test_command_line_join_then_split_gives_the_same_argv(argv: tuple[str, ...]) -> None:
    assert split_command_line(join_command_line(argv)) == argv


@pytest.mark.parametrize(("line", "why"), [("echo 'open", "cannot be split"), ("   ", "is empty")])
def test_bad_command_lines_say_why(line: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        split_command_line(line)


# ------------------------------------------------------------------------------------------- records
def test_final_record_says_succeeded_or_failed_and_holds_no_secret() -> None:
    secret = "record-secret-" + "z" * 20
    register_secret(secret)
    failed = final_record("poison", f"bad message {secret}", attempts=[], ended_at="2025-01-01T00:00:00.000+00:00")
    assert failed == {"state": "failed", "failure_category": "poison", "failure_message": "bad message ***",
                      "ended_at": "2025-01-01T00:00:00.000+00:00", "attempts_json": []}
    done = final_record(None, None, attempts=[{"number": 1}], exit_code=0, node_id="n")
    assert done["state"] == "succeeded" and done["exit_code"] == 0 and done["attempts_json"] == [{"number": 1}]
    assert done["ended_at"].endswith("+00:00")
