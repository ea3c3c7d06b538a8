"""Hostile input: random bytes and random arguments give a result or a documented error.

Never a crash, a hang, a stray exception type, or a changed store.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statestore import StateStore, StateStoreError, open_storage, ops
from statestore.codecs import SafeCodec
from statestore.errors import BackendError, ConfigError, CorruptSavepointError
from statestore.storage import MemoryStorage, SavepointInfo, Storage, layout
from statestore.testing.forgery import (
    FORGERIES,
    crafted_savepoint,
    forged_parts,
    manifest_fields,
    savepoint_fields,
)
from statestore.testing.worker import payload

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=200))
def test_safe_codec_decodes_random_bytes_or_raises_value_error(data: bytes) -> None:
    # Any other exception type (or a crash, or a hang) fails the test; the layout turns
    # each of these into CorruptSavepointError.
    with contextlib.suppress(ValueError, TypeError, RecursionError, OverflowError):
        SafeCodec().decode(data)


@FUZZ
@given(st.binary(max_size=300))
def test_random_manifest_bytes_are_corrupt(data: bytes) -> None:
    with pytest.raises((CorruptSavepointError, ConfigError)):
        layout.decode_manifest("run", 1, data, {})


def _stored(entities: list[tuple[str, Any]]) -> tuple[bytes, dict[str, bytes]]:
    record, _ = layout.build_record(
        "run",
        1,
        SafeCodec(),
        [i for i, _ in entities],
        [SafeCodec().encode(s) for _, s in entities],
    )
    return record.manifest, dict(record.blobs)


@FUZZ
@given(st.data())
def test_any_flipped_byte_is_caught_before_a_wrong_value(data: st.DataObject) -> None:
    entities = [("a", {"n": 1, "s": "x" * 50}), ("b", [1.5, None, (2, 3)])]
    manifest, packs = _stored(entities)
    (table,) = [name for name, blob in packs.items() if blob.startswith(layout.TABLE_MAGIC)]
    (pack,) = [name for name in packs if name != table]
    target = data.draw(st.sampled_from(["manifest", table, pack]))
    blob = manifest if target == "manifest" else packs[target]
    position = data.draw(st.integers(0, len(blob) - 1))
    flip = data.draw(st.integers(1, 255))
    damaged = bytearray(blob)
    damaged[position] ^= flip
    if target == "manifest":
        manifest = bytes(damaged)
    else:
        packs = {**packs, target: bytes(damaged)}
    try:
        parsed = layout.decode_manifest("run", 1, manifest, packs)
        result = layout.decode_states("run", parsed, packs, SafeCodec())
    except (CorruptSavepointError, ConfigError):
        return
    assert result == entities  # only a flip the checksums prove harmless may pass


def test_a_decompression_bomb_is_refused_by_its_declared_size() -> None:
    bomb = zstandard.ZstdCompressor().compress(b"\x00" * (8 << 20))  # 8 MiB of zeros
    table_name, pack_name = layout.new_blob_name(1), layout.new_blob_name(1)
    # The table claims a 2-byte body: the frame declares 8 MiB, so it is never inflated.
    manifest, table, pack = crafted_savepoint(
        1, table_name, pack_name, [b"\xc0"], frame=bomb, declared=2
    )
    blobs = {table_name: table, pack_name: pack}
    parsed = layout.decode_manifest("run", 1, manifest, blobs)
    with pytest.raises(CorruptSavepointError, match=r"declares another length"):
        layout.decode_states("run", parsed, blobs, SafeCodec())


def _snapshot(storage: Storage) -> list[Any]:
    view: list[Any] = []
    for run in storage.list_runs():
        rows = storage.list_savepoints(run)
        view.append((run, rows, [storage.get_savepoint(run, r.timestamp) for r in rows]))
    return view


ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=600),
    st.binary(max_size=20),
    st.lists(st.tuples(st.text(max_size=5), st.integers()), max_size=3),
    st.lists(st.integers(), max_size=3),
    st.just([("dup", 1), ("dup", 2)]),
    st.just([("e", object())]),
    st.just(2**63),
    st.just(-1),
)

CALLS = [
    ("init_storage", 1),
    ("is_initialized", 1),
    ("save_savepoint", 3),
    ("get_latest_savepoint", 1),
    ("get_latest_savepoint_timestamp", 1),
    ("get_savepoint", 2),
    ("list_savepoints", 1),
    ("delete_old_savepoints", 2),
    ("acquire_writer", 1),
]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(CALLS), st.lists(ANYTHING, min_size=3, max_size=3))
def test_public_methods_with_random_arguments(call: tuple[str, int], args: list[Any]) -> None:
    name, arity = call
    storage = MemoryStorage(name=f"fuzz-{uuid.uuid4().hex}")
    storage.init_storage("run")
    storage.save_savepoint("run", 5, [("e", {"n": 1})])
    before = _snapshot(storage)
    try:
        getattr(storage, name)(*args[:arity])
    except StateStoreError:
        assert _snapshot(storage) == before  # an error never changes the store
    # Note: a valid call may change the store (that is its job); the model-based
    # test in the conformance suite checks what valid calls do.


def test_open_storage_refuses_garbage_urls_clearly() -> None:
    for url in ["", "nonsense", "ftp://x", "://", "sqlite", 42]:
        with pytest.raises(ConfigError):
            open_storage(url)  # type: ignore[arg-type]


@pytest.mark.parametrize("forgery", FORGERIES.keys())
def test_start_falls_back_past_a_crafted_manifest(
    forgery: str, caplog: pytest.LogCaptureFixture
) -> None:
    with open_storage(f"memory://forged-{uuid.uuid4().hex}") as storage:
        assert isinstance(storage, MemoryStorage)
        storage.init_storage("run")
        storage.save_savepoint("run", 60_000, payload(60_000))
        storage.save_savepoint("run", 120_000, payload(120_000))
        run = storage._store.runs["run"]
        saved = run.savepoints[120_000]
        blobs = {name: run.blobs[name] for name in saved.refs}
        table_name = manifest_fields(saved.manifest)["tables"][-1]
        fields = savepoint_fields(saved.manifest, blobs, "run", 120_000)
        saved.manifest, table = forged_parts(FORGERIES[forgery](fields), table_name)
        if table is not None:
            run.blobs[table_name] = table
        resumed, timestamp, entities = StateStore("run", 60_000, storage=storage).start(0, [])
        assert (resumed, timestamp) == (True, 60_000)
        assert [(entity.id, entity.state) for entity in entities] == payload(60_000)
        assert "savepoint 120000 is corrupt" in caplog.text


def test_a_listing_that_reads_never_confirm_ends_in_a_backend_error() -> None:
    # A backend (or a damaged store) that lists a savepoint its reads cannot find: the
    # summary lists again a bounded number of times, then says so; no RecursionError.
    class ListsAPhantom(MemoryStorage):
        def _list_savepoints(self, run_id: str) -> list[SavepointInfo]:
            return [*super()._list_savepoints(run_id), SavepointInfo(99_000, 1, 1)]

    with ListsAPhantom() as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 60_000, payload(60_000))
        with pytest.raises(BackendError, match="pruned while they were sized"):
            ops.run_summary(storage, "run")
