"""Incremental savepoints: only changed states are written, and nothing unreferenced stays.

Each backend is checked through a back door listing the blobs it really stores.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from statestore import Storage, open_storage
from statestore.storage import MemoryStorage, layout
from statestore.storage._files import FileStorage
from statestore.storage._sqlite import SQLiteStorage

StoredBlobs = Callable[[Storage, str], dict[str, int]]


def _memory_blobs(storage: Storage, run_id: str) -> dict[str, int]:
    assert isinstance(storage, MemoryStorage)
    run = storage._store.runs.get(run_id)
    return {} if run is None else {name: len(blob) for name, blob in run.blobs.items()}


def _file_blobs(storage: Storage, run_id: str) -> dict[str, int]:
    assert isinstance(storage, FileStorage)
    packs = Path(storage._run_dir(run_id)) / "packs"
    if not packs.exists():
        return {}
    return {
        path.name: path.stat().st_size for path in packs.iterdir() if not path.name.startswith(".")
    }


def _sqlite_blobs(storage: Storage, run_id: str) -> dict[str, int]:
    assert isinstance(storage, SQLiteStorage)
    rows = storage._connection().execute(
        "SELECT b.name, length(b.data) FROM blobs b JOIN runs r ON b.run = r.id WHERE r.run_id = ?",
        (run_id,),
    )
    return {str(name): int(size) for name, size in rows}


BACKENDS: dict[str, tuple[Callable[[Path], str], StoredBlobs]] = {
    "memory": (lambda tmp: f"memory://inc-{uuid.uuid4().hex}", _memory_blobs),
    "file": (lambda tmp: f"file://{tmp}/store", _file_blobs),
    "sqlite": (lambda tmp: f"sqlite:///{tmp}/store.db", _sqlite_blobs),
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, StoredBlobs]:
    make_url, blobs = BACKENDS[request.param]
    return make_url(tmp_path), blobs


def states(n: int, version: dict[int, int] | None = None) -> list[tuple[str, Any]]:
    version = version or {}
    return [
        (f"entity-{i:05d}", {"count": version.get(i, 0), "name": f"entity {i}", "window": [i] * 8})
        for i in range(n)
    ]


def manifest(storage: Storage, run_id: str, timestamp: int) -> layout.Manifest:
    found = storage._read_savepoint(run_id, timestamp, with_blobs=True)
    assert found is not None
    parsed = layout.decode_manifest(run_id, timestamp, found.manifest, found.blobs)
    assert isinstance(parsed, layout.Manifest)
    return parsed


def refs(m: layout.Manifest) -> set[str]:
    """The blobs a savepoint needs: its tables and the packs its states are in."""
    return {*m.tables, *(m.packs[pack] for pack in m.live_packs())}


def test_sparse_savepoint_writes_only_changed_states(backend: tuple[str, StoredBlobs]) -> None:
    url, stored_blobs = backend
    with open_storage(url) as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 1, states(1000))
        full = storage.list_savepoints("run")[0].size
        changed = dict.fromkeys(range(0, 1000, 100), 1)  # 10 of 1000 entities
        storage.save_savepoint("run", 2, states(1000, changed))

        sparse = manifest(storage, "run", 2)
        first = manifest(storage, "run", 1)
        new_pack = sparse.packs.index(next(p for p in sparse.packs if p not in first.packs))
        written = [sparse.ids[i] for i, p in enumerate(sparse.pack_index) if p == new_pack]
        assert written == [f"entity-{i:05d}" for i in sorted(changed)]
        new_bytes = sum(stored_blobs(storage, "run").values()) - sum(first.pack_sizes)
        new_bytes -= sum(first.table_sizes)
        assert new_bytes < full / 50  # 1% of the states: far under 2% of a full save
        assert storage.get_latest_savepoint("run") == (2, states(1000, changed))


def test_prune_and_delete_leave_nothing_unreferenced(backend: tuple[str, StoredBlobs]) -> None:
    url, stored_blobs = backend
    with open_storage(url) as storage:
        storage.init_storage("run")
        for ts in range(1, 13):
            # Entity i stops changing after save i: without copy-forward, every pack
            # would stay referenced for one state and a load would read 12 whole packs.
            storage.save_savepoint("run", ts, states(200, {i: min(i, ts) for i in range(200)}))
            storage.delete_old_savepoints("run", 2)
            kept = [
                manifest(storage, "run", row.timestamp) for row in storage.list_savepoints("run")
            ]
            referenced = {name for m in kept for name in refs(m)}
            assert set(stored_blobs(storage, "run")) == referenced
        latest = manifest(storage, "run", 12)
        live = sum(latest.lengths)
        # copy-forward keeps the read bounded: the packs hold at most ~2x the live bytes
        used = latest.live_packs()
        assert sum(latest.pack_sizes[p] for p in used) <= 2 * live + 5 * len(used)
        storage.delete_run("run")
        assert stored_blobs(storage, "run") == {}


def test_a_reopened_store_saves_incrementally_after_loading(
    backend: tuple[str, StoredBlobs],
) -> None:
    url, _ = backend
    with open_storage(url) as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 1, states(500))
    with open_storage(url) as storage:
        storage.get_latest_savepoint("run")  # what a resuming run does first
        storage.save_savepoint("run", 2, states(500, {3: 1}))
        sparse = manifest(storage, "run", 2)
        assert len(sparse.live_packs()) == 2
        assert storage.get_latest_savepoint("run") == (2, states(500, {3: 1}))


def test_base_pruned_by_another_handle_falls_back_to_a_full_save(
    backend: tuple[str, StoredBlobs],
) -> None:
    url, stored_blobs = backend
    with open_storage(url) as writer, open_storage(url) as operator:
        writer.init_storage("run")
        writer.save_savepoint("run", 1, states(100))
        operator.delete_old_savepoints("run", 0)  # every savepoint and pack gone
        assert stored_blobs(operator, "run") == {}
        writer.save_savepoint("run", 2, states(100))  # the writer's base is gone
        assert operator.get_latest_savepoint("run") == (2, states(100))
        assert len(manifest(operator, "run", 2).live_packs()) == 1
