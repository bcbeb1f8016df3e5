"""Reading Slurm's output: times, states, squeue/sinfo/sacct lines and slurmstepd's notes.

Most sample lines are real output of the local cluster (scripts/slurm-cluster.sh, Slurm 22.05).
Those for what that cluster cannot show without disturbing its other users (a node failure, a
job killed by a signal, a second partition's nodes) follow the same formats: slurmstepd's note
is its message format (src/slurmd/slurmstepd/req.c) with this cluster's names filled in.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from hubstack.slurm.client import (
    JOB_STATES,
    SlurmError,
    describe_end,
    normalise_state,
    parse_accounted,
    parse_sacct,
    parse_sinfo,
    parse_slurm_time,
    parse_squeue,
    parse_time,
    parse_used,
    reason_from_log,
)
from hubstack.slurm.watcher import Tracked
from hubstack.units import slurm_time

SEP = "\x1f"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("UNLIMITED", None),
        ("INVALID", None),
        ("N/A", None),
        ("", None),
        ("30", 30 * 60),
        ("30:00", 30 * 60),
        ("1:00:00", 3600),
        ("00:01:00", 60),
        ("1-00:00:00", 86400),
        ("2-12", (2 * 24 + 12) * 3600),
        ("1-02:03", 86400 + 2 * 3600 + 3 * 60),
        ("10-00:00:01", 10 * 86400 + 1),
    ],
)
def test_slurm_times_become_seconds(text: str, seconds: int | None) -> None:
    assert parse_slurm_time(text) == seconds


@pytest.mark.parametrize("text", ["soon", "1:2:3:4", "1-2:3:4:5", "-5", "1h", "1--2"])
def test_other_times_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a Slurm time"):
        parse_slurm_time(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(60, "0:01:00"), (1800, "0:30:00"), (3600, "1:00:00"), (86400, "1-00:00:00")],
)
def test_durations_are_written_the_way_slurm_writes_them(seconds: int, text: str) -> None:
    assert slurm_time(seconds) == text
    assert parse_slurm_time(text) == seconds


@pytest.mark.parametrize(
    ("text", "state"),
    [
        ("CANCELLED by 0", "CANCELLED"),
        ("CANCELLED+", "CANCELLED"),
        ("OUT_OF_MEMORY", "OUT_OF_MEMORY"),
        ("running", "RUNNING"),
        ("", "UNKNOWN"),
    ],
)
def test_states_lose_their_decorations(text: str, state: str) -> None:
    assert normalise_state(text) == state


def test_times_are_local_and_aware() -> None:
    when = parse_time("2026-11-22T07:56:39")
    assert when == datetime(2026, 11, 22, 7, 56, 39).astimezone()
    assert when is not None and when.tzinfo is not None
    assert parse_time("N/A") is None


# squeue --format=%i|%T|%r|%N|%P|%S|%Q|%B (with the unit separator), as Slurm.queue asks.
SQUEUE = "\n".join(
    SEP.join(fields)
    for fields in [
        ("3", "PENDING", "BeginTime", "", "debug", "2026-11-22T07:56:39", "4294901757", "n/a"),
        ("6", "PENDING", "JobHeldUser", "", "debug", "N/A", "0", "n/a"),
        ("7", "RUNNING", "None", "vm", "debug", "2026-11-22T06:57:23", "4294901755", "vm"),
        (
            "8",
            "OUT_OF_MEMORY",
            "OutOfMemory",
            "vm",
            "debug",
            "2026-11-22T06:57:37",
            "4294901754",
            "vm",
        ),
        ("12_2", "PENDING", "Resources", "", "debug", "2026-11-22T06:58:38", "4294901750", "n/a"),
        (
            "20",
            "PENDING",
            "BeginTime",
            "",
            "debug,long",
            "2026-11-22T08:01:42",
            "4294901746",
            "n/a",
        ),
        ("21", "PENDING", "Priority", "", "long", "N/A", "4294901800", "n/a"),
    ]
)


def test_squeue_lines_become_job_infos_for_the_ids_asked_for() -> None:
    found = parse_squeue(SQUEUE, ["3", "6", "7", "8", "999"])
    assert set(found) == {"3", "6", "7", "8"}
    running = found["7"]
    assert (running.state, running.reason, running.nodes, running.partition) == (
        "RUNNING",
        None,
        "vm",
        "debug",
    )
    assert running.position is None
    assert (running.batch_host, found["3"].batch_host) == ("vm", None)
    assert running.start_time == datetime(2026, 11, 22, 6, 57, 23).astimezone()
    pending = found["3"]
    assert (pending.state, pending.reason, pending.nodes) == ("PENDING", "BeginTime", None)
    assert pending.start_time == datetime(2026, 11, 22, 7, 56, 39).astimezone()
    assert found["6"].start_time is None
    assert found["8"].reason == "OutOfMemory"


def test_queue_positions_follow_priority_within_each_partition() -> None:
    found = parse_squeue(SQUEUE, ["3", "6", "12_2", "20", "21"])
    # debug: 3 (…757), 12_2 (…750), 20 (…746), 6 (0); long: 21 (…800), 20 (…746)
    positions = {job: info.position for job, info in found.items()}
    assert positions == {"3": 1, "12_2": 2, "20": 2, "6": 4, "21": 1}


def test_equal_priorities_keep_submission_order() -> None:
    lines = [
        SEP.join((j, "PENDING", "Priority", "", "debug", "N/A", "5", "n/a")) for j in ("10", "9")
    ]
    found = parse_squeue("\n".join(lines), ["9", "10"])
    assert (found["9"].position, found["10"].position) == (1, 2)


def test_an_unexpected_squeue_line_is_an_error_not_a_missing_job() -> None:
    with pytest.raises(SlurmError, match="unexpected line"):
        parse_squeue("3 PENDING BeginTime", ["3"])


def test_sinfo_lines_become_partitions() -> None:
    lines = [
        SEP.join(("debug*", "up", "1:00:00", "30:00", "1", "2", "22057")),
        SEP.join(("long", "up", "1-00:00:00", "30:00", "1", "2", "22057")),
        SEP.join(("long", "up", "1-00:00:00", "30:00", "2", "8", "1000")),
        SEP.join(("scavenger", "inact", "UNLIMITED", "N/A", "0", "0", "0")),
    ]
    found = parse_sinfo("\n".join(lines))
    debug, long, scavenger = found["debug"], found["long"], found["scavenger"]
    assert (debug.max_time, debug.default_time, debug.default, debug.state) == (
        3600,
        1800,
        True,
        "up",
    )
    assert (debug.nodes, debug.cpus, debug.memory_mb) == (1, 2, 22057)
    assert (long.max_time, long.default) == (86400, False)
    assert (long.nodes, long.cpus, long.memory_mb) == (3, 18, 24057)
    assert (scavenger.max_time, scavenger.default_time, scavenger.state) == (None, None, "inact")


@pytest.mark.parametrize(
    ("line", "state", "reason", "exit_code"),
    [
        ("7|COMPLETED|0:0|00:30:00|64M", "COMPLETED", "it exited", 0),
        ("10|FAILED|3:0|00:30:00|64M", "FAILED", "it exited with status 3", 3),
        (
            "8|OUT_OF_MEMORY|0:125|00:30:00|64M",
            "OUT_OF_MEMORY",
            "it ran out of memory (limit 64M)",
            0,
        ),
        ("9|TIMEOUT|0:0|00:01:00|64M", "TIMEOUT", "it reached its wall time limit (0:01:00)", 0),
        ("11|CANCELLED by 0|0:0|00:30:00|64M", "CANCELLED", "it was cancelled by root", 0),
        ("13|NODE_FAIL|0:0|1-00:00:00|1G", "NODE_FAIL", "its node failed", 0),
        ("14|FAILED|0:9|00:30:00|64M", "FAILED", "it was killed by signal 9 (SIGKILL)", 0),
        (
            "15|OUT_OF_MEMORY|0:125|00:30:00|100Mc",
            "OUT_OF_MEMORY",
            "it ran out of memory (limit 100M per CPU)",
            0,
        ),
    ],
)
def test_sacct_records_are_explained(line: str, state: str, reason: str, exit_code: int) -> None:
    job_id = line.split("|")[0]
    end = parse_sacct(line + "\n", job_id)
    assert end is not None
    assert (end.state, end.reason, end.exit_code) == (state, reason, exit_code)


@pytest.mark.parametrize(
    ("output", "job_id"),
    [
        ("", "6"),
        ("6|PENDING|0:0|00:30:00|64M\n", "6"),
        ("7|RUNNING|0:0|00:30:00|64M\n", "7"),
        # Right after a quick job ends, before its submission details are recorded.
        ("39|OUT_OF_MEMORY|0:125||16?\n", "39"),
        ("70|COMPLETED|0:0|00:30:00|64M\n", "7"),
    ],
)
def test_no_final_sacct_record_means_ask_again(output: str, job_id: str) -> None:
    assert parse_sacct(output, job_id) is None


def test_a_time_limit_sacct_does_not_write_as_a_time_is_left_out() -> None:
    end = parse_sacct("16|TIMEOUT|0:0|Partition_Limit|64M", "16")
    assert end is not None and end.reason == "it reached its wall time limit"


def test_an_unexpected_sinfo_line_is_an_error() -> None:
    with pytest.raises(SlurmError, match="unexpected line"):
        parse_sinfo(SEP.join(("debug*", "up", "forever", "30:00", "1", "2", "22057")))


def test_a_cancellation_by_an_unknown_uid_names_the_uid() -> None:
    end = parse_sacct("11|CANCELLED by 4242420|0:0|00:30:00|64M", "11")
    assert end is not None and end.reason == "it was cancelled by uid 4242420"


TIMEOUT_LOG = """start
slurmstepd-vm: error: *** JOB 9 ON vm CANCELLED AT 2026-11-22T06:58:49 DUE TO TIME LIMIT ***
"""
CANCEL_LOG = """start
slurmstepd-vm: error: *** JOB 11 ON vm CANCELLED AT 2026-11-22T06:57:47 ***
"""
OOM_LOG = """start
Killed
after 137
slurmstepd-vm: error: Detected 1 oom-kill event(s) in StepId=8.batch. Some of your processes \
may have been killed by the cgroup out-of-memory handler.
"""
NODE_FAIL_LOG = """start
slurmstepd-vm: error: *** JOB 13 ON vm CANCELLED AT 2026-11-22T07:10:02 DUE TO NODE FAILURE, \
SEE SLURMCTLD LOG FOR DETAILS ***
"""


@pytest.mark.parametrize(
    ("log", "state", "reason"),
    [
        (TIMEOUT_LOG, "TIMEOUT", "it reached its wall time limit"),
        (CANCEL_LOG, "CANCELLED", "it was cancelled"),
        (OOM_LOG, "OUT_OF_MEMORY", "it ran out of memory"),
        (NODE_FAIL_LOG, "NODE_FAIL", "its node failed"),
        (
            "slurmstepd: error: *** JOB 5 CANCELLED AT 2020-01-01T00:00:00 ***",
            "CANCELLED",
            "it was cancelled",
        ),
        (
            "slurmstepd: error: Detected 2 oom_kill events in step 5.batch",
            "OUT_OF_MEMORY",
            "it ran out of memory",
        ),
        (OOM_LOG + CANCEL_LOG, "CANCELLED", "it was cancelled"),
        (TIMEOUT_LOG + OOM_LOG, "TIMEOUT", "it reached its wall time limit"),
    ],
)
def test_slurmstepd_notes_in_a_log_explain_the_end(log: str, state: str, reason: str) -> None:
    end = reason_from_log(log)
    assert end is not None
    assert (end.state, end.reason, end.exit_code) == (state, reason, None)


def test_a_log_without_notes_explains_nothing() -> None:
    assert reason_from_log("start\nTraceback (most recent call last):\n") is None


def test_states_without_their_own_words_are_named() -> None:
    assert describe_end("REVOKED") == "it ended in state REVOKED"
    assert describe_end("TIMEOUT") == "it reached its wall time limit"
    assert describe_end("OUT_OF_MEMORY", memory="2G") == "it ran out of memory (limit 2G)"


# squeue(1), JOB STATE CODES, as the manual groups them: a job that still holds or waits for
# its allocation (held and requeued jobs run again when released) ...
ACTIVE_STATES = [
    "CONFIGURING",
    "COMPLETING",
    "PENDING",
    "RUNNING",
    "RESV_DEL_HOLD",
    "REQUEUE_FED",
    "REQUEUE_HOLD",
    "REQUEUED",
    "RESIZING",
    "SIGNALING",
    "SPECIAL_EXIT",
    "STAGE_OUT",
    "STOPPED",
    "SUSPENDED",
]
# ... and one that has left for good.
ENDED_STATES = [
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "REVOKED",
    "TIMEOUT",
]
DOCUMENTED_STATES = dict.fromkeys(ACTIVE_STATES, True) | dict.fromkeys(ENDED_STATES, False)


def test_every_documented_state_is_classified_once() -> None:
    assert set(JOB_STATES) == set(DOCUMENTED_STATES)


@pytest.mark.parametrize(("state", "active"), sorted(DOCUMENTED_STATES.items()))
def test_the_watcher_and_the_client_agree_on_each_state(state: str, active: bool) -> None:
    line = SEP.join(("5", state, "None", "vm", "debug", "N/A", "0", "vm"))
    info = parse_squeue(line, ["5"])["5"]
    assert info.state == state
    tracked = Tracked("5")
    tracked.info = info
    assert tracked.active is active
    end = parse_sacct(f"5|{state}|0:0|00:30:00|64M\n", "5")
    assert (end is None) is active, "an active job has no final record yet"


def test_sacct_lines_become_accounted_jobs_and_use() -> None:
    sep = "\x1f"
    accounted = parse_accounted(
        sep.join(
            [
                "12",
                "hubstack-hs-ann-default",
                "hs-ann",
                "CANCELLED by 0",
                "2026-01-02T03:04:05",
                "2026-01-02T04:04:05",
                "3600",
            ]
        )
        + "\n"
        + sep.join(["13", "a|b", "bob", "RUNNING", "2026-01-02T03:04:05", "Unknown", "60"])
        + "\n"
    )
    assert accounted["12"].state == "CANCELLED" and accounted["12"].elapsed == 3600
    assert accounted["12"].end - accounted["12"].start == timedelta(hours=1)
    assert accounted["13"].name == "a|b" and accounted["13"].end is None
    used = "\n".join(
        sep.join(fields)
        for fields in (
            ("12", "1-02:03:04", ""),
            ("12.batch", "1-02:03:04", "1.5M"),
            ("12.extern", "00:00.004", "900K"),
            ("12.0", "12:01.250", "0"),
        )
    )
    assert parse_used(used, "12") == (93784.0, 1536 * 1024)
    assert parse_used(sep.join(["12", "", ""]), "12") == (None, None)
