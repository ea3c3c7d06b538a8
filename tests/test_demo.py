"""The demo: a deterministic stream, a real SIGKILL, an exact resume, a check that can fail."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import statestore
from statestore.demo import (
    EXIT_ERROR,
    EXIT_MATCH,
    EXIT_MISMATCH,
    EXIT_USAGE,
    add_arguments,
    run,
)
from statestore.demo.aggregate import initial_state, reference_states, states_digest
from statestore.demo.report import percentile
from statestore.demo.stream import MINUTE_MS, StreamConfig

SMALL = ["--sensors", "300", "--events", "6000", "--hours", "0.5"]
SMALL_STREAM = StreamConfig(seed=7, sensors=300, events=6000, minutes=30)
TINY = ["--sensors", "100", "--events", "2000", "--hours", "0.25"]


def run_demo(*args: str) -> tuple[int, dict[str, Any], str]:
    """Run ``python -m statestore.demo --json ARGS``: exit status, report, stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "statestore.demo", "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report = json.loads(done.stdout) if done.stdout.strip() else {}
    return done.returncode, report, done.stderr


# ---------------------------------------------------------------- the stream


def test_stream_is_deterministic_for_a_seed() -> None:
    again = StreamConfig(seed=7, sensors=300, events=6000, minutes=30)
    assert list(SMALL_STREAM.readings()) == list(again.readings())
    other = StreamConfig(seed=8, sensors=300, events=6000, minutes=30)
    assert list(SMALL_STREAM.readings()) != list(other.readings())


def test_stream_shape() -> None:
    readings = list(SMALL_STREAM.readings())
    assert len(readings) == 6000
    stamps = [r.timestamp for r in readings]
    assert stamps == sorted(stamps)
    assert SMALL_STREAM.start <= stamps[0]
    assert stamps[-1] < SMALL_STREAM.end
    assert {r.sensor for r in readings} <= set(range(300))
    assert len({r.sensor for r in readings}) > 250  # most sensors report
    # Every minute opens with a reading exactly on its savepoint timestamp.
    minutes = range(SMALL_STREAM.start, SMALL_STREAM.end, MINUTE_MS)
    assert set(minutes) <= set(stamps)


def test_a_replay_is_the_suffix_of_the_stream() -> None:
    readings = list(SMALL_STREAM.readings())
    for since in (
        SMALL_STREAM.start,
        SMALL_STREAM.start + 7 * MINUTE_MS,
        SMALL_STREAM.start + 7 * MINUTE_MS + 1,
        SMALL_STREAM.start + 29 * MINUTE_MS + 59_999,
        SMALL_STREAM.end,
    ):
        suffix = [r for r in readings if r.timestamp >= since]
        assert list(SMALL_STREAM.readings(since)) == suffix
        assert SMALL_STREAM.events_before(since) == len(readings) - len(suffix)


def test_sensor_ids_sort_like_their_indexes() -> None:
    ids = [SMALL_STREAM.sensor_id(i) for i in range(300)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 300


# ---------------------------------------------------------------- aggregation and digest


def test_reference_states_fold_every_reading() -> None:
    states = dict(reference_states(SMALL_STREAM))
    assert sum(state["count"] for state in states.values()) == 6000
    busiest = max(states.values(), key=lambda state: state["count"])
    assert len(busiest["window"]) == 8
    assert busiest["min"] <= busiest["ewma"] <= busiest["max"]
    assert states_digest(states.items()) == states_digest(reference_states(SMALL_STREAM))


def test_digest_ignores_order_and_sees_one_change() -> None:
    states = reference_states(SMALL_STREAM)
    digest = states_digest(states)
    assert states_digest(list(reversed(states))) == digest
    entity_id, state = states[0]
    changed = [(entity_id, {**state, "sum": state["sum"] + 1e-9}), *states[1:]]
    assert states_digest(changed) != digest
    assert states_digest([*states, ("sensor-extra", initial_state(0))]) != digest


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) is None


# ---------------------------------------------------------------- the whole demo


def test_small_demo_is_killed_resumes_and_matches(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    status, report, stderr = run_demo(
        *SMALL, "--seed", "7", "--crash-at", "0.5", "--url", url, "--run-id", "small"
    )
    assert status == EXIT_MATCH, stderr
    assert report["match"] is True
    crash, resume = report["crash"], report["resume"]
    assert crash["signal"] == "SIGKILL"
    assert crash["exit_code"] == -signal.SIGKILL
    assert crash["killed_at_event"] == 3000
    # The crash left intact savepoints behind, and the new worker resumed from the latest.
    assert resume["resumed"] is True
    assert resume["from_timestamp"] == crash["latest_savepoint_after_kill"]
    assert resume["from_timestamp"] % MINUTE_MS == 0
    assert SMALL_STREAM.start < resume["from_timestamp"] < SMALL_STREAM.end
    assert resume["from_event"] == SMALL_STREAM.events_before(resume["from_timestamp"])
    assert resume["events_replayed"] == 6000 - resume["from_event"]
    # One savepoint per minute of event time, the last one at the end of the stream.
    assert report["store"]["savepoints_written"] == 30
    assert report["store"]["savepoints_kept"] == 3
    assert report["store"]["bytes_written"] > report["store"]["bytes_kept"] > 0
    assert report["final_savepoint"] == SMALL_STREAM.end
    assert report["save_latency_ms"]["count"] >= 29
    latency = report["save_latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    # The three digests, and our own: the stored final savepoint is the uninterrupted result.
    expected = states_digest(reference_states(SMALL_STREAM))
    assert report["digests"] == {"reference": expected, "resumed": expected, "stored": expected}
    with statestore.open_storage(url) as storage:
        timestamp, entities = storage.get_latest_savepoint("small")
    assert timestamp == SMALL_STREAM.end
    assert states_digest(entities) == expected
    assert len(entities) == 300


def test_a_crash_before_the_first_savepoint_starts_the_run_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    status, report, stderr = run_demo(*SMALL, "--seed", "7", "--crash-at", "0", "--url", url)
    assert status == EXIT_MATCH, stderr
    assert report["crash"]["killed_at_event"] == 0
    assert report["crash"]["exit_code"] == -signal.SIGKILL
    resume = report["resume"]
    if resume["resumed"]:  # the kill came late enough for the first savepoint to land
        assert resume["from_timestamp"] > SMALL_STREAM.start
    else:
        assert resume["from_timestamp"] == SMALL_STREAM.start
        assert resume["events_replayed"] == 6000
    assert report["store"]["savepoints_written"] == 30


def test_the_statestore_command_runs_the_demo_on_a_file_store(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "statestore",
            "demo",
            *TINY,
            "--seed",
            "5",
            "--json",
            "--url",
            f"file://{tmp_path / 'store'}",
            "--run-id",
            "on-files",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == EXIT_MATCH, done.stderr
    report = json.loads(done.stdout)
    assert report["match"] is True
    assert report["crash"]["exit_code"] == -signal.SIGKILL
    files = [path for path in (tmp_path / "store").rglob("*") if path.is_file()]
    on_disk = sum(path.lstat().st_size for path in files)
    assert report["store"]["file_bytes"] == on_disk
    with statestore.open_storage(f"file://{tmp_path / 'store'}") as storage:
        assert (
            storage.get_latest_savepoint_timestamp("on-files")
            == SMALL_STREAM.start + 15 * MINUTE_MS
        )


def test_a_replay_that_starts_one_millisecond_late_is_caught(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    status, report, _ = run_demo(
        *SMALL, "--seed", "7", "--crash-at", "0.5", "--url", url, "--fault", "off-by-one"
    )
    assert status == EXIT_MISMATCH
    assert report["match"] is False
    digests = report["digests"]
    assert digests["resumed"] == digests["stored"] != digests["reference"]


def test_uninterrupted_demo_matches_and_default_store_is_temporary() -> None:
    status, report, stderr = run_demo(*SMALL, "--no-crash")
    assert status == EXIT_MATCH, stderr
    assert report["crash"] is None
    assert report["resume"] is None
    assert report["store"]["temporary"] is True
    assert report["store"]["savepoints_written"] == 30
    assert not Path(report["store"]["url"].removeprefix("sqlite:///")).exists()


def test_the_crash_point_is_drawn_from_the_seed(tmp_path: Path) -> None:
    first = run_demo(*TINY, "--seed", "3", "--url", f"sqlite:///{tmp_path / 'a.db'}")
    second = run_demo(*TINY, "--seed", "3", "--url", f"sqlite:///{tmp_path / 'b.db'}")
    assert first[0] == second[0] == EXIT_MATCH
    killed_at = first[1]["crash"]["killed_at_event"]
    assert killed_at == second[1]["crash"]["killed_at_event"]
    assert 0.2 * 2000 <= killed_at < 0.8 * 2000


# ---------------------------------------------------------------- options


def parse(*args: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(args))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--crash-at", "1"], "--crash-at"),
        (["--crash-at", "-0.1"], "--crash-at"),
        (["--crash-at", "0.5", "--no-crash"], "exclude"),
        (["--sensors", "0"], "--sensors"),
        (["--events", "-1"], "--events"),
        (["--hours", "0.001"], "--hours"),
    ],
)
def test_bad_options_are_one_line_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(parse(*args)) == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1


def test_an_existing_run_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    with statestore.open_storage(url) as storage:
        storage.init_storage("taken")
    assert run(parse("--url", url, "--run-id", "taken")) == EXIT_ERROR
    assert "already exists" in capsys.readouterr().err
    with statestore.open_storage(url) as storage:
        assert storage.list_savepoints("taken") == []


def test_options_fit_a_parser_that_already_has_url_and_json() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="sqlite:///statestore.db")
    parser.add_argument("--json", action="store_true")
    add_arguments(parser)
    args = parser.parse_args(["--json", "--events", "10", "--url", "memory://x"])
    assert (args.json, args.events, args.url) == (True, 10, "memory://x")


def test_a_memory_store_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(parse("--url", "memory://demo")) == EXIT_USAGE
    assert "memory://" in capsys.readouterr().err
