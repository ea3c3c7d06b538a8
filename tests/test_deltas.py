"""Delta manifests, change sets and state versions (format version 2), on every local backend.

What a savepoint's chain of tables must guarantee: every savepoint reads back exactly
whatever chain it sits on, a chain stays bounded, a change set costs what changed, a
damaged delta spoils only the savepoints that use it, and the stores today's format
replaced stay readable.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from statestore import open_storage
from statestore.errors import CorruptSavepointError, InvalidArgumentError, NoSavepointError
from statestore.storage import Storage, layout

FIXTURES = Path(__file__).parent / "fixtures" / "format_v1"


@pytest.fixture(params=["memory", "sqlite", "file"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return {
        "memory": f"memory://deltas-{uuid.uuid4().hex}",
        "sqlite": f"sqlite:///{tmp_path}/store.db",
        "file": f"file://{tmp_path}/store",
    }[request.param]


@pytest.fixture
def storage(url: str) -> Iterator[Storage]:
    with open_storage(url) as opened:
        opened.init_storage("run")
        yield opened


def states(n: int, changed: dict[int, int] | None = None) -> list[tuple[str, Any]]:
    changed = changed or {}
    return [(f"e{i:05d}", {"n": changed.get(i, 0), "tag": (i, f"t{i}")}) for i in range(n)]


def manifest(storage: Storage, timestamp: int) -> layout.Manifest:
    parts = storage._read_savepoint("run", timestamp, with_blobs=True)
    assert parts is not None
    parsed = layout.decode_manifest("run", timestamp, parts.manifest, parts.blobs)
    assert isinstance(parsed, layout.Manifest)
    return parsed


def test_every_savepoint_of_a_long_chain_reads_back_exactly(storage: Storage) -> None:
    expected: dict[int, list[tuple[str, Any]]] = {}
    current: dict[int, int] = {}
    for step in range(1, 2 * layout.MAX_CHAIN + 6):
        current[step * 7 % 500] = step  # one entity changes per save
        expected[step] = states(500, current)
        storage.save_savepoint("run", step, expected[step])
        assert len(manifest(storage, step).tables) <= layout.MAX_CHAIN + 1
    chains = [len(manifest(storage, step).tables) for step in expected]
    assert max(chains) == layout.MAX_CHAIN + 1  # the chain grew to its bound ...
    assert chains.count(1) >= 2  # ... and a full table started it again
    for step, entities in expected.items():
        assert storage.get_savepoint("run", step) == (step, entities)


def test_a_sparse_save_writes_a_delta_the_size_of_the_change(storage: Storage) -> None:
    storage.save_savepoint("run", 1, states(2000))
    full_table = manifest(storage, 1).table_sizes[0]
    storage.save_savepoint("run", 2, states(2000, {5: 1, 900: 1}))
    sparse = manifest(storage, 2)
    assert len(sparse.tables) == 2
    assert sparse.table_sizes[1] < full_table / 100
    assert storage.list_savepoints("run")[1].size < 600  # head, delta table, 2-state pack


def test_change_sets_set_add_and_remove_entities(storage: Storage) -> None:
    storage.save_savepoint("run", 1, [("a", 1), ("b", 2), ("c", 3)])
    storage.save_changes("run", 2, [("b", 20), ("d", 4)], removed=["a", "unknown"])
    assert storage.get_savepoint("run", 2) == (2, [("b", 20), ("c", 3), ("d", 4)])
    storage.save_changes("run", 3, [("a", 1)])  # back again, at the end
    assert storage.get_latest_savepoint("run") == (3, [("b", 20), ("c", 3), ("d", 4), ("a", 1)])
    assert storage.get_savepoint("run", 1) == (1, [("a", 1), ("b", 2), ("c", 3)])
    assert [row.entity_count for row in storage.list_savepoints("run")] == [3, 3, 4]


def test_a_change_set_writes_only_its_states(storage: Storage) -> None:
    storage.save_savepoint("run", 1, states(5000))
    changed = [(f"e{i:05d}", {"n": 1, "tag": (i, f"t{i}")}) for i in range(0, 5000, 100)]
    storage.save_changes("run", 2, changed)
    written = storage.list_savepoints("run")[1].size
    changed_bytes = sum(len(storage.encode_state("run", i, s)) for i, s in changed)
    assert written <= 2 * changed_bytes + 1024
    expected = dict(states(5000))
    expected.update(changed)
    assert storage.get_latest_savepoint("run") == (2, list(expected.items()))


def test_a_change_set_needs_a_base_and_stores_nothing_without_one(url: str) -> None:
    with open_storage(url) as writer:
        writer.init_storage("run")
        with pytest.raises(NoSavepointError, match="no savepoint of the run to apply"):
            writer.save_changes("run", 1, [("a", 1)])
        writer.save_savepoint("run", 1, [("a", 1)])
    with open_storage(url) as fresh:
        with pytest.raises(NoSavepointError):
            fresh.save_changes("run", 2, [("a", 2)])  # this handle saved or loaded nothing
        fresh.get_latest_savepoint("run")
        fresh.save_changes("run", 2, [("a", 2)])  # loading made it the base
        assert fresh.get_latest_savepoint("run") == (2, [("a", 2)])
        assert [row.timestamp for row in fresh.list_savepoints("run")] == [1, 2]


def test_a_change_set_on_a_pruned_base_is_refused(url: str) -> None:
    with open_storage(url) as writer, open_storage(url) as operator:
        writer.init_storage("run")
        writer.save_savepoint("run", 1, [("a", 1), ("b", 2)])
        operator.delete_old_savepoints("run", 0)
        with pytest.raises(NoSavepointError, match="deleted or replaced"):
            writer.save_changes("run", 2, [("a", 5)])
        assert writer.list_savepoints("run") == []


@pytest.mark.parametrize(
    ("changed", "removed", "match"),
    [
        ([("a", 1)], ["a"], "both changed and removed"),
        ([("a", 1)], "a", "removed must be a list"),
        ([("a", 1)], [3], "removed entity id must be a str"),
        ([("a", 1), ("a", 2)], [], "twice|duplicate"),
    ],
)
def test_bad_change_sets_are_refused(
    storage: Storage, changed: Any, removed: Any, match: str
) -> None:
    storage.save_savepoint("run", 1, [("a", 0)])
    with pytest.raises(InvalidArgumentError, match=match):
        storage.save_changes("run", 2, changed, removed)
    assert [row.timestamp for row in storage.list_savepoints("run")] == [1]


def test_sparse_change_sets_keep_loads_bounded(storage: Storage) -> None:
    """Copy-forward holds for change sets too: packs never hold much more than twice the
    live bytes, however many sparse saves come."""
    storage.save_savepoint("run", 1, states(400))
    expected = dict(states(400))
    for step in range(2, 120):
        changed = [(f"e{(step * 13 + k) % 400:05d}", {"n": step, "k": k}) for k in range(8)]
        storage.save_changes("run", step, changed)
        expected.update(changed)
        storage.delete_old_savepoints("run", 2)
    latest = manifest(storage, 119)
    live = sum(latest.lengths)
    read = sum(latest.pack_raw[pack] for pack in latest.live_packs())
    assert read <= layout.MAX_READ_AMPLIFICATION * live + 64 * len(latest.live_packs())
    assert storage.get_latest_savepoint("run") == (119, list(expected.items()))


def test_each_state_keeps_the_version_it_was_written_with(storage: Storage) -> None:
    storage.save_savepoint("run", 1, [("a", 1), ("b", 2)], state_version=1)
    storage.save_changes("run", 2, [("b", 3), ("c", 4)], state_version=2)
    assert storage.load_savepoint("run", 2) == (2, [("a", 1), ("b", 3), ("c", 4)], [1, 2, 2])
    # A whole savepoint says every state is of its version: an equal state of an older
    # version is written anew, never reused with the old version's mark.
    storage.save_savepoint("run", 3, [("a", 1), ("b", 3), ("c", 4)], state_version=2)
    assert storage.load_savepoint("run").versions == [2, 2, 2]
    with pytest.raises(InvalidArgumentError, match="state_version"):
        storage.save_savepoint("run", 4, [("a", 1)], state_version=0)


def test_a_damaged_delta_spoils_only_the_savepoints_that_use_it(storage: Storage) -> None:
    storage.save_savepoint("run", 1, states(300))
    storage.save_savepoint("run", 2, states(300, {1: 1}))
    delta = manifest(storage, 2).tables[1]
    parts = storage._read_savepoint("run", 2, with_blobs=True)
    assert parts is not None
    damaged = bytearray(parts.blobs[delta])
    damaged[-3] ^= 0x40
    _overwrite_blob(storage, delta, bytes(damaged))
    with pytest.raises(CorruptSavepointError, match=f"table {delta}: checksum mismatch"):
        storage.get_savepoint("run", 2)
    assert storage.get_savepoint("run", 1) == (1, states(300))


def _overwrite_blob(storage: Storage, name: str, data: bytes) -> None:
    """Replace one stored blob's bytes in place, as bit rot would."""
    from statestore.storage import FileStorage, MemoryStorage, SQLiteStorage

    if isinstance(storage, MemoryStorage):
        storage._store.runs["run"].blobs[name] = data
    elif isinstance(storage, SQLiteStorage):
        connection = storage._connection()
        connection.execute("UPDATE blobs SET data = ? WHERE name = ?", (data, name))
    else:
        assert isinstance(storage, FileStorage)
        (path,) = Path(storage.directory).rglob(name)
        path.write_bytes(data)


@pytest.mark.parametrize("scheme", ["sqlite", "file"])
def test_a_store_written_by_format_1_stays_readable(scheme: str, tmp_path: Path) -> None:
    """The fixture holds stores written by the last release of format 1 (commit c41a9ec):
    three savepoints, incremental, with rich and compressed states."""
    target = tmp_path / "v1"
    shutil.copytree(FIXTURES, target)
    for directory in [target / "files" / ".tmp"] + [
        run / part for run in (target / "files").glob("*_run-*") for part in ("packs", "savepoints")
    ]:
        directory.mkdir(exist_ok=True)  # git keeps no empty directory
    url = f"sqlite:///{target}/store.db" if scheme == "sqlite" else f"file://{target}/files"
    with open_storage(url) as storage:
        assert storage.list_runs() == ["empty-run", "run-1"]
        for step, ts in enumerate((60_000, 120_000, 180_000)):
            assert storage.get_savepoint("run-1", ts) == (ts, _v1_states(step))
            assert storage.load_savepoint("run-1", ts).versions == [1, 1, 1, 1]
        storage.get_latest_savepoint("run-1")
        storage.save_savepoint("run-1", 240_000, _v1_states(3))  # a resumed run goes on
        assert storage.get_latest_savepoint("run-1") == (240_000, _v1_states(3))
        assert storage.get_savepoint("run-1", 60_000) == (60_000, _v1_states(0))


def _v1_states(step: int) -> list[tuple[str, Any]]:
    import datetime
    import decimal
    import uuid

    return [
        ("plain", {"n": step, "name": "sensor", "recent": [1.5, 2.5, step]}),
        (
            "rich",
            {
                "when": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
                "amount": decimal.Decimal("12.50"),
                "tags": {"a", "b"},
                "pair": (1, 2),
                "id": uuid.UUID(int=7),
                "big": 2**80,
            },
        ),
        ("large", {"blob": "x" * 9000, "step": step}),
        ("same", [1, 2, 3]),
    ]


@pytest.mark.parametrize(
    "data",
    [b"\xc0\xc0", b"", b"\xd4\x05\x00", b"\x92\x01"],
    ids=["two values", "no value", "a bad extension", "a short array"],
)
def test_encoded_states_that_are_not_one_value_are_refused(storage: Storage, data: bytes) -> None:
    """A pack decodes in one call: one foreign state must not make its neighbours
    unreadable, so it is refused before anything is written."""
    storage.save_savepoint("run", 1, [("a", 1)])
    good = storage.encode_state("run", "b", {"ok": True})
    with pytest.raises(InvalidArgumentError, match="entity 'x': encoded state is not a value"):
        storage.save_encoded_savepoint("run", 2, [("b", good), ("x", data)])
    with pytest.raises(InvalidArgumentError, match="entity 'x'"):
        storage.save_encoded_changes("run", 2, [("x", data)])
    assert [row.timestamp for row in storage.list_savepoints("run")] == [1]
    storage.save_encoded_savepoint("run", 2, [("b", good), ("c", bytes(good))])  # checked, fine
    assert storage.get_latest_savepoint("run") == (2, [("b", {"ok": True}), ("c", {"ok": True})])


def test_a_loaded_savepoint_replaced_before_the_next_save_is_not_built_on(url: str) -> None:
    """A load keeps the manifest only; the first save after it reads the packs again
    and builds on them only if the savepoint is still the one loaded."""
    with open_storage(url) as writer, open_storage(url) as other:
        writer.init_storage("run")
        writer.save_savepoint("run", 1, states(200))
        reader = open_storage(url)
        reader.get_latest_savepoint("run")
        other.save_savepoint("run", 1, states(200, {7: 7}))  # replaced at its timestamp
        writer.delete_old_savepoints("run", 1)
        reader.save_savepoint("run", 2, states(200, {3: 3}))
        assert reader.get_latest_savepoint("run") == (2, states(200, {3: 3}))
        assert len(manifest(reader, 2).tables) == 1  # a full save: its base was replaced
        reader.save_savepoint("run", 3, states(200, {3: 4}))
        assert len(manifest(reader, 3).tables) == 2  # then deltas on its own save again
        reader.close()


def test_a_change_set_may_remove_every_entity(storage: Storage) -> None:
    storage.save_savepoint("run", 1, [("a", 1), ("b", 2)])
    storage.save_changes("run", 2, [], removed=["a", "b"])
    assert storage.get_latest_savepoint("run") == (2, [])
    storage.save_changes("run", 3, [("c", 3)])
    assert storage.get_latest_savepoint("run") == (3, [("c", 3)])
    assert [row.entity_count for row in storage.list_savepoints("run")] == [2, 0, 1]


def test_a_savepoint_s_layout_says_which_states_it_wrote(storage: Storage) -> None:
    from statestore import ops

    storage.save_savepoint("run", 1, states(100))
    storage.save_savepoint("run", 2, states(100, {5: 1, 50: 1}))
    storage.save_changes("run", 3, [("new", 1)], removed=["e00007"])
    assert [storage.describe_savepoint("run", ts).states_written for ts in (1, 2, 3)] == [
        100,
        2,
        1,
    ]
    stats = ops.run_stats(storage, "run", top=1).savepoints
    assert [(s.states_written, s.states_reused) for s in stats] == [(100, 0), (2, 98), (1, 99)]
