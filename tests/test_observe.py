"""OpenTelemetry: each storage operation emits the span and the metrics docs/observability.md
lists, with the right values, read back through the SDK's in-memory exporter and reader."""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import damage_pack
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import statestore
from statestore import observe, ops
from statestore.storage import Storage

RUN = "run-1"


class Telemetry:
    """What statestore emitted during one test."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def spans(self, operation: str | None = None) -> list[ReadableSpan]:
        found = self.exporter.get_finished_spans()
        return [
            s
            for s in found
            if operation is None or (s.attributes or {}).get("db.operation.name") == operation
        ]

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]

    def total(self, name: str, **attrs: str) -> float:
        """The sum of a counter, or of a histogram's recorded values, over matching points."""
        total = 0.0
        for point in self.points(name):
            if all(point.attributes.get(k.replace("_", ".")) == v for k, v in attrs.items()):
                total += point.sum if hasattr(point, "sum") else point.value
        return total

    def count(self, name: str) -> int:
        return sum(point.count for point in self.points(name))


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    collected = Telemetry()
    observe.use(collected.tracer_provider, collected.meter_provider)
    yield collected
    observe.use()


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    with statestore.open_storage(f"sqlite:///{tmp_path / 'store.db'}") as opened:
        opened.init_storage(RUN)
        yield opened


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def entities(step: int) -> list[tuple[str, Any]]:
    return [("a", {"n": step, "pad": "x" * 2000}), ("b", list(range(300))), ("c", step)]


def test_a_save_emits_a_client_span_and_its_figures(telemetry: Telemetry, storage: Storage) -> None:
    storage.save_savepoint(RUN, 60_000, entities(1))
    (span,) = telemetry.spans("save_savepoint")
    assert span.name == f"save_savepoint {RUN}"
    assert span.kind is SpanKind.CLIENT
    attrs = attributes(span)
    (row,) = storage.list_savepoints(RUN)
    layout = storage.describe_savepoint(RUN, 60_000)
    full = layout.manifest_size + sum(layout.packs.values())
    assert attrs == {
        "db.system.name": "statestore",
        "db.operation.name": "save_savepoint",
        "db.collection.name": RUN,
        "statestore.backend": "SQLiteStorage",
        "statestore.savepoint.timestamp": 60_000,
        "statestore.savepoint.size": row.size,
        "statestore.savepoint.entities": 3,
        "statestore.savepoint.full_size": full,
        "statestore.savepoint.states.written": 3,
        "statestore.savepoint.states.reused": 0,
    }
    assert span.status.status_code is StatusCode.UNSET
    assert telemetry.total("statestore.savepoint.completed") == 1
    assert telemetry.total("statestore.savepoint.failed") == 0
    assert telemetry.total("statestore.savepoint.size") == row.size
    assert telemetry.total("statestore.savepoint.full_size") == full
    assert telemetry.total("statestore.savepoint.entities") == 3
    assert telemetry.count("statestore.savepoint.duration") == 1
    saves = [
        p
        for p in telemetry.points("db.client.operation.duration")
        if p.attributes["db.operation.name"] == "save_savepoint"
    ]
    assert [p.count for p in saves] == [1]
    assert 0 < saves[0].sum < 10


def test_an_incremental_save_writes_less_than_it_refers_to(
    telemetry: Telemetry, storage: Storage
) -> None:
    storage.save_savepoint(RUN, 60_000, entities(1))
    storage.save_savepoint(RUN, 120_000, entities(2))  # only "a" and "c" change
    rows = storage.list_savepoints(RUN)
    first, second = (attributes(span) for span in telemetry.spans("save_savepoint"))
    assert [first["statestore.savepoint.size"], second["statestore.savepoint.size"]] == [
        row.size for row in rows
    ]
    assert second["statestore.savepoint.size"] < second["statestore.savepoint.full_size"]
    assert telemetry.total("statestore.savepoint.size") == sum(row.size for row in rows)
    assert telemetry.total("statestore.savepoint.completed") == 2
    assert (
        second["statestore.savepoint.states.written"],
        second["statestore.savepoint.states.reused"],
    ) == (2, 1)
    assert telemetry.total("statestore.savepoint.states.written") == 3 + 2
    assert telemetry.total("statestore.savepoint.states.reused") == 1
    storage.save_changes(RUN, 180_000, [("c", 3)])  # a change set: one state written
    (changes,) = (attributes(span) for span in telemetry.spans("save_changes"))
    assert changes["statestore.savepoint.states.written"] == 1
    assert changes["statestore.savepoint.states.reused"] == 2


def test_no_metric_carries_the_run_id(telemetry: Telemetry, storage: Storage) -> None:
    storage.save_savepoint(RUN, 60_000, entities(1))
    storage.get_latest_savepoint(RUN)
    storage.delete_old_savepoints(RUN, 0)
    data = telemetry.reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "statestore"
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    assert point.attributes is not None
                    assert RUN not in set(map(str, point.attributes.values())), metric.name
                    assert "db.collection.name" not in point.attributes


def test_every_operation_gets_a_span_with_its_duration(
    telemetry: Telemetry, storage: Storage
) -> None:
    storage.save_savepoint(RUN, 60_000, entities(1))
    storage.is_initialized(RUN)
    storage.list_runs()
    storage.list_savepoints(RUN)
    storage.get_latest_savepoint_timestamp(RUN)
    storage.get_savepoint(RUN, 60_000)
    storage.read_encoded_savepoint(RUN, 60_000)
    storage.acquire_writer(RUN)
    storage.current_writer(RUN)
    storage.compact()
    storage.delete_run(RUN)
    names = [s.attributes["db.operation.name"] for s in telemetry.spans() if s.attributes]
    # The fixture's init_storage comes first; the save reads its full size without a
    # span of its own.
    assert names == [
        "init_storage", "save_savepoint", "is_initialized", "list_runs", "list_savepoints",
        "get_latest_savepoint_timestamp", "get_savepoint", "read_encoded_savepoint",
        "acquire_writer", "current_writer", "compact", "delete_run",
    ]  # fmt: skip
    durations = {
        p.attributes["db.operation.name"]: p.count
        for p in telemetry.points("db.client.operation.duration")
    }
    assert durations == dict.fromkeys(names, 1)
    assert telemetry.count("statestore.restore.duration") == 1  # get_savepoint
    (read,) = telemetry.spans("read_encoded_savepoint")
    assert attributes(read)["statestore.savepoint.timestamp"] == 60_000


def test_an_error_is_recorded_on_the_span_and_the_duration(
    telemetry: Telemetry, storage: Storage
) -> None:
    with pytest.raises(statestore.NoSavepointError):
        storage.get_latest_savepoint(RUN)
    (span,) = telemetry.spans("get_latest_savepoint")
    assert span.status.status_code is StatusCode.ERROR
    error_type = "statestore.errors.NoSavepointError"
    assert attributes(span)["error.type"] == error_type
    assert [event.name for event in span.events] == ["exception"]
    (point,) = [
        p
        for p in telemetry.points("db.client.operation.duration")
        if p.attributes["db.operation.name"] == "get_latest_savepoint"
    ]
    assert point.attributes["error.type"] == error_type
    (restore,) = telemetry.points("statestore.restore.duration")
    assert restore.attributes["error.type"] == error_type


def test_a_stale_writer_counts_as_a_failed_savepoint_and_a_rejection(
    telemetry: Telemetry, storage: Storage
) -> None:
    old = storage.acquire_writer(RUN)
    storage.acquire_writer(RUN)
    with pytest.raises(statestore.StaleWriterError):
        storage.save_savepoint(RUN, 60_000, entities(1), writer_token=old)
    error = "statestore.errors.StaleWriterError"
    assert telemetry.total("statestore.savepoint.failed", error_type=error) == 1
    assert telemetry.total("statestore.writer.stale") == 1
    assert telemetry.total("statestore.savepoint.completed") == 0
    assert telemetry.points("statestore.savepoint.size") == []


def test_a_prune_counts_the_savepoints_and_the_bytes_it_freed(
    telemetry: Telemetry, storage: Storage
) -> None:
    for step in (1, 2, 3, 4):
        storage.save_savepoint(RUN, step * 60_000, entities(step))
    storage.delete_old_savepoints(RUN, 3)
    assert telemetry.total("statestore.prune.savepoints") == 1
    plan = ops.plan_prune(storage, RUN, 1)
    assert plan.bytes_freed
    ops.apply_prune(storage, plan)
    assert telemetry.total("statestore.prune.savepoints") == 3
    assert telemetry.total("statestore.prune.freed") == plan.bytes_freed
    (span,) = telemetry.spans("delete_old_savepoints")[-1:]
    assert attributes(span)["statestore.prune.savepoints"] == 2
    assert "statestore.savepoint.timestamp" not in attributes(span)  # keep_n is no timestamp


def test_a_resume_past_a_damaged_savepoint_counts_the_fallback(
    telemetry: Telemetry, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'engine.db'}"
    with statestore.open_storage(url) as storage:
        engine = statestore.StateStore(RUN, 60_000, storage)
        (entity,) = engine.start(0, [("a", 0)]).entities
        for step in (1, 2, 3):
            # The input before the savepoint (at the entity's time), then the acknowledgement.
            entity.update_state(entity.timestamp, f"{step}" * 100).ack_processed_time(step * 60_000)
    damage_pack(url, RUN, 180_000)
    with statestore.open_storage(url) as storage:
        resumed = statestore.StateStore(RUN, 60_000, storage).start(0, [("a", 0)])
    assert resumed.timestamp == 120_000
    assert telemetry.total("statestore.restore.fallback") == 1
    # The latest (damaged), the same by timestamp on the way down, then the intact one.
    assert telemetry.count("statestore.restore.duration") == 3


def test_engine_status_sums_over_engines_and_leaves_with_them(telemetry: Telemetry) -> None:
    class Engine:
        pass

    one, two = Engine(), Engine()
    observe.report_engine_status(one, pending_savepoints=2, stalled_entities=1)
    observe.report_engine_status(two, pending_savepoints=3, stalled_entities=0)
    observe.report_engine_status(one, pending_savepoints=1, stalled_entities=1)
    assert telemetry.total("statestore.engine.pending") == 4
    assert telemetry.total("statestore.engine.stalled") == 1
    del one
    gc.collect()
    observe.report_engine_status(two, pending_savepoints=3, stalled_entities=0)  # unchanged
    assert telemetry.total("statestore.engine.pending") == 3
    assert telemetry.total("statestore.engine.stalled") == 0


def test_an_engine_collected_inside_observe_s_locked_section_does_not_hang(
    telemetry: Telemetry,
) -> None:
    """A collection can start at any allocation, inside observe's own locked sections
    too: an engine's finalizer must not wait for that lock (it once deadlocked)."""

    class Engine:
        pass

    gone, staying = Engine(), Engine()
    observe.report_engine_status(gone, pending_savepoints=5, stalled_entities=2)
    with observe._status_lock:
        del gone
        gc.collect()  # the finalizer runs here, in the thread that holds the lock
    observe.report_engine_status(staying, pending_savepoints=1, stalled_entities=1)
    assert telemetry.total("statestore.engine.pending") == 1
    assert telemetry.total("statestore.engine.stalled") == 1


def test_a_stalled_engine_reports_its_pending_savepoints(
    telemetry: Telemetry, tmp_path: Path
) -> None:
    with statestore.open_storage(f"sqlite:///{tmp_path / 'stall.db'}") as storage:
        engine = statestore.StateStore(RUN, 60_000, storage)
        fast, slow = engine.start(0, [("fast", 0), ("slow", 0)]).entities
        fast.ack_processed_time(4 * 60_000)  # "slow" holds savepoints 60000..240000 back
        assert engine.status().pending_savepoints == 4
        assert telemetry.total("statestore.engine.pending") == 4
        assert telemetry.total("statestore.engine.stalled") == 1
        slow.ack_processed_time(4 * 60_000)
        assert telemetry.total("statestore.engine.pending") == 0
        assert telemetry.total("statestore.engine.stalled") == 0


def test_every_listed_operation_is_instrumented() -> None:
    for name in observe.OPERATIONS:
        assert getattr(getattr(Storage, name), "__statestore_observed__", False), name


def test_without_opentelemetry_nothing_is_wrapped_and_saves_work() -> None:
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'opentelemetry':\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import statestore\n"
        "from statestore import observe\n"
        "assert not observe.AVAILABLE\n"
        "assert not hasattr(statestore.Storage.save_savepoint, '__wrapped__')\n"
        "with statestore.open_storage('memory://') as s:\n"
        "    s.init_storage('r')\n"
        "    s.save_savepoint('r', 1, [('a', 1)])\n"
        "    assert s.get_latest_savepoint('r').entities == [('a', 1)]\n"
        "assert not any(m.startswith('opentelemetry') for m in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
