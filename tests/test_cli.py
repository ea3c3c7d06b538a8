"""The command line, general behaviour and the read commands: runs, savepoints, show, stats.

Every command runs as the real console script in a subprocess (``python -m statestore``)
against SQLite and file stores filled through the library.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from cli_support import (
    BACKENDS,
    BIG,
    RUNS,
    assert_one_line_error,
    fill,
    run_cli,
    states,
    store_url,
)

import statestore
from statestore.cli._parser import build_parser
from statestore.cli.output import describe_writer, format_age, format_date, format_size, to_json
from statestore.storage import WriterToken

DOCS = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def _commands() -> list[str]:
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if a.dest == "command"]
    assert subparsers.choices is not None
    return sorted(subparsers.choices)


COMMANDS = _commands()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def filled(tmp_path: Path, backend: str) -> str:
    url = store_url(tmp_path, backend)
    fill(url)
    return url


# ------------------------------------------------------------------ the command as a whole


def test_the_commands_are_the_documented_set() -> None:
    assert set(COMMANDS) == {
        "demo", "runs", "savepoints", "show", "stats", "verify", "prune", "delete",
        "export", "import", "copy", "compact", "serve",
    }  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command_shows_an_example(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "example:" in result.stdout
    assert re.search(rf"^\s+statestore {command}\b", result.stdout, re.MULTILINE), result.stdout


def test_top_level_help_lists_commands_exit_codes_and_an_example() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout
    assert "3 damaged data" in result.stdout
    assert "example:" in result.stdout


def test_no_command_prints_help_and_exits_2() -> None:
    result = run_cli()
    assert result.returncode == 2
    assert "usage: statestore" in result.stderr


def test_unknown_command_and_bad_arguments_are_usage_errors() -> None:
    assert run_cli("frobnicate").returncode == 2
    assert run_cli("savepoints").returncode == 2  # RUN missing
    assert run_cli("show", "r", "--at", "soon").returncode == 2


def test_every_command_is_documented_with_output() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for command in COMMANDS:
        assert re.search(rf"^## `statestore {command}\b", text, re.MULTILINE), command
        assert f"$ statestore {command}" in text, f"no example run of {command}"
    for code in ("| 0 |", "| 1 |", "| 2 |", "| 3 |", "| 4 |"):
        assert code in text, f"exit code {code} undocumented"


def test_module_and_console_script_agree(tmp_path: Path) -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"statestore {statestore.__version__}"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("bogus", "not a storage URL"),
        ("nosuch://x", "unknown storage scheme"),
        ("sqlite://host/x.db", "bad SQLite URL"),
        ("file://relative/dir", "bad file store URL"),
    ],
)
def test_a_bad_url_is_one_line_and_exit_1(url: str, expected: str) -> None:
    line = assert_one_line_error(run_cli("runs", "--url", url), 1)
    assert expected in line


def test_a_missing_store_is_not_created_by_a_read(tmp_path: Path) -> None:
    for url in (f"sqlite:///{tmp_path / 'nope.db'}", f"file://{tmp_path / 'nope'}"):
        line = assert_one_line_error(run_cli("runs", "--url", url), 1)
        assert "no store at" in line
    assert list(tmp_path.iterdir()) == []


def test_a_password_never_reaches_the_output() -> None:
    url = "postgresql://admin:hunter2secret@127.0.0.1:1/db?connect_timeout=2"
    line = assert_one_line_error(run_cli("runs", "--url", url), 1)
    assert "hunter2secret" not in line
    assert "***" in line or "admin@" in line


@pytest.mark.parametrize(
    "args",
    [
        ["savepoints", "no-such-run"],
        ["show", "no-such-run"],
        ["stats", "no-such-run"],
        ["verify", "no-such-run"],
        ["prune", "no-such-run", "--keep", "1"],
        ["delete", "no-such-run", "--yes"],
        ["export", "no-such-run", "out.ssa"],
    ],
)
def test_an_unknown_run_is_one_line_and_exit_4(tmp_path: Path, args: list[str]) -> None:
    url = store_url(tmp_path, "sqlite")
    fill(url)
    line = assert_one_line_error(run_cli(*args, "--url", url, cwd=tmp_path), 4)
    assert "no-such-run" in line
    assert not (tmp_path / "out.ssa").exists()


def test_url_comes_from_the_environment_then_the_default(tmp_path: Path) -> None:
    fill(f"sqlite:///{tmp_path / 'statestore.db'}", {"default-run": [60_000]})
    fill(f"sqlite:///{tmp_path / 'other.db'}", {"env-run": [60_000]})
    by_default = run_cli("runs", "--json", cwd=tmp_path)
    assert [r["run_id"] for r in json.loads(by_default.stdout)] == ["default-run"]
    by_env = run_cli("runs", "--json", cwd=tmp_path, env={"STATESTORE_URL": "sqlite:///other.db"})
    assert [r["run_id"] for r in json.loads(by_env.stdout)] == ["env-run"]
    by_flag = run_cli(
        "runs", "--json", "--url", "sqlite:///statestore.db", cwd=tmp_path,
        env={"STATESTORE_URL": "sqlite:///other.db"},
    )  # fmt: skip
    assert [r["run_id"] for r in json.loads(by_flag.stdout)] == ["default-run"]


# ------------------------------------------------------------------ runs, savepoints


def test_runs_lists_every_run_with_count_latest_date_and_size(filled: str) -> None:
    result = run_cli("runs", "--url", filled)
    assert result.returncode == 0, result.stderr
    for run_id, timestamps in RUNS.items():
        row = next(line for line in result.stdout.splitlines() if line.startswith(run_id))
        assert f" {len(timestamps)} " in row
        assert str(timestamps[-1]) in row
        assert format_date(timestamps[-1]) in row
    assert "2024-05-01 12:01:00.000" in result.stdout  # billing/2024's latest, in UTC

    rows = json.loads(run_cli("runs", "--url", filled, "--json").stdout)
    assert [r["run_id"] for r in rows] == sorted(RUNS)
    for row in rows:
        assert row["savepoints"] == len(RUNS[row["run_id"]])
        assert row["latest_timestamp"] == RUNS[row["run_id"]][-1]
        assert isinstance(row["size"], int)
        assert row["size"] > 0
        assert row["damaged"] is None


def test_runs_on_an_empty_store(tmp_path: Path, backend: str) -> None:
    url = store_url(tmp_path, backend)
    statestore.open_storage(url).close()
    assert json.loads(run_cli("runs", "--url", url, "--json").stdout) == []
    assert "no runs" in run_cli("runs", "--url", url).stdout


def test_savepoints_lists_timestamp_date_entities_size(filled: str) -> None:
    rows = json.loads(run_cli("savepoints", "sensor-fleet", "--url", filled, "--json").stdout)
    with statestore.open_storage(filled) as storage:
        expected = storage.list_savepoints("sensor-fleet")
    assert rows == [info._asdict() for info in expected]
    table = run_cli("savepoints", "sensor-fleet", "--url", filled).stdout
    assert "1970-01-01 00:04:00.000" in table
    assert "4 savepoint(s)" in table


def test_savepoints_of_a_run_without_any(tmp_path: Path, backend: str) -> None:
    url = store_url(tmp_path, backend)
    fill(url, {"empty": []})
    assert json.loads(run_cli("savepoints", "empty", "--url", url, "--json").stdout) == []
    assert "no savepoint" in run_cli("savepoints", "empty", "--url", url).stdout


# ------------------------------------------------------------------ show


def test_show_json_prints_the_latest_states_exactly(filled: str) -> None:
    result = run_cli("show", "sensor-fleet", "--url", filled, "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["timestamp"] == 240_000
    expected = states("sensor-fleet", 240_000)
    assert shown["entities"] == [
        {"id": e, "state_version": 1, "state": to_json(s)} for e, s in expected
    ]


def test_show_at_a_timestamp_and_chosen_entities(filled: str) -> None:
    result = run_cli(
        "show", "sensor-fleet", "--at", "120000", "--entity", "sensor-2",
        "--entity", "sensor-1", "--url", filled, "--json",
    )  # fmt: skip
    shown = json.loads(result.stdout)
    expected = dict(states("sensor-fleet", 120_000))
    assert shown["timestamp"] == 120_000
    assert [e["id"] for e in shown["entities"]] == ["sensor-2", "sensor-1"]
    assert shown["entities"][0]["state"] == to_json(expected["sensor-2"])


def test_show_readable_output(filled: str) -> None:
    result = run_cli("show", "sensor-fleet", "--at", "60000", "--url", filled)
    assert result.returncode == 0
    assert "savepoint 60000 (1970-01-01 00:01:00.000 UTC), 4 entities" in result.stdout
    assert "sensor-2:" in result.stdout
    assert "Decimal('1.25')" in result.stdout


def test_show_abbreviates_large_states_unless_full(filled: str) -> None:
    short = run_cli("show", "sensor-fleet", "--entity", BIG, "--url", filled).stdout
    full = run_cli("show", "sensor-fleet", "--entity", BIG, "--url", filled, "--full").stdout
    assert "abbreviated" in short
    assert "abbreviated" not in full
    assert "... +480" in short  # 500 samples, 20 shown
    assert "503" in full  # the last sample of savepoint 4 (4 + 499)
    assert "x" * 300 in full
    assert "x" * 300 not in short
    assert len(short) < len(full) / 2


def test_show_unknown_savepoint_or_entity_is_exit_4(filled: str) -> None:
    line = assert_one_line_error(run_cli("show", "sensor-fleet", "--at", "1", "--url", filled), 4)
    assert "no savepoint at 1" in line
    line = assert_one_line_error(
        run_cli("show", "sensor-fleet", "--entity", "ghost", "--url", filled), 4
    )
    assert "'ghost'" in line


# ------------------------------------------------------------------ stats


def test_stats_of_a_run(filled: str) -> None:
    result = run_cli("stats", "sensor-fleet", "--url", filled, "--json", "--top", "2")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert [s["timestamp"] for s in stats["savepoints"]] == RUNS["sensor-fleet"]
    assert stats["savepoints"][0]["growth"] is None
    state_bytes = [s["state_bytes"] for s in stats["savepoints"]]
    growth = [s["growth"] for s in stats["savepoints"][1:]]
    assert growth == [b - a for a, b in itertools.pairwise(state_bytes)]
    assert next(e["entity_id"] for e in stats["biggest"]) == BIG
    assert len(stats["biggest"]) == 2
    assert stats["entity_count"] == 4
    run_size = next(
        r["size"]
        for r in json.loads(run_cli("runs", "--url", filled, "--json").stdout)
        if r["run_id"] == "sensor-fleet"
    )
    assert stats["size"] == run_size

    table = run_cli("stats", "sensor-fleet", "--url", filled).stdout
    assert "growth over the savepoints" in table
    assert "biggest entities" in table
    assert BIG in table


def test_stats_of_the_store(filled: str) -> None:
    stats = json.loads(run_cli("stats", "--url", filled, "--json").stdout)
    assert sorted(r["run_id"] for r in stats["runs"]) == sorted(RUNS)
    assert stats["savepoints"] == sum(len(t) for t in RUNS.values())
    assert stats["size"] == sum(r["size"] for r in stats["runs"])
    assert "%" in run_cli("stats", "--url", filled).stdout


# ------------------------------------------------------------------ output helpers


def test_to_json_says_what_json_cannot_as_strings() -> None:
    value = {
        "nan": float("nan"),
        "inf": float("inf"),
        "-inf": float("-inf"),
        "big": 2**70,
        "bytes": b"\x00\xff",
        "when": dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC),
        "span": dt.timedelta(minutes=1, milliseconds=500),
        "money": Decimal("1.10"),
        "id": uuid.UUID(int=1),
        "frozen": frozenset(["b", "a"]),
        "mixed": {1, "a"},
    }
    converted = to_json(value)
    assert json.loads(json.dumps(converted, allow_nan=False)) == converted
    assert converted["nan"] == "NaN"
    assert converted["inf"] == "Infinity"
    assert converted["-inf"] == "-Infinity"
    assert converted["big"] == str(2**70)
    assert converted["bytes"] == "AP8="
    assert converted["when"] == "2024-05-01T12:00:00+00:00"
    assert converted["span"] == 60.5
    assert converted["money"] == "1.10"
    assert converted["id"] == "00000000-0000-0000-0000-000000000001"
    assert converted["frozen"] == ["a", "b"]
    assert sorted(converted["mixed"], key=str) == [1, "a"]


def test_dates_and_sizes_for_people() -> None:
    assert format_date(0) == "1970-01-01 00:00:00.000"
    assert format_date(1_714_564_800_123) == "2024-05-01 12:00:00.123"
    assert format_date(2**63 - 1) == "-"  # beyond year 9999
    assert format_date(None) == "-"
    assert [format_size(n) for n in (0, 1023, 1024, 1536, 5 * 2**20, None)] == [
        "0 B", "1023 B", "1.0 KiB", "1.5 KiB", "5.0 MiB", "?",
    ]  # fmt: skip


def test_ages_and_writers_for_people() -> None:
    second, minute, hour, day = 1000, 60_000, 3_600_000, 86_400_000
    assert [format_age(ms) for ms in (0, 59_999, minute, hour - 1, hour, 2 * day - 1)] == [
        "0 s", "59 s", "1 min", "59 min", "1 h 0 min", "1 day 23 h",
    ]  # fmt: skip
    assert format_age(1000 * day + 5 * hour + 7 * second) == "1,000 days 5 h"
    now = 1_714_564_800_123
    assert describe_writer(None, now) == "no writer has taken the run yet"
    assert describe_writer(WriterToken(3, None), now) == (
        "token 3, taken at a time not recorded (by an older statestore)"
    )
    assert describe_writer(WriterToken(4, now - 3 * hour - 5 * minute), now) == (
        "token 4, taken 2024-05-01 08:55:00.123 UTC, 3 h 5 min ago"
    )
    assert describe_writer(WriterToken(5, now + 90 * second), now) == (
        "token 5, taken 2024-05-01 12:01:30.123 UTC, 1 min ahead of this machine's clock"
    )
    assert describe_writer(WriterToken(6, 2**63 - 1), now) == (
        f"token 6, taken at a time out of range ({2**63 - 1})"
    )


def test_stats_of_a_run_names_its_writer(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'writer.db'}"
    with statestore.open_storage(url) as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 60_000, [("a", 1)])
        assert (
            "writer: no writer has taken the run yet"
            in run_cli("stats", "run", "--url", url).stdout
        )
        token = storage.acquire_writer("run")
        taken = storage.current_writer("run")
    assert taken is not None
    assert taken.taken_at is not None
    text = run_cli("stats", "run", "--url", url).stdout
    assert re.search(
        rf"writer: token {token}, taken {re.escape(format_date(taken.taken_at))} UTC, \d+ s ago",
        text,
    ), text
    data = json.loads(run_cli("stats", "run", "--url", url, "--json").stdout)
    assert data["writer"] == {"token": token, "taken_at": taken.taken_at}


def test_show_prints_the_state_versions(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'versions.db'}"
    with statestore.open_storage(url) as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 60_000, [("a", 1), ("b", 2)], state_version=1)
        storage.save_changes("run", 120_000, [("b", 3)], state_version=2)
    text = run_cli("show", "run", "--url", url).stdout
    assert "2 entities, state version 1, 2" in text
    assert "a (version 1):" in text
    assert "b (version 2):" in text
    shown = json.loads(run_cli("show", "run", "--url", url, "--json").stdout)
    assert [(e["id"], e["state_version"]) for e in shown["entities"]] == [("a", 1), ("b", 2)]
