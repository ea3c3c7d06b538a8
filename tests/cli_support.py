"""Helpers of the command-line tests: run the real ``statestore``, fill and damage stores."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import statestore
from statestore.storage import Savepoint, Storage
from statestore.storage._files import FileStorage, run_dir_name

BACKENDS = ("sqlite", "file")

#: The runs ``fill`` writes: run id -> savepoint timestamps.
RUNS = {
    "sensor-fleet": [60_000, 120_000, 180_000, 240_000],
    "billing/2024": [1_714_564_800_000, 1_714_564_860_000],
}
BIG = "big-entity"


def store_url(tmp_path: Path, backend: str, name: str = "store") -> str:
    """A URL of a store under ``tmp_path`` (not created yet)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / f'{name}.db'}"  # sqlite:////abs/path.db
    return f"file://{tmp_path / name}"


def run_cli(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdin: Any = subprocess.DEVNULL,
    stderr: Any = subprocess.PIPE,
) -> subprocess.CompletedProcess[str]:
    """``python -m statestore ARGS`` in a subprocess, with no $STATESTORE_URL unless given."""
    environment = {k: v for k, v in os.environ.items() if k != "STATESTORE_URL"}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "statestore", *args],
        cwd=cwd,
        env=environment,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        timeout=120,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The command failed with ``code`` and said why in exactly one line, no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("statestore: error: "), lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


def states(run_id: str, timestamp: int) -> list[tuple[str, Any]]:
    """The entities of one savepoint: every state changes at every savepoint (own pack)."""
    step = timestamp // 60_000
    return [
        ("sensor-1", {"count": step, "max": 20.5 + step, "seen": {step, step + 1}}),
        ("sensor-2", (step, Decimal("1.25") * step, dt.date(2024, 5, 1))),
        (BIG, {"samples": list(range(step, step + 500)), "note": "x" * (300 + step % 7)}),
        (f"late-{run_id}", None if step % 2 else b"\x00\xff" * step),
    ]


def fill(url: str, runs: dict[str, list[int]] | None = None) -> dict[str, list[Savepoint]]:
    """Write ``runs`` (default RUNS) through the library; returns what was saved."""
    saved: dict[str, list[Savepoint]] = {}
    with statestore.open_storage(url) as storage:
        for run_id, timestamps in (RUNS if runs is None else runs).items():
            storage.init_storage(run_id)
            saved[run_id] = []
            for timestamp in timestamps:
                storage.save_savepoint(run_id, timestamp, states(run_id, timestamp))
                saved[run_id].append(Savepoint(timestamp, states(run_id, timestamp)))
    return saved


def snapshot(url: str) -> dict[str, list[Savepoint]]:
    """Every savepoint of every run, decoded, read through the library."""
    with statestore.open_storage(url) as storage:
        return {
            run_id: [
                storage.get_savepoint(run_id, row.timestamp)
                for row in storage.list_savepoints(run_id)
            ]
            for run_id in storage.list_runs()
        }


def _flip(data: bytes) -> bytes:
    middle = len(data) // 2 + 3
    return data[:middle] + bytes([data[middle] ^ 0x40]) + data[middle + 1 :]


def damage_pack(url: str, run_id: str, timestamp: int) -> None:
    """Flip one byte in the middle of every pack the savepoint refers to, behind the
    store's back (the SQLite file's blob table, or the file store's pack files)."""
    with statestore.open_storage(url) as storage:
        packs = list(storage.describe_savepoint(run_id, timestamp).packs)
        path = _location(storage)
    if url.startswith("sqlite:"):
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            for name in packs:
                (data,) = conn.execute("SELECT data FROM blobs WHERE name = ?", (name,)).fetchone()
                conn.execute("UPDATE blobs SET data = ? WHERE name = ?", (_flip(data), name))
    else:
        for name in packs:
            pack = Path(path, run_dir_name(run_id), "packs", name)
            pack.write_bytes(_flip(pack.read_bytes()))


def damage_savepoint_file(url: str, run_id: str, timestamp: int) -> None:
    """Flip a byte of a file store's savepoint file (its frame checksum then fails)."""
    with statestore.open_storage(url) as storage:
        directory = _location(storage)
    path = Path(directory, run_dir_name(run_id), "savepoints", f"{timestamp:020d}.sp")
    path.write_bytes(_flip(path.read_bytes()))


def _location(storage: Storage) -> str:
    if isinstance(storage, FileStorage):
        return storage.directory
    path = getattr(storage, "path", None)
    assert isinstance(path, str)
    return path


def set_manifest_byte(
    sqlite_url: str, run_id: str, timestamp: int, offset: int, value: int
) -> None:
    """Overwrite one byte of a savepoint's manifest in a SQLite store, behind its back."""
    with statestore.open_storage(sqlite_url) as storage:
        path = _location(storage)
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        (run,) = conn.execute("SELECT id FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        query = "SELECT manifest FROM savepoints WHERE run = ? AND ts = ?"
        (data,) = conn.execute(query, (run, timestamp)).fetchone()
        changed = data[:offset] + bytes([value]) + data[offset + 1 :]
        conn.execute(
            "UPDATE savepoints SET manifest = ? WHERE run = ? AND ts = ?",
            (changed, run, timestamp),
        )
