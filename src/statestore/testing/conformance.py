"""The conformance suite: every rule of the storage contract, as one pytest base class.

Written once against the public API, run by every backend (memory, SQLite, files,
PostgreSQL, and yours) by subclassing :class:`StorageConformance`, which also brings the
fault tests of :mod:`statestore.testing.faults`. The hooks a backend's class fills in
(``url``, the raw back doors, the opener) are those of
:class:`~statestore.testing.hooks.BackendHooks`; :meth:`~BackendHooks.tamper`, derived
from the back doors, lets the suite damage stored bytes to check that reads verify them.
Multi-process tests start children with ``python -m statestore.testing.worker --opener
MOD:FUNC ...``: the opener is imported by name, so a backend needs no entry point.
"""

from __future__ import annotations

import os
import threading
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..codecs import PickleCodec
from ..errors import (
    ConfigError,
    CorruptSavepointError,
    EncodeError,
    InvalidArgumentError,
    NoSavepointError,
    RunNotInitializedError,
    StaleWriterError,
)
from ..storage import Savepoint, SavepointInfo, SavepointSummary, Storage, epoch_ms
from ..storage.layout import MAX_SAVEPOINT_BYTES
from .faults import CrashTests, DamageTests
from .forgery import (
    FORGERIES,
    bomb_frame,
    crafted_savepoint,
    forged_parts,
    hostile_manifests,
    hostile_states,
    manifest_fields,
    savepoint_fields,
)
from .hooks import MANIFEST, PACK_PREFIX, BackendHooks, Part
from .stateful import check_against_model
from .strategies import (
    AWKWARD_RUN_IDS,
    BAD_ENTITIES,
    BAD_KEEP_NS,
    BAD_RUN_IDS,
    BAD_TIMESTAMPS,
    BAD_WRITER_TOKENS,
    MAX_TIMESTAMP,
    SAFE_VALUES,
    Unencodable,
    entity_lists,
    exact_difference,
    timestamps,
)
from .worker import cap_address_space, payload, read_each, wholeness_problem

__all__ = ["InProcessConformance", "Part", "StorageConformance"]

# Damage done through the back door; every one must read as CorruptSavepointError.
# (Bytes 0-8 of a manifest are its magic, version and CRC: the body starts after them.)
DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "flip-last-byte": lambda data: data[:-1] + bytes([data[-1] ^ 0x01]),
    "flip-middle-byte": lambda data: (
        data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0x40]) + data[len(data) // 2 + 1 :]
    ),
    "truncate": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    "append": lambda data: data + b"\x00",
}

Snapshot = dict[str, tuple[list[SavepointInfo], Savepoint | None]]

# The bound every fuzzed read must keep: a read of a crafted savepoint ends within
# FUZZ_READ_SECONDS (a hang detector, generous for a loaded machine; reads take
# milliseconds) and allocates at its peak less than FUZZ_READ_PEAK, with the store's
# max_savepoint_bytes lowered to FUZZ_SAVEPOINT_BYTES.
FUZZ_SAVEPOINT_BYTES = 1 << 20
FUZZ_READ_SECONDS = 5.0
FUZZ_READ_PEAK = 4 * FUZZ_SAVEPOINT_BYTES + (8 << 20)

#: How far a stored time may trail or lead the test's clock readings: file systems stamp
#: files with a coarse clock (one kernel tick, 1 to 10 ms), a server with its own.
CLOCK_TICK_MS = 20


@dataclass(frozen=True)
class PicklableThing:
    """A type the safe codec does not know; the pickle codec stores it."""

    name: str
    weight: float


def _snapshot(storage: Storage) -> Snapshot:
    """Everything the public API shows of a store: compare before and after a refusal."""
    found: Snapshot = {}
    for run_id in storage.list_runs():
        rows = storage.list_savepoints(run_id)
        found[run_id] = (rows, storage.get_latest_savepoint(run_id) if rows else None)
    return found


def _assert_exact(expected: Any, actual: Any) -> None:
    problem = exact_difference(expected, actual)
    assert problem is None, problem


def _refuses(call: Callable[[], object], error: type[Exception], label: str) -> Exception:
    try:
        call()
    except error as exc:
        return exc
    except Exception as exc:
        pytest.fail(f"{label}: raised {type(exc).__name__} ({exc}), expected {error.__name__}")
    pytest.fail(f"{label}: accepted the input, expected {error.__name__}")


class InProcessConformance(DamageTests, BackendHooks):
    """Every rule a store must keep within one process; see :class:`StorageConformance`.

    Subclass this directly only for a store that processes cannot share (``memory://``).
    """

    @pytest.fixture
    def populated(self, storage: Storage) -> Storage:
        """A store with two savepoints in ``run-1`` and an empty, initialized ``run-2``."""
        storage.init_storage("run-1")
        storage.save_savepoint("run-1", 60_000, [("a", {"n": 1}), ("b", [1, 2])])
        storage.save_savepoint("run-1", 120_000, [("a", {"n": 2}), ("b", [3])])
        storage.init_storage("run-2")
        return storage

    # ================================================================ run lifecycle

    def test_init_storage_is_idempotent(self, storage: Storage) -> None:
        assert storage.is_initialized("run") is False
        storage.init_storage("run")
        assert storage.is_initialized("run") is True
        storage.save_savepoint("run", 60_000, [("a", 1)])
        storage.init_storage("run")  # again: keeps what the run has
        assert storage.is_initialized("run") is True
        assert storage.get_latest_savepoint("run") == (60_000, [("a", 1)])

    def test_list_runs_names_every_initialized_run_sorted(self, storage: Storage) -> None:
        assert storage.list_runs() == []
        for run_id in ["b", "a", "c"]:
            storage.init_storage(run_id)
        storage.save_savepoint("b", 1, [("x", 1)])
        assert storage.list_runs() == ["a", "b", "c"]
        storage.delete_run("b")
        assert storage.list_runs() == ["a", "c"]

    def test_delete_run_removes_everything(self, populated: Storage) -> None:
        populated.delete_run("run-1")
        assert populated.is_initialized("run-1") is False
        assert populated.list_savepoints("run-1") == []
        with pytest.raises(NoSavepointError):
            populated.get_latest_savepoint("run-1")
        with pytest.raises(RunNotInitializedError):
            populated.save_savepoint("run-1", 180_000, [("a", 1)])
        populated.init_storage("run-1")  # a new run under the same id starts empty
        assert populated.list_savepoints("run-1") == []
        assert populated.list_runs() == ["run-1", "run-2"]

    def test_delete_of_unknown_run_does_nothing(self, populated: Storage) -> None:
        before = _snapshot(populated)
        populated.delete_run("unknown")
        populated.delete_old_savepoints("unknown", 0)
        populated.delete_old_savepoints("run-2", 0)  # initialized, no savepoint
        assert _snapshot(populated) == before
        assert populated.is_initialized("unknown") is False

    def test_awkward_run_ids_are_distinct_runs(self, storage: Storage) -> None:
        for run_id in AWKWARD_RUN_IDS:
            storage.init_storage(run_id)
            storage.save_savepoint(run_id, 1, [("id", run_id)])
        assert storage.list_runs() == sorted(AWKWARD_RUN_IDS)
        storage.delete_run("..")
        storage.delete_run("a/b")
        remaining = [run_id for run_id in AWKWARD_RUN_IDS if run_id not in ("..", "a/b")]
        assert storage.list_runs() == sorted(remaining)
        for run_id in remaining:
            assert storage.get_latest_savepoint(run_id) == (1, [("id", run_id)])

    # ================================================================ save and read

    def test_save_on_uninitialized_run_is_refused(self, storage: Storage) -> None:
        with pytest.raises(RunNotInitializedError, match="never-initialized"):
            storage.save_savepoint("never-initialized", 60_000, [("a", 1)])
        assert storage.list_runs() == []
        assert storage.is_initialized("never-initialized") is False

    def test_savepoint_shape(self, storage: Storage) -> None:
        storage.init_storage("run")
        storage.save_savepoint("run", 60_000, [("a", {"n": 1}), ("b", (1, 2))])
        found = storage.get_latest_savepoint("run")
        assert isinstance(found, Savepoint)
        ts, entities = found
        assert ts == found.timestamp == 60_000
        assert type(entities) is list
        assert all(type(entity) is tuple for entity in entities)
        _assert_exact([("a", {"n": 1}), ("b", (1, 2))], entities)
        assert storage.get_latest_savepoint_timestamp("run") == 60_000

    def test_same_timestamp_replaces(self, storage: Storage) -> None:
        storage.init_storage("run")
        storage.save_savepoint("run", 60_000, [("a", 1), ("b", 2), ("c", 3)])
        storage.save_savepoint("run", 60_000, [("z", "replaced")])
        assert storage.get_latest_savepoint("run") == (60_000, [("z", "replaced")])
        rows = storage.list_savepoints("run")
        assert [(row.timestamp, row.entity_count) for row in rows] == [(60_000, 1)]

    def test_retried_save_is_harmless(self, storage: Storage) -> None:
        storage.init_storage("run")
        for _ in range(3):
            storage.save_savepoint("run", 60_000, [("a", 1)])
        assert storage.get_latest_savepoint("run") == (60_000, [("a", 1)])
        assert len(storage.list_savepoints("run")) == 1

    def test_older_timestamp_may_be_saved_latest_is_highest(self, storage: Storage) -> None:
        storage.init_storage("run")
        storage.save_savepoint("run", 120_000, [("a", "new")])
        storage.save_savepoint("run", 60_000, [("a", "old")])
        assert storage.get_latest_savepoint("run") == (120_000, [("a", "new")])
        assert storage.get_savepoint("run", 60_000) == (60_000, [("a", "old")])

    def test_timestamps_order_numerically_to_the_ends_of_the_range(self, storage: Storage) -> None:
        storage.init_storage("run")
        for ts in [10, 9, 100, 2**62, 11, 0]:
            storage.save_savepoint("run", ts, [("ts", ts)])
        assert [row.timestamp for row in storage.list_savepoints("run")] == [
            0, 9, 10, 11, 100, 2**62,
        ]  # fmt: skip
        assert storage.get_latest_savepoint_timestamp("run") == 2**62
        storage.save_savepoint("run", MAX_TIMESTAMP, [("ts", "max")])
        assert storage.get_latest_savepoint("run") == (MAX_TIMESTAMP, [("ts", "max")])
        assert storage.get_savepoint("run", 0) == (0, [("ts", 0)])

    def test_no_savepoint_raises(self, storage: Storage) -> None:
        for run_id in ["unknown", "initialized"]:
            if run_id == "initialized":
                storage.init_storage(run_id)
            # A LookupError too: ``except LookupError`` around a read catches "none yet".
            with pytest.raises(LookupError, match=run_id) as latest:
                storage.get_latest_savepoint(run_id)
            with pytest.raises(LookupError, match=run_id) as latest_ts:
                storage.get_latest_savepoint_timestamp(run_id)
            with pytest.raises(LookupError, match=run_id) as one:
                storage.get_savepoint(run_id, 60_000)
            for raised in (latest, latest_ts, one):
                assert isinstance(raised.value, NoSavepointError), raised.value
            assert storage.list_savepoints(run_id) == []

    def test_get_savepoint_at_missing_timestamp_raises(self, populated: Storage) -> None:
        with pytest.raises(NoSavepointError):
            populated.get_savepoint("run-1", 90_000)

    def test_empty_savepoint(self, storage: Storage) -> None:
        storage.init_storage("run")
        storage.save_savepoint("run", 60_000, [])
        assert storage.get_latest_savepoint("run") == (60_000, [])
        [row] = storage.list_savepoints("run")
        assert row.entity_count == 0
        assert row.size > 0

    def test_entity_order_is_preserved(self, storage: Storage) -> None:
        ids = [f"entity-{(i * 7919) % 1000:04d}" for i in range(1000)]  # not sorted
        ids += ["", "z", "A", "é", "\U0001f600"]
        storage.init_storage("run")
        storage.save_savepoint("run", 60_000, [(entity_id, i) for i, entity_id in enumerate(ids)])
        _, entities = storage.get_latest_savepoint("run")
        assert [entity_id for entity_id, _ in entities] == ids
        assert [state for _, state in entities] == list(range(len(ids)))

    def test_states_are_captured_by_value(self, storage: Storage) -> None:
        state: dict[str, Any] = {"items": [1, 2], "seen": {"a"}}
        storage.init_storage("run")
        storage.save_savepoint("run", 60_000, [("a", state)])
        state["items"].append(3)
        state["seen"].add("b")
        state["new"] = True
        _, [(_, stored)] = storage.get_latest_savepoint("run")
        assert stored == {"items": [1, 2], "seen": {"a"}}
        stored["items"].append(99)  # nor does mutating what was read
        assert storage.get_latest_savepoint("run") == (
            60_000,
            [("a", {"items": [1, 2], "seen": {"a"}})],
        )

    def test_large_states_round_trip(self, storage: Storage) -> None:
        noise = bytes(range(256)) * 8192 + b"end"  # 2 MiB, poorly compressible pattern
        text = "statestore " * 300_000  # 3.3 MB, compressible
        storage.init_storage("run")
        storage.save_savepoint("run", 60_000, [("noise", noise), ("text", text), ("small", 1)])
        assert storage.get_latest_savepoint("run") == (
            60_000,
            [("noise", noise), ("text", text), ("small", 1)],
        )

    # ================================================================ retention

    @pytest.mark.parametrize("keep_n", [0, 1, 3, 4, 10])
    def test_delete_old_savepoints_keeps_the_newest(self, storage: Storage, keep_n: int) -> None:
        storage.init_storage("run")
        for ts in [3, 1, 4, 2]:
            storage.save_savepoint("run", ts, [("ts", ts)])
        storage.delete_old_savepoints("run", keep_n)
        kept = [1, 2, 3, 4][4 - min(keep_n, 4) :]
        assert [row.timestamp for row in storage.list_savepoints("run")] == kept
        for ts in kept:
            assert storage.get_savepoint("run", ts) == (ts, [("ts", ts)])
        assert storage.is_initialized("run")
        if not kept:
            with pytest.raises(NoSavepointError):
                storage.get_latest_savepoint("run")
        storage.save_savepoint("run", 5, [("ts", 5)])  # the run goes on
        assert storage.get_latest_savepoint("run") == (5, [("ts", 5)])

    def test_pruning_keeps_states_a_newer_savepoint_shares(self, storage: Storage) -> None:
        # The second savepoint changes one state of many; a backend may store it as a
        # reference to the first one's data, which pruning the first must not free.
        states = [(f"e{i}", {"i": i, "blob": "x" * 500}) for i in range(50)]
        changed = [*states[:-1], ("e49", "changed")]
        storage.init_storage("run")
        storage.save_savepoint("run", 1, states)
        storage.save_savepoint("run", 2, changed)
        storage.delete_old_savepoints("run", 1)
        assert storage.get_latest_savepoint("run") == (2, changed)
        storage.save_savepoint("run", 3, states)
        storage.delete_old_savepoints("run", 1)
        assert storage.get_latest_savepoint("run") == (3, states)

    def test_replacing_keeps_states_a_newer_savepoint_shares(self, storage: Storage) -> None:
        states = [(f"e{i}", {"i": i}) for i in range(20)]
        storage.init_storage("run")
        storage.save_savepoint("run", 1, states)
        storage.save_savepoint("run", 2, states)
        storage.save_savepoint("run", 1, [("other", 0)])
        assert storage.get_savepoint("run", 2) == (2, states)
        assert storage.get_savepoint("run", 1) == (1, [("other", 0)])

    # ================================================================ listing

    def test_list_savepoints_rows(self, storage: Storage) -> None:
        storage.init_storage("run")
        storage.save_savepoint("run", 180_000, [("a", 1)])
        storage.save_savepoint("run", 60_000, [("a", 1), ("b", "x" * 10_000)])
        storage.save_savepoint("run", 120_000, [("a", 1), ("b", 2), ("c", 3)])
        rows = storage.list_savepoints("run")
        assert all(isinstance(row, SavepointInfo) for row in rows)
        assert [(row.timestamp, row.entity_count) for row in rows] == [
            (60_000, 2),
            (120_000, 3),
            (180_000, 1),
        ]
        assert all(type(row.size) is int and row.size > 0 for row in rows)

    # ================================================================ bad input

    def _assert_refused_unchanged(
        self, storage: Storage, calls: dict[str, Callable[[], object]], error: type[Exception]
    ) -> list[Exception]:
        before = _snapshot(storage)
        raised = [_refuses(call, error, label) for label, call in calls.items()]
        assert _snapshot(storage) == before, "a refused call changed the store"
        return raised

    @pytest.mark.parametrize("bad", BAD_RUN_IDS.values(), ids=BAD_RUN_IDS.keys())
    def test_bad_run_id_is_refused(self, populated: Storage, bad: Any) -> None:
        s = populated
        calls: dict[str, Callable[[], object]] = {
            "is_initialized": lambda: s.is_initialized(bad),
            "init_storage": lambda: s.init_storage(bad),
            "save_savepoint": lambda: s.save_savepoint(bad, 60_000, [("a", 1)]),
            "get_latest_savepoint": lambda: s.get_latest_savepoint(bad),
            "get_latest_savepoint_timestamp": lambda: s.get_latest_savepoint_timestamp(bad),
            "get_savepoint": lambda: s.get_savepoint(bad, 60_000),
            "list_savepoints": lambda: s.list_savepoints(bad),
            "delete_old_savepoints": lambda: s.delete_old_savepoints(bad, 0),
            "delete_run": lambda: s.delete_run(bad),
            "acquire_writer": lambda: s.acquire_writer(bad),
            "current_writer": lambda: s.current_writer(bad),
            "summarize_savepoint": lambda: s.summarize_savepoint(bad, 60_000),
        }
        self._assert_refused_unchanged(s, calls, InvalidArgumentError)
        assert s.list_runs() == ["run-1", "run-2"]

    @pytest.mark.parametrize("bad", BAD_TIMESTAMPS.values(), ids=BAD_TIMESTAMPS.keys())
    def test_bad_timestamp_is_refused(self, populated: Storage, bad: Any) -> None:
        s = populated
        calls: dict[str, Callable[[], object]] = {
            "save": lambda: s.save_savepoint("run-1", bad, [("a", 1)]),
            "save to empty run": lambda: s.save_savepoint("run-2", bad, [("a", 1)]),
            "save to unknown run": lambda: s.save_savepoint("unknown", bad, [("a", 1)]),
            "get_savepoint": lambda: s.get_savepoint("run-1", bad),
            "summarize_savepoint": lambda: s.summarize_savepoint("run-1", bad),
        }
        self._assert_refused_unchanged(s, calls, InvalidArgumentError)

    @pytest.mark.parametrize("bad", BAD_KEEP_NS.values(), ids=BAD_KEEP_NS.keys())
    def test_bad_keep_n_is_refused(self, populated: Storage, bad: Any) -> None:
        s = populated
        calls: dict[str, Callable[[], object]] = {
            "known run": lambda: s.delete_old_savepoints("run-1", bad),
            "empty run": lambda: s.delete_old_savepoints("run-2", bad),
            "unknown run": lambda: s.delete_old_savepoints("unknown", bad),
        }
        self._assert_refused_unchanged(s, calls, InvalidArgumentError)

    @pytest.mark.parametrize("bad", BAD_WRITER_TOKENS.values(), ids=BAD_WRITER_TOKENS.keys())
    def test_bad_writer_token_is_refused(self, populated: Storage, bad: Any) -> None:
        s = populated
        calls: dict[str, Callable[[], object]] = {
            "save": lambda: s.save_savepoint("run-1", 180_000, [("a", 1)], writer_token=bad),
        }
        self._assert_refused_unchanged(s, calls, InvalidArgumentError)

    @pytest.mark.parametrize("bad", BAD_ENTITIES.values(), ids=BAD_ENTITIES.keys())
    def test_bad_entities_are_refused(self, populated: Storage, bad: Any) -> None:
        s = populated
        calls: dict[str, Callable[[], object]] = {
            "new timestamp": lambda: s.save_savepoint("run-1", 180_000, bad),
            "replacing a savepoint": lambda: s.save_savepoint("run-1", 120_000, bad),
            "empty run": lambda: s.save_savepoint("run-2", 60_000, bad),
        }
        self._assert_refused_unchanged(s, calls, InvalidArgumentError)

    @pytest.mark.parametrize(
        ("state", "type_name"),
        [
            (Unencodable(), "Unencodable"),
            ({"deep": [1, Unencodable()]}, "Unencodable"),
            (lambda: None, "function"),
        ],
        ids=["top-level", "nested", "function"],
    )
    def test_unencodable_state_is_refused(
        self, populated: Storage, state: Any, type_name: str
    ) -> None:
        s = populated
        entities = [("fine", 1), ("the-culprit", state)]
        calls: dict[str, Callable[[], object]] = {
            "new timestamp": lambda: s.save_savepoint("run-1", 180_000, entities),
            "replacing a savepoint": lambda: s.save_savepoint("run-1", 120_000, entities),
        }
        for error in self._assert_refused_unchanged(s, calls, EncodeError):
            assert "the-culprit" in str(error)
            assert type_name in str(error)
            assert "run-1" in str(error)

    # ================================================================ values

    def test_safe_codec_round_trips_every_type(self, url: str, storage: Storage) -> None:
        storage.init_storage("run")
        entities = list(SAFE_VALUES.items())
        storage.save_savepoint("run", 60_000, entities)
        _assert_exact((60_000, entities), tuple(storage.get_latest_savepoint("run")))
        with self.open(url) as other:  # through the store, not a cache of this handle
            _assert_exact((60_000, entities), tuple(other.get_savepoint("run", 60_000)))

    def test_random_states_round_trip_exactly(self, storage: Storage) -> None:
        storage.init_storage("run")

        @settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(timestamp=timestamps(), entities=entity_lists())
        def round_trip(timestamp: int, entities: list[tuple[str, Any]]) -> None:
            storage.save_savepoint("run", timestamp, entities)
            _assert_exact((timestamp, entities), tuple(storage.get_savepoint("run", timestamp)))

        round_trip()

    def test_pickle_codec_is_an_explicit_opt_in(self, url: str) -> None:
        thing = PicklableThing("anvil", 50.5)
        with self.open(url, codec=PickleCodec(key=b"conformance-key")) as pickled:
            pickled.init_storage("run")
            pickled.save_savepoint("run", 60_000, [("thing", thing), ("plain", (1, 2))])
            assert pickled.get_latest_savepoint("run") == (
                60_000,
                [("thing", thing), ("plain", (1, 2))],
            )
            with self.open(url) as safe, pytest.raises(ConfigError):
                safe.get_latest_savepoint("run")  # the safe codec never unpickles

    # ================================================================ integrity

    @pytest.mark.parametrize("damage", DAMAGE.keys())
    @pytest.mark.parametrize("part", ["manifest", "pack"])
    def test_damaged_bytes_raise_corrupt(self, storage: Storage, part: Part, damage: str) -> None:
        storage.init_storage("run-t")
        storage.save_savepoint("run-t", 30_000, payload(30_000))
        storage.save_savepoint("run-t", 60_000, payload(60_000))
        self.tamper(storage, "run-t", 60_000, part, DAMAGE[damage])
        reads: dict[str, Callable[[], object]] = {
            "get_latest_savepoint": lambda: storage.get_latest_savepoint("run-t"),
            "get_savepoint": lambda: storage.get_savepoint("run-t", 60_000),
        }
        if part == "manifest":  # what describes a savepoint reads its manifest, not its states
            reads["describe_savepoint"] = lambda: storage.describe_savepoint("run-t", 60_000)
            reads["summarize_savepoint"] = lambda: storage.summarize_savepoint("run-t", 60_000)
        for label, read in reads.items():
            error = _refuses(read, CorruptSavepointError, f"{label} after {damage} {part}")
            assert "run-t" in str(error)
            assert "60000" in str(error)
        # The other savepoint is untouched, and the damaged one is still listed.
        assert storage.get_savepoint("run-t", 30_000) == (30_000, payload(30_000))
        assert [row.timestamp for row in storage.list_savepoints("run-t")] == [30_000, 60_000]

    def test_latest_timestamp_does_not_read_states(self, storage: Storage) -> None:
        storage.init_storage("run")
        storage.save_savepoint("run", 60_000, payload(60_000))
        self.tamper(storage, "run", 60_000, "pack", DAMAGE["flip-last-byte"])
        assert storage.get_latest_savepoint_timestamp("run") == 60_000

    # ================================================================ limits

    def test_a_savepoint_over_the_total_limit_is_refused_at_save(self, storage: Storage) -> None:
        storage.init_storage("run")
        storage.save_savepoint("run", 60_000, payload(60_000))
        before = _snapshot(storage)
        storage.max_savepoint_bytes = 1000
        big = [("a", "x" * 600), ("b", "y" * 600)]
        saves: dict[str, Callable[[], object]] = {
            "save_savepoint": lambda: storage.save_savepoint("run", 60_000, big),
            "save_encoded_savepoint": lambda: storage.save_encoded_savepoint(
                "run", 60_000, [(i, storage.encode_state("run", i, s)) for i, s in big]
            ),
        }
        for label, save in saves.items():
            error = _refuses(save, EncodeError, label)
            assert "run 'run': savepoint 60000" in str(error)
            assert "max_savepoint_bytes=1000" in str(error)
        storage.max_savepoint_bytes = MAX_SAVEPOINT_BYTES
        assert _snapshot(storage) == before
        # A reader with a lower limit than the writer's refuses, naming the option to raise.
        storage.max_savepoint_bytes = 100
        error = _refuses(
            lambda: storage.get_savepoint("run", 60_000), CorruptSavepointError, "low limit"
        )
        assert "max_savepoint_bytes=100" in str(error)

    # ================================================================ crafted savepoints

    def _stored_parts(
        self, storage: Storage, run_id: str, timestamp: int
    ) -> tuple[bytes, dict[str, bytes]]:
        """One savepoint's stored manifest and blobs (tables and packs, by name), read
        through the back doors."""
        names = self.raw_parts(storage, run_id, timestamp)
        manifest = self.raw_read(storage, run_id, timestamp, names[0])
        blobs = {
            name[len(PACK_PREFIX) :]: self.raw_read(storage, run_id, timestamp, name)
            for name in self.packs(names)
        }
        return manifest, blobs

    def _names(self, storage: Storage, run_id: str, timestamp: int) -> tuple[str, str]:
        """The savepoint's last table and one of its packs, to plant crafted bytes in."""
        manifest, blobs = self._stored_parts(storage, run_id, timestamp)
        tables = manifest_fields(manifest)["tables"]
        packs = [name for name in blobs if name not in tables]
        assert packs, f"savepoint {timestamp} wrote no pack of its own"
        return tables[-1], packs[0]

    def _forge(
        self, storage: Storage, run_id: str, timestamp: int, forge: Callable[..., object]
    ) -> None:
        """Store ``forge`` of the savepoint's fields in its place, every checksum valid."""
        manifest, blobs = self._stored_parts(storage, run_id, timestamp)
        table_name = manifest_fields(manifest)["tables"][-1]
        fields = savepoint_fields(manifest, blobs, run_id, timestamp)
        head, table = forged_parts(forge(fields), table_name)
        self.raw_write(storage, run_id, timestamp, MANIFEST, head)
        if table is not None:
            self.raw_write(storage, run_id, timestamp, PACK_PREFIX + table_name, table)

    def _plant(
        self, storage: Storage, run_id: str, timestamp: int, crafted: tuple[bytes, bytes, bytes]
    ) -> None:
        """Replace one savepoint by a crafted manifest, table and pack."""
        table_name, pack_name = self._names(storage, run_id, timestamp)
        manifest, table, pack = crafted
        self.raw_write(storage, run_id, timestamp, MANIFEST, manifest)
        self.raw_write(storage, run_id, timestamp, PACK_PREFIX + table_name, table)
        self.raw_write(storage, run_id, timestamp, PACK_PREFIX + pack_name, pack)

    def _assert_value_or_corrupt(self, storage: Storage, run_id: str, timestamp: int) -> None:
        """Every read of the savepoint ends, soon and within bounded memory, in a value or
        a CorruptSavepointError naming it (or, when the manifest names a codec this
        storage lacks, the ConfigError that says which)."""
        reads: dict[str, Callable[[], object]] = {
            "get_savepoint": lambda: storage.get_savepoint(run_id, timestamp),
            "read_encoded_savepoint": lambda: storage.read_encoded_savepoint(run_id, timestamp),
        }
        for label, read in reads.items():
            tracemalloc.start()
            started = time.monotonic()
            try:
                read()
                refusal = ""
            except CorruptSavepointError as exc:
                refusal = str(exc)
            except ConfigError as exc:
                refusal = str(exc)
                assert "was written with codec" in refusal, refusal
            except Exception as exc:
                pytest.fail(f"{label}: raised {type(exc).__name__} ({exc})")
            finally:
                elapsed = time.monotonic() - started
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
            assert not refusal or f"run {run_id!r}: savepoint {timestamp}" in refusal, refusal
            assert elapsed < FUZZ_READ_SECONDS, f"{label} took {elapsed:.1f} s"
            assert peak < FUZZ_READ_PEAK, f"{label} allocated {peak} bytes at its peak"

    @pytest.mark.parametrize("forgery", FORGERIES.keys())
    def test_crafted_manifest_with_valid_checksum_is_corrupt(
        self, url: str, storage: Storage, forgery: str
    ) -> None:
        storage.init_storage("run-f")
        storage.save_savepoint("run-f", 30_000, payload(30_000))
        storage.save_savepoint("run-f", 60_000, payload(60_000))
        self._forge(storage, "run-f", 60_000, FORGERIES[forgery])
        reads: dict[str, Callable[[], object]] = {
            "get_latest_savepoint": lambda: storage.get_latest_savepoint("run-f"),
            "get_savepoint": lambda: storage.get_savepoint("run-f", 60_000),
            "read_encoded_savepoint": lambda: storage.read_encoded_savepoint("run-f", 60_000),
        }
        for label, read in reads.items():
            error = _refuses(read, CorruptSavepointError, f"{label} of {forgery}")
            assert "run 'run-f': savepoint 60000" in str(error)
        assert storage.get_savepoint("run-f", 30_000) == (30_000, payload(30_000))
        assert [row.timestamp for row in storage.list_savepoints("run-f")] == [30_000, 60_000]
        # The run goes on from a handle that read what survives. (This handle's next save
        # would share the forged table, as a savepoint shares the packs of the ones before
        # it: damage to a shared blob shows in each savepoint that uses it.)
        storage.get_latest_savepoint_timestamp("run-f")
        with self.open(url) as other:
            other.save_savepoint("run-f", 90_000, payload(90_000))
            assert other.get_latest_savepoint("run-f") == (90_000, payload(90_000))

    def test_fuzzed_manifests_and_states_end_in_a_value_or_corrupt(
        self, url: str, storage: Storage
    ) -> None:
        storage.init_storage("run-z")
        storage.max_savepoint_bytes = FUZZ_SAVEPOINT_BYTES
        timestamps = iter(range(2, 1 << 40))

        @settings(
            max_examples=60,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )
        @given(forge=hostile_manifests(), states=st.lists(hostile_states(), min_size=1, max_size=4))
        def read_crafted(forge: Callable[..., object], states: list[bytes]) -> None:
            # A hostile manifest over a real savepoint, then crafted states under a sound
            # one; a fresh handle each time, so no save shares a crafted table.
            with self.open(url) as writer:
                writer.max_savepoint_bytes = FUZZ_SAVEPOINT_BYTES
                timestamp = next(timestamps)
                writer.save_savepoint("run-z", timestamp, payload(timestamp))
                self._forge(writer, "run-z", timestamp, forge)
                self._assert_value_or_corrupt(writer, "run-z", timestamp)
            with self.open(url) as writer:
                writer.max_savepoint_bytes = FUZZ_SAVEPOINT_BYTES
                timestamp = next(timestamps)
                writer.save_savepoint("run-z", timestamp, payload(timestamp))
                table_name, pack_name = self._names(writer, "run-z", timestamp)
                crafted = crafted_savepoint(timestamp, table_name, pack_name, states)
                self._plant(writer, "run-z", timestamp, crafted)
                self._assert_value_or_corrupt(writer, "run-z", timestamp)
                writer.delete_old_savepoints("run-z", 4)  # keeps the store small

        read_crafted()
        last = next(timestamps)  # the run goes on past every crafted savepoint
        with self.open(url) as writer:
            writer.save_savepoint("run-z", last, payload(last))
            assert wholeness_problem(writer.get_latest_savepoint("run-z")) is None

    def _read_capped(
        self, url: str, storage: Storage, run_id: str, limit: int, timestamps: list[int]
    ) -> list[str]:
        """Read the savepoints in a child process whose address space is capped; a line
        of :func:`~statestore.testing.worker.read_each` per savepoint.

        This store lives in one process: the child is forked with the handle open.
        """
        storage.max_savepoint_bytes = limit
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: cap, read, report, and leave without running any cleanup
            try:
                os.close(reader)
                cap_address_space()
                report = "\n".join(read_each(storage, run_id, timestamps))
                os.write(writer, report.encode())
            finally:
                os._exit(0)
        os.close(writer)
        with os.fdopen(reader, "rb") as pipe:
            report = pipe.read().decode()
        _, status = os.waitpid(pid, 0)
        assert status == 0, f"the capped reader ended with status {status}"
        return report.splitlines()

    def test_decompression_bombs_are_refused_before_inflating(
        self, url: str, storage: Storage
    ) -> None:
        gib = 1 << 30
        frame = bomb_frame(gib)  # ~32 KiB that inflate to 1 GiB
        plain = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(1 << 20))
        state = bytes([0xC0])  # nil: one MessagePack value
        bombs: dict[int, dict[str, Any]] = {  # timestamp: how the pack is crafted
            20_000: {"frame": frame, "declared": gib, "shared": True},  # one frame, 3 entities
            30_000: {"frame": bomb_frame(3 * gib), "declared": 3 * gib},  # over the 2 GiB limit
            40_000: {"frame": frame, "declared": 32 * gib},  # a body claiming 32 GiB
            50_000: {"frame": plain, "declared": 1 << 20},  # a frame that declares no size
            60_000: {"frame": frame, "declared": 1000},  # a frame declaring more than the table
        }
        storage.init_storage("bomb")
        storage.save_savepoint("bomb", 10_000, payload(10_000))  # the control: read in full
        for timestamp, crafting in bombs.items():
            storage.save_savepoint("bomb", timestamp, payload(timestamp))
            table_name, pack_name = self._names(storage, "bomb", timestamp)
            crafted = crafted_savepoint(timestamp, table_name, pack_name, [state] * 3, **crafting)
            self._plant(storage, "bomb", timestamp, crafted)
        lines = self._read_capped(url, storage, "bomb", MAX_SAVEPOINT_BYTES, [10_000, *bombs])
        assert lines[0] == f"OK 10000 {len(payload(10_000))}"
        for line, timestamp in zip(lines[1:], bombs, strict=True):
            assert line.startswith(f"CORRUPT {timestamp} run 'bomb': savepoint {timestamp}"), line
        assert "max_savepoint_bytes" in lines[2]
        # With the limit raised past 3 GiB, entities sharing one stored state are still refused.
        raised = self._read_capped(url, storage, "bomb", 4 * gib, [10_000, 20_000])
        assert raised[0] == f"OK 10000 {len(payload(10_000))}"
        assert raised[1].startswith("CORRUPT 20000"), raised[1]
        assert "names one stored state for two entities" in raised[1]

    # ================================================================ sizes

    def test_a_summary_totals_what_describe_lists(self, storage: Storage) -> None:
        storage.init_storage("run")
        storage.save_savepoint("run", 1, [(f"e{i}", {"v": i}) for i in range(50)])
        storage.save_savepoint("run", 2, [(f"e{i}", {"v": i + (i % 10 == 0)}) for i in range(50)])
        storage.save_changes("run", 3, [("new", "x" * 100)], removed=["e3"])
        for timestamp in (1, 2, 3):
            layout = storage.describe_savepoint("run", timestamp)
            assert storage.summarize_savepoint("run", timestamp) == SavepointSummary(
                timestamp,
                len(layout.states),
                layout.state_bytes,
                layout.states_written,
                layout.manifest_size,
                layout.packs,
            )
        written = [storage.summarize_savepoint("run", ts).states_written for ts in (1, 2, 3)]
        assert written == [50, 5, 1]

    def test_a_summary_follows_its_savepoint_when_another_handle_changes_it(
        self, url: str, storage: Storage
    ) -> None:
        storage.init_storage("run")
        storage.save_savepoint("run", 1, [("a", 1)])
        assert storage.summarize_savepoint("run", 1).entity_count == 1  # now remembered
        with self.open(url) as other:  # another process replaces it, then prunes it
            other.save_savepoint("run", 1, [("a", 1), ("b", "x" * 500)])
            replaced = storage.summarize_savepoint("run", 1)
            assert (replaced.entity_count, replaced.states_written) == (2, 2)
            assert replaced.state_bytes == storage.describe_savepoint("run", 1).state_bytes
            other.save_savepoint("run", 2, [("a", 2)])
            other.delete_old_savepoints("run", 1)
        with pytest.raises(NoSavepointError, match="run"):
            storage.summarize_savepoint("run", 1)
        with pytest.raises(NoSavepointError, match="nowhere"):
            storage.summarize_savepoint("nowhere", 1)

    # ================================================================ writer tokens

    def test_writer_tokens_grow(self, storage: Storage) -> None:
        storage.init_storage("run")
        tokens = [storage.acquire_writer("run") for _ in range(5)]
        assert all(type(token) is int for token in tokens)
        assert tokens == sorted(set(tokens))

    def test_acquire_writer_on_uninitialized_run_is_refused(self, storage: Storage) -> None:
        with pytest.raises(RunNotInitializedError, match="nowhere"):
            storage.acquire_writer("nowhere")
        assert storage.list_runs() == []

    def test_current_writer_is_the_last_token_taken_and_when(
        self, url: str, storage: Storage
    ) -> None:
        storage.init_storage("run")
        assert storage.current_writer("run") is None  # no writer yet
        before = epoch_ms()
        first = storage.acquire_writer("run")
        after = epoch_ms()
        taken = storage.current_writer("run")
        assert taken is not None
        assert taken.token == first
        # File system clocks tick coarsely: a file's time may trail the clock by a tick.
        assert taken.taken_at is not None
        assert before - CLOCK_TICK_MS <= taken.taken_at <= after + CLOCK_TICK_MS
        time.sleep(CLOCK_TICK_MS * 2 / 1000)
        with self.open(url) as other:  # a writer of another process takes over
            second = other.acquire_writer("run")
        again = storage.current_writer("run")
        assert again is not None
        assert again.token == second > first
        assert again.taken_at is not None
        assert again.taken_at > taken.taken_at
        storage.save_savepoint("run", 60_000, [("a", 1)], writer_token=second)
        assert storage.current_writer("run") == again  # a save leaves the token as it is

    def test_current_writer_of_uninitialized_run_is_refused(self, storage: Storage) -> None:
        with pytest.raises(RunNotInitializedError, match="nowhere"):
            storage.current_writer("nowhere")
        assert storage.list_runs() == []

    def test_stale_writer_stores_nothing(self, url: str, populated: Storage) -> None:
        first = populated.acquire_writer("run-1")
        populated.save_savepoint("run-1", 180_000, [("a", "first")], writer_token=first)
        with self.open(url) as other:  # a second writer, as from another process
            second = other.acquire_writer("run-1")
        before = _snapshot(populated)
        for ts in [240_000, 180_000]:  # a new savepoint, and replacing one
            with pytest.raises(StaleWriterError, match="run-1"):
                populated.save_savepoint("run-1", ts, [("a", "stale")], writer_token=first)
        assert _snapshot(populated) == before
        populated.save_savepoint("run-1", 240_000, [("a", "second")], writer_token=second)
        populated.save_savepoint("run-1", 300_000, [("a", "untokened")])  # no token: no fence
        assert populated.get_savepoint("run-1", 240_000) == (240_000, [("a", "second")])

    # ================================================================ handles

    def test_close_and_context_manager(self, url: str) -> None:
        handle = self.open(url)
        with handle as entered:
            assert entered is handle  # ``with open(...) as s`` gives the handle itself
            entered.init_storage("run")
            entered.save_savepoint("run", 60_000, [("a", 1)])
        handle.close()  # closing twice is harmless

        def fail_inside() -> None:
            with self.open(url) as failing:
                failing.save_savepoint("run", 120_000, [("a", 2)])
                raise RuntimeError("raised inside the with block")

        with pytest.raises(RuntimeError, match="inside"):  # propagates, not swallowed
            fail_inside()
        with self.open(url) as reopened:  # what the closed handles saved is stored
            assert reopened.list_runs() == ["run"]
            assert reopened.get_latest_savepoint("run") == (120_000, [("a", 2)])
            assert reopened.get_savepoint("run", 60_000) == (60_000, [("a", 1)])

    def test_two_handles_see_one_store(self, url: str, storage: Storage) -> None:
        with self.open(url) as other:
            storage.init_storage("run")
            storage.save_savepoint("run", 60_000, [("a", 1)])
            assert other.get_latest_savepoint("run") == (60_000, [("a", 1)])
            other.delete_run("run")
            assert storage.is_initialized("run") is False

    @pytest.mark.parametrize("meddling", ["pruned", "replaced", "recreated"])
    def test_saves_survive_changes_made_through_another_handle(
        self, url: str, storage: Storage, meddling: str
    ) -> None:
        # A handle may remember its previous savepoint to save only what changed; other
        # handles may since have deleted what it remembers.
        states = [(f"e{i}", {"i": i, "text": "x" * 300}) for i in range(40)]
        storage.init_storage("run")
        storage.save_savepoint("run", 1, states)
        with self.open(url) as other:
            if meddling == "pruned":
                other.save_savepoint("run", 2, [("other", 2)])
                other.delete_old_savepoints("run", 1)
            elif meddling == "replaced":
                other.save_savepoint("run", 1, [("other", 1)])
            else:
                other.delete_run("run")
                other.init_storage("run")
            storage.save_savepoint("run", 3, states)
            assert other.get_latest_savepoint("run") == (3, states)

    def test_data_persists_across_reopen(self, url: str) -> None:
        if not self.persistent:
            pytest.skip("this backend does not persist data")
        with self.open(url) as first:
            first.init_storage("run")
            first.init_storage("empty")
            first.save_savepoint("run", 60_000, list(SAFE_VALUES.items()))
            first.save_savepoint("run", 120_000, [("a", 1)])
            token = first.acquire_writer("run")
            before = first.list_savepoints("run")
        with self.open(url) as second:
            assert second.list_runs() == ["empty", "run"]
            assert second.list_savepoints("run") == before
            assert second.get_latest_savepoint("run") == (120_000, [("a", 1)])
            _assert_exact(
                (60_000, list(SAFE_VALUES.items())), tuple(second.get_savepoint("run", 60_000))
            )
            assert second.acquire_writer("run") > token

    # ================================================================ disk usage

    def test_disk_usage_counts_what_is_stored(self, storage: Storage) -> None:
        """A store either has no local size (None, always) or counts its saves and
        gives the space of a deleted run back after ``compact``."""
        empty = storage.disk_usage()
        storage.init_storage("run")
        state = os.urandom(256 << 10)  # incompressible: stored bytes >= its length
        storage.save_savepoint("run", 60_000, [("big", state)])
        saved = storage.disk_usage()
        if empty is None:
            assert saved is None, "disk_usage() is None for an empty store, then a size"
            return
        assert isinstance(saved, int)
        assert saved >= empty + len(state), f"{saved} bytes after saving {len(state)}"
        storage.delete_run("run")
        storage.compact()
        freed = storage.disk_usage()
        assert freed is not None
        assert freed <= saved - len(state), f"{freed} bytes after dropping the run"

    # ================================================================ concurrency

    def test_threads_share_one_storage(self, storage: Storage) -> None:
        threads = 4
        saves = 8
        for run_id in ["shared", *(f"own-{i}" for i in range(threads))]:
            storage.init_storage(run_id)
        start = threading.Barrier(threads)

        def work(i: int) -> None:
            start.wait()
            for k in range(saves):
                ts = 1_000 + k * threads + i
                storage.save_savepoint(f"own-{i}", ts, payload(ts))
                storage.save_savepoint("shared", ts, payload(ts))
                if k % 3 == 2:
                    storage.delete_old_savepoints("shared", 3)

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(work, range(threads)))  # re-raises any worker's error
        for i in range(threads):
            assert len(storage.list_savepoints(f"own-{i}")) == saves
            self._assert_whole(storage, f"own-{i}", 1_000 + (saves - 1) * threads + i)
        self._assert_whole(storage, "shared", 1_000 + saves * threads - 1)

    def _assert_whole(self, storage: Storage, run_id: str, latest: int) -> None:
        """Every savepoint of the run decodes whole, and the latest is ``latest``."""
        assert storage.get_latest_savepoint_timestamp(run_id) == latest
        assert storage.get_latest_savepoint(run_id).timestamp == latest
        for row in storage.list_savepoints(run_id):
            problem = wholeness_problem(storage.get_savepoint(run_id, row.timestamp))
            assert problem is None, f"run {run_id!r}: {problem}"

    # ================================================================ model-based

    def test_matches_a_dict_model(self, url: str) -> None:
        check_against_model(lambda: self.open(url), reopen=self.persistent)


class StorageConformance(CrashTests, InProcessConformance):
    """The whole suite, fault tests included: subclass it per backend.

    Provide ``url`` (a fresh, empty store for each test) and the three raw back doors
    of :class:`~statestore.testing.hooks.BackendHooks`; name an :attr:`opener` when the
    backend is not registered by URL. The suite opens ``url`` with :meth:`open`, several
    times when it needs several handles, and in child processes through the opener.
    """

    def _read_capped(
        self, url: str, storage: Storage, run_id: str, limit: int, timestamps: list[int]
    ) -> list[str]:
        """As the in-process suite's, but in a fresh interpreter that opens ``url``."""
        args = ["read", url, run_id, str(limit), *map(str, timestamps)]
        return self.finish(self.spawn(*args)).splitlines()

    def test_processes_share_one_store(self, url: str, storage: Storage) -> None:
        writers, saves = 3, 10
        # Three writers interleave timestamps in one run, pruning it; a fourth has its own.
        plans = [("shared", i + 1, writers, 3) for i in range(writers)] + [("own", 1, 1, 0)]
        children = [
            self.spawn("save", url, run_id, str(first), str(step), str(saves), str(keep))
            for run_id, first, step, keep in plans
        ]
        for child, (_, first, step, _) in zip(children, plans, strict=True):
            acks = [f"ACK {first + k * step}" for k in range(saves)]
            assert self.finish(child).splitlines() == acks
        self._assert_whole(storage, "shared", writers * saves)
        self._assert_whole(storage, "own", saves)
        assert len(storage.list_savepoints("own")) == saves

    def test_writer_token_fences_other_processes(self, url: str, storage: Storage) -> None:
        storage.init_storage("run")
        mine = storage.acquire_writer("run")
        theirs = int(self.finish(self.spawn("acquire", url, "run")))
        assert theirs > mine
        with pytest.raises(StaleWriterError):
            storage.save_savepoint("run", 60_000, [("a", 1)], writer_token=mine)
        assert storage.list_savepoints("run") == []
        storage.save_savepoint("run", 60_000, [("a", 1)], writer_token=theirs)
