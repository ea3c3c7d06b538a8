"""Damaged bytes anywhere in a stored savepoint: detected, and the engine falls back.

Savepoints are written by the engine, then damaged through each backend's own files or
rows (:class:`fault_helpers.BackDoor`): every single byte flipped in turn, truncations,
an appended byte, a pack gone. Every read of a damaged savepoint must raise
``CorruptSavepointError`` naming the run and timestamp (never a wrong value, never
another exception), the other savepoints must read as before, and a StateStore starting
the run must resume from the newest intact savepoint and go on saving.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from fault_helpers import (
    ENTITIES,
    SCHEDULE,
    BackDoor,
    backend_params,
    engine_savepoint,
    engine_state,
    flip,
    store_url,
)

from statestore import (
    ConfigError,
    CorruptSavepointError,
    Entity,
    Savepoint,
    StateStore,
    Storage,
    open_storage,
)

RUN = "damaged-run"
#: Offset of the format version byte in a manifest and in a file backend savepoint file.
VERSION_BYTE = 4


@pytest.fixture(params=backend_params())
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return store_url(request.param, request, tmp_path)


def drive(entities: list[Entity], writer: str, timestamp: int) -> None:
    """Every entity takes its state at ``timestamp`` and acknowledges it."""
    for entity in entities:
        entity.update_state(timestamp, engine_state(writer, entity.id, timestamp))
        entity.ack_processed_time(timestamp)


def write_savepoints(storage: Storage, writer: str, stamps: list[int]) -> None:
    """Savepoints at ``stamps`` (grid points, ascending) written by a StateStore."""
    store = StateStore(RUN, SCHEDULE, storage=storage, keep_savepoints=len(stamps))
    entities = store.init_run_state(0, [(e, engine_state(writer, e, 0)) for e in ENTITIES])
    for timestamp in stamps:
        drive(entities, writer, timestamp)
    assert [row.timestamp for row in storage.list_savepoints(RUN)] == stamps


def read_outcome(storage: Storage, timestamp: int) -> str:
    """How reading a damaged savepoint ended: ``corrupt``, ``config`` or ``VALUE ...``."""
    try:
        found = storage.get_savepoint(RUN, timestamp)
    except CorruptSavepointError as exc:
        named = RUN in str(exc) and str(timestamp) in str(exc)
        return "corrupt" if named else f"corrupt, but the message names neither: {exc}"
    except ConfigError as exc:  # what a damaged version byte once read as
        return "config" if "upgrade statestore" in str(exc) else f"CONFIG {exc}"
    return f"VALUE {found!r}"


def test_every_flipped_byte_is_caught(url: str) -> None:
    outcomes: dict[str, int] = {}
    surprises: list[str] = []
    with open_storage(url) as storage, BackDoor(url) as door:
        write_savepoints(storage, "A", [1000, 2000, 3000])
        fields = door.fields(RUN, 3000)
        assert len(fields) >= 2  # the manifest and at least one pack
        for field in fields:
            original = door.read(RUN, 3000, field)
            for position in range(len(original)):
                door.write(RUN, 3000, field, flip(original, position))
                outcome = read_outcome(storage, 3000)
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                if outcome != "corrupt":
                    surprises.append(f"{field} byte {position}: {outcome}")
            door.write(RUN, 3000, field, original)
        # Restored, the savepoint reads as written; its neighbours were never touched.
        for timestamp in (1000, 2000, 3000):
            assert storage.get_savepoint(RUN, timestamp) == engine_savepoint("A", timestamp)
    print(f"flipped bytes, by outcome: {outcomes}")
    assert surprises == []


SHAPES: dict[str, Callable[[bytes], bytes]] = {
    "empty": lambda data: b"",
    "one byte": lambda data: data[:1],
    "half": lambda data: data[: len(data) // 2],
    "all but the last byte": lambda data: data[:-1],
    "one byte more": lambda data: data + b"\x00",
    "doubled": lambda data: data + data,
}


@pytest.mark.parametrize("shape", SHAPES)
def test_truncated_and_extended_bytes_are_caught(url: str, shape: str) -> None:
    with open_storage(url) as storage, BackDoor(url) as door:
        write_savepoints(storage, "A", [1000, 2000])
        for field in door.fields(RUN, 2000):
            original = door.read(RUN, 2000, field)
            door.write(RUN, 2000, field, SHAPES[shape](original))
            assert read_outcome(storage, 2000) == "corrupt", field
            with pytest.raises(CorruptSavepointError):
                storage.get_latest_savepoint(RUN)
            door.write(RUN, 2000, field, original)
        assert storage.get_latest_savepoint(RUN) == engine_savepoint("A", 2000)
        assert storage.get_savepoint(RUN, 1000) == engine_savepoint("A", 1000)


@pytest.mark.parametrize("mask", [0x01, 0x02, 0xFF])
def test_a_flipped_format_version_byte_reads_as_corrupt(url: str, mask: int) -> None:
    # A higher version would otherwise read as "upgrade statestore", a lower one as the
    # current format: the checksum covers the version byte, so damage is corruption.
    with open_storage(url) as storage, BackDoor(url) as door:
        write_savepoints(storage, "A", [1000, 2000])
        original = door.read(RUN, 2000, "manifest")
        door.write(RUN, 2000, "manifest", flip(original, VERSION_BYTE, mask))
        with pytest.raises(CorruptSavepointError, match="2000"):
            storage.get_savepoint(RUN, 2000)
        store = StateStore(RUN, SCHEDULE, storage=storage)
        assert store.start(0, [(e, None) for e in ENTITIES]).timestamp == 1000


# ------------------------------------------------------------------ engine fallback


def _damage_manifest(door: BackDoor, timestamp: int) -> None:
    data = door.read(RUN, timestamp, "manifest")
    door.write(RUN, timestamp, "manifest", flip(data, len(data) // 2))


def _damage_pack(door: BackDoor, timestamp: int) -> None:
    field = door.fields(RUN, timestamp)[1]
    data = door.read(RUN, timestamp, field)
    door.write(RUN, timestamp, field, flip(data, len(data) - 1, 0x01))


def _truncate_manifest(door: BackDoor, timestamp: int) -> None:
    data = door.read(RUN, timestamp, "manifest")
    door.write(RUN, timestamp, "manifest", data[: len(data) // 3])


def _empty_pack(door: BackDoor, timestamp: int) -> None:
    door.write(RUN, timestamp, door.fields(RUN, timestamp)[1], b"")


DAMAGES: dict[str, Callable[[BackDoor, int], None]] = {
    "flipped manifest byte": _damage_manifest,
    "flipped pack byte": _damage_pack,
    "truncated manifest": _truncate_manifest,
    "emptied pack": _empty_pack,
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_the_engine_resumes_from_the_newest_intact_savepoint(
    url: str, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    with open_storage(url) as storage, BackDoor(url) as door:
        write_savepoints(storage, "A", [1000, 2000, 3000, 4000])
        for timestamp in (3000, 4000):  # the two newest: the fallback skips both
            DAMAGES[damage](door, timestamp)
    caplog.set_level(logging.WARNING, logger="statestore")
    with open_storage(url) as storage:
        store = StateStore(RUN, SCHEDULE, storage=storage, keep_savepoints=2)
        resumed, timestamp, entities = store.start(0, [(e, None) for e in ENTITIES])
        assert (resumed, timestamp) == (True, 2000)
        assert [(e.id, e.state) for e in entities] == engine_savepoint("A", 2000).entities
        assert "3000" in caplog.text
        assert "4000" in caplog.text
        # strict=True refuses instead of falling back.
        with pytest.raises(CorruptSavepointError, match="4000"):
            StateStore(RUN, SCHEDULE, storage=storage).load_run_state(strict=True)
        # The strict attempt took the writer token: take it back, then go on saving.
        resumed, timestamp, entities = store.start(0, [(e, None) for e in ENTITIES])
        assert timestamp == 2000
        for ts in (3000, 4000, 5000, 6000):
            drive(entities, "B", ts)
        saved = [storage.get_savepoint(RUN, row.timestamp) for row in storage.list_savepoints(RUN)]
        assert saved == [engine_savepoint("B", 5000), engine_savepoint("B", 6000)]


def test_a_run_with_no_intact_savepoint_is_refused_clearly(url: str) -> None:
    with open_storage(url) as storage, BackDoor(url) as door:
        write_savepoints(storage, "A", [1000, 2000])
        for timestamp in (1000, 2000):
            _damage_pack(door, timestamp)
        store = StateStore(RUN, SCHEDULE, storage=storage)
        with pytest.raises(CorruptSavepointError, match="no intact savepoint"):
            store.start(0, [(e, None) for e in ENTITIES])
        # Nothing was changed by the attempt: both savepoints are still listed.
        assert [row.timestamp for row in storage.list_savepoints(RUN)] == [1000, 2000]


def test_savepoint_shape_survives_a_restore(url: str) -> None:
    """The back door itself: reading and writing a field back changes nothing."""
    with open_storage(url) as storage, BackDoor(url) as door:
        write_savepoints(storage, "A", [1000])
        for field in door.fields(RUN, 1000):
            door.write(RUN, 1000, field, door.read(RUN, 1000, field))
        assert storage.get_latest_savepoint(RUN) == Savepoint(*engine_savepoint("A", 1000))
