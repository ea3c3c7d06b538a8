"""The maintenance commands: verify, prune, delete, compact (real console script, subprocess)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import (
    BACKENDS,
    RUNS,
    assert_one_line_error,
    damage_pack,
    damage_savepoint_file,
    fill,
    run_cli,
    set_manifest_byte,
    snapshot,
    store_url,
)

import statestore
from statestore import ops


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def filled(tmp_path: Path, backend: str) -> str:
    url = store_url(tmp_path, backend)
    fill(url)
    return url


# ------------------------------------------------------------------ verify


def test_verify_a_sound_store(filled: str) -> None:
    result = run_cli("verify", "--url", filled)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: 6 savepoint(s) in 2 run(s) verified")
    report = json.loads(run_cli("verify", "--url", filled, "--json").stdout)
    assert report == {"ok": True, "runs": 2, "savepoints": 6, "undecoded": 0, "damage": []}
    one = json.loads(run_cli("verify", "sensor-fleet", "--url", filled, "--json").stdout)
    assert (one["runs"], one["savepoints"]) == (1, 4)


def test_verify_names_each_damaged_savepoint_and_exits_3(filled: str) -> None:
    damage_pack(filled, "sensor-fleet", 120_000)
    damage_pack(filled, "billing/2024", 1_714_564_860_000)
    result = run_cli("verify", "--url", filled, "--json")
    assert result.returncode == 3, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["savepoints"] == 6  # it went on past the first damage
    damaged = {(d["run_id"], d["timestamp"]) for d in report["damage"]}
    assert damaged == {("sensor-fleet", 120_000), ("billing/2024", 1_714_564_860_000)}
    for entry in report["damage"]:
        assert "corrupt" in entry["error"]
        assert str(entry["timestamp"]) in entry["error"]

    table = run_cli("verify", "sensor-fleet", "--url", filled)
    assert table.returncode == 3
    assert "120000" in table.stdout
    assert "DAMAGED: 1 damaged; 4 savepoint(s) in 1 run(s) checked" in table.stdout


def test_reading_a_damaged_savepoint_is_one_line_and_exit_3(filled: str) -> None:
    damage_pack(filled, "sensor-fleet", 240_000)
    line = assert_one_line_error(run_cli("show", "sensor-fleet", "--url", filled), 3)
    assert "240000" in line
    assert "corrupt" in line
    older = run_cli("show", "sensor-fleet", "--at", "180000", "--url", filled, "--json")
    assert older.returncode == 0  # the others still read
    assert run_cli("runs", "--url", filled).returncode == 0  # sizes come from manifests


def test_verify_a_damaged_savepoint_file_of_a_file_store(tmp_path: Path) -> None:
    url = store_url(tmp_path, "file")
    fill(url)
    damage_savepoint_file(url, "sensor-fleet", 180_000)
    result = run_cli("verify", "--url", url, "--json")
    assert result.returncode == 3
    report = json.loads(result.stdout)
    (entry,) = report["damage"]
    assert entry["run_id"] == "sensor-fleet"
    assert "180000" in entry["error"]
    runs = json.loads(run_cli("runs", "--url", url, "--json").stdout)
    damaged = next(r for r in runs if r["run_id"] == "sensor-fleet")
    assert damaged["damaged"] is not None
    assert damaged["size"] is None


@pytest.mark.parametrize(
    ("offset", "value", "expected"),
    [(4, 0x7F, "savepoint 60000"), (9, 0x00, "manifest checksum mismatch")],
    ids=["version-byte", "body-byte"],
)
def test_verify_names_a_savepoint_whose_manifest_is_damaged(
    tmp_path: Path, offset: int, value: int, expected: str
) -> None:
    url = store_url(tmp_path, "sqlite")
    fill(url)
    set_manifest_byte(url, "sensor-fleet", 60_000, offset, value)
    result = run_cli("verify", "--url", url, "--json")
    assert result.returncode == 3, result.stderr
    report = json.loads(result.stdout)
    assert report["savepoints"] == 6
    (entry,) = report["damage"]
    assert (entry["run_id"], entry["timestamp"]) == ("sensor-fleet", 60_000)
    assert expected in entry["error"]


def test_verify_counts_savepoints_of_another_codec_without_decoding(tmp_path: Path) -> None:
    url = store_url(tmp_path, "sqlite")
    with statestore.open_storage(url, codec=statestore.codecs.PickleCodec(key=b"k")) as storage:
        storage.init_storage("pickled")
        storage.save_savepoint("pickled", 60_000, [("a", {"x": 1})])
    report = json.loads(run_cli("verify", "--url", url, "--json").stdout)
    assert report == {"ok": True, "runs": 1, "savepoints": 1, "undecoded": 1, "damage": []}
    line = assert_one_line_error(run_cli("show", "pickled", "--url", url), 1)
    assert "pickle-hmac-sha256" in line


# ------------------------------------------------------------------ prune


def test_prune_dry_run_shows_what_would_go_and_changes_nothing(filled: str) -> None:
    before = snapshot(filled)
    result = run_cli("prune", "sensor-fleet", "--keep", "1", "--dry-run", "--url", filled, "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["dry_run"] is True
    (run,) = plan["runs"]
    assert run["delete"] == RUNS["sensor-fleet"][:-1]
    assert run["keep"] == RUNS["sensor-fleet"][-1:]
    assert run["bytes_freed"] > 0
    assert snapshot(filled) == before
    table = run_cli("prune", "sensor-fleet", "--keep", "1", "--dry-run", "--url", filled).stdout
    assert "dry run: would delete 3 savepoint(s)" in table


def test_prune_deletes_the_oldest_and_frees_what_the_dry_run_said(filled: str) -> None:
    with statestore.open_storage(filled) as storage:
        size_before = ops.run_summary(storage, "sensor-fleet").size
    dry = json.loads(
        run_cli(
            "prune", "sensor-fleet", "--keep", "2", "--dry-run", "--url", filled, "--json"
        ).stdout
    )
    result = run_cli("prune", "sensor-fleet", "--keep", "2", "--url", filled, "--json")
    assert result.returncode == 0, result.stderr
    done = json.loads(result.stdout)
    assert done["runs"] == dry["runs"]
    assert done["savepoints"] == 2
    with statestore.open_storage(filled) as storage:
        assert [r.timestamp for r in storage.list_savepoints("sensor-fleet")] == [180_000, 240_000]
        assert len(storage.list_savepoints("billing/2024")) == 2  # another run is untouched
        size_after = ops.run_summary(storage, "sensor-fleet").size
    assert size_before is not None
    assert size_after is not None
    assert size_before - size_after == done["bytes_freed"]
    assert run_cli("verify", "--url", filled).returncode == 0


def test_prune_all(filled: str) -> None:
    result = run_cli("prune", "--all", "--keep", "1", "--url", filled)
    assert result.returncode == 0, result.stderr
    assert "deleted 4 savepoint(s)" in result.stdout
    after = snapshot(filled)
    assert {run_id: [s.timestamp for s in sps] for run_id, sps in after.items()} == {
        run_id: timestamps[-1:] for run_id, timestamps in RUNS.items()
    }


@pytest.mark.parametrize(
    "args",
    [
        ["prune", "--keep", "1"],  # neither RUN nor --all
        ["prune", "r", "--all", "--keep", "1"],  # both
        ["prune", "r"],  # no --keep
        ["prune", "r", "--keep", "-1"],
    ],
)
def test_prune_usage_errors(filled: str, args: list[str]) -> None:
    before = snapshot(filled)
    assert run_cli(*args, "--url", filled).returncode == 2
    assert snapshot(filled) == before


def _counts(url: str) -> dict[str, int]:
    return {run_id: len(savepoints) for run_id, savepoints in snapshot(url).items()}


@pytest.mark.parametrize("which", [["sensor-fleet"], ["--all"]])
def test_prune_keep_0_refuses_without_yes_when_nobody_can_confirm(
    filled: str, which: list[str]
) -> None:
    before = snapshot(filled)
    line = assert_one_line_error(run_cli("prune", *which, "--keep", "0", "--url", filled), 2)
    assert "--yes" in line
    assert "--keep 0" in line
    assert snapshot(filled) == before
    dry = run_cli("prune", *which, "--keep", "0", "--dry-run", "--url", filled)
    assert dry.returncode == 0, dry.stderr  # a dry run deletes nothing: no question
    assert snapshot(filled) == before
    assert run_cli("prune", *which, "--keep", "1", "--url", filled).returncode == 0  # no ask


def test_prune_keep_0_with_yes(filled: str) -> None:
    result = run_cli("prune", "sensor-fleet", "--keep", "0", "--yes", "--url", filled)
    assert result.returncode == 0, result.stderr
    assert _counts(filled) == {"sensor-fleet": 0, "billing/2024": 2}


def _prune_on_a_terminal(url: str, answer: bytes) -> subprocess.CompletedProcess[str]:
    controller, terminal = pty.openpty()
    try:
        os.write(controller, answer)
        env = {k: v for k, v in os.environ.items() if k != "STATESTORE_URL"}
        return subprocess.run(
            [sys.executable, "-m", "statestore", "prune", "--all", "--keep", "0", "--url", url],
            stdin=terminal,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
    finally:
        os.close(controller)
        os.close(terminal)


def test_prune_keep_0_asks_on_a_terminal(filled: str) -> None:
    declined = _prune_on_a_terminal(filled, b"n\n")
    assert declined.returncode == 1
    assert "delete every savepoint of 2 runs (6 savepoint(s))" in declined.stderr
    assert _counts(filled) == {run_id: len(ts) for run_id, ts in RUNS.items()}
    accepted = _prune_on_a_terminal(filled, b"y\n")
    assert accepted.returncode == 0, accepted.stderr
    assert _counts(filled) == dict.fromkeys(RUNS, 0)


# ------------------------------------------------------------------ delete


def test_delete_refuses_without_yes_when_nobody_can_confirm(filled: str) -> None:
    line = assert_one_line_error(run_cli("delete", "sensor-fleet", "--url", filled), 2)
    assert "--yes" in line
    assert "sensor-fleet" in snapshot(filled)


def test_delete_with_yes(filled: str) -> None:
    result = run_cli("delete", "sensor-fleet", "--yes", "--url", filled, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["deleted"] == "sensor-fleet"
    assert sorted(snapshot(filled)) == ["billing/2024"]


def _delete_on_a_terminal(url: str, answer: bytes) -> subprocess.CompletedProcess[str]:
    controller, terminal = pty.openpty()
    try:
        os.write(controller, answer)
        env = {k: v for k, v in os.environ.items() if k != "STATESTORE_URL"}
        return subprocess.run(
            [sys.executable, "-m", "statestore", "delete", "sensor-fleet", "--url", url],
            stdin=terminal,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
    finally:
        os.close(controller)
        os.close(terminal)


def test_delete_asks_on_a_terminal(filled: str) -> None:
    declined = _delete_on_a_terminal(filled, b"n\n")
    assert declined.returncode == 1
    assert "delete run 'sensor-fleet' (4 savepoint(s)" in declined.stderr
    assert "not deleted" in declined.stderr
    assert "sensor-fleet" in snapshot(filled)
    accepted = _delete_on_a_terminal(filled, b"yes\n")
    assert accepted.returncode == 0, accepted.stderr
    assert "sensor-fleet" not in snapshot(filled)


# ------------------------------------------------------------------ compact


def test_compact_gives_space_back(tmp_path: Path, backend: str) -> None:
    url = store_url(tmp_path, backend)
    fill(url)
    with statestore.open_storage(url) as storage:
        storage.init_storage("bulky")
        for i in range(5):
            storage.save_savepoint("bulky", 60_000 * (i + 1), [("blob", os.urandom(200_000))])
        storage.delete_run("bulky")
    before = snapshot(url)
    result = run_cli("compact", "--url", url, "--json")
    assert result.returncode == 0, result.stderr
    sizes = json.loads(result.stdout)
    assert sizes["bytes_after"] <= sizes["bytes_before"]
    if backend == "sqlite":
        assert sizes["bytes_before"] - sizes["bytes_after"] > 500_000
    assert snapshot(url) == before
    assert "compacted" in run_cli("compact", "--url", url).stdout
