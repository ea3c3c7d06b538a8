"""The read commands against a run that another process is writing and pruning right now.

A real writer process (the kit worker's ``crash`` command) saves and prunes to its single newest
savepoint as fast as it can while ``copy``, ``export`` or ``stats`` runs. Every savepoint
those commands list may be gone a moment later; they must still either succeed with a
run that ends with (at least) the source's latest savepoint when they started, or fail
with one line and a non-zero exit, never succeed having moved nothing.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import BACKENDS, assert_one_line_error, run_cli, store_url

import statestore
from statestore.testing.worker import command

RUN = "busy"
#: How many times each command runs against the writer (each takes well under a second).
ROUNDS = 6


@contextlib.contextmanager
def pruning_writer(url: str) -> Iterator[subprocess.Popen[str]]:
    """A writer saving and pruning to ``keep_n=1`` until the block ends (then killed)."""
    process = subprocess.Popen(
        command("crash", url, RUN, "7", "1"),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:  # wait until it has saved a few savepoints
            if line.startswith("ACK") and int(line.split()[1]) > 0:
                break
        for _ in range(20):
            process.stdout.readline()
        yield process
    finally:
        process.kill()
        process.wait(timeout=30)


def _latest(url: str) -> int:
    with statestore.open_storage(url) as storage:
        return storage.get_latest_savepoint_timestamp(RUN)


def _check_moved(result: subprocess.CompletedProcess[str], moved: list[int], before: int) -> None:
    """Success with the latest savepoint moved, or a one-line failure: nothing else."""
    if result.returncode != 0:
        assert_one_line_error(result, result.returncode)
        return
    assert moved, f"success with no savepoint: {result.stdout}"
    assert max(moved) >= before, (moved, before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_copy_of_a_run_being_pruned_always_holds_its_latest(tmp_path: Path, backend: str) -> None:
    src = store_url(tmp_path, backend, "src")
    with pruning_writer(src):
        for round_ in range(ROUNDS):
            dst = store_url(tmp_path, "sqlite", f"dst{round_}")
            before = _latest(src)
            result = run_cli("copy", src, dst, "--json")
            with statestore.open_storage(dst) as storage:
                moved = [row.timestamp for row in storage.list_savepoints(RUN)]
            _check_moved(result, moved, before)
            if result.returncode == 0:  # and it says which savepoint the copy ends with
                assert json.loads(result.stdout)[0]["latest"] == max(moved)


@pytest.mark.parametrize("backend", BACKENDS)
def test_export_of_a_run_being_pruned_always_holds_its_latest(tmp_path: Path, backend: str) -> None:
    src = store_url(tmp_path, backend, "src")
    with pruning_writer(src):
        for round_ in range(ROUNDS * 2):  # export reads right after it lists: rounds
            archive = tmp_path / f"busy{round_}.ssa"
            before = _latest(src)
            result = run_cli("export", RUN, str(archive), "--url", src)
            moved: list[int] = []
            if result.returncode == 0:
                dst = store_url(tmp_path, "file", f"imported{round_}")
                assert run_cli("import", str(archive), "--url", dst).returncode == 0
                with statestore.open_storage(dst) as storage:
                    moved = [row.timestamp for row in storage.list_savepoints(RUN)]
            _check_moved(result, moved, before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stats_of_a_run_being_pruned(tmp_path: Path, backend: str) -> None:
    src = store_url(tmp_path, backend, "src")
    with pruning_writer(src):
        for _round in range(ROUNDS * 2):
            before = _latest(src)
            result = run_cli("stats", RUN, "--url", src, "--json")
            assert result.returncode == 0, result.stderr  # a prune is no reason to fail
            stats = json.loads(result.stdout)
            assert stats["savepoints"], stats
            assert stats["savepoints"][-1]["timestamp"] >= before
