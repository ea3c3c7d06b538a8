"""OpenTelemetry spans and metrics of every storage operation (docs/observability.md).

statestore depends on ``opentelemetry-api`` only, and only when it is installed (the
``otel`` extra): without it nothing here is wrapped and nothing costs anything. With it
and no provider configured, the API's no-op objects make each operation a few calls
dearer; configure an SDK (or call :func:`use`) and the spans and metrics appear.

* A span per public :class:`~statestore.storage.Storage` operation, named and described
  by the database-client semantic conventions: ``db.system.name`` "statestore",
  ``db.operation.name`` the method, ``db.collection.name`` the run, ``error.type`` and
  an error status on failure. Spans carry the run id; metrics never do (one time series
  per run would grow without bound).
* ``db.client.operation.duration`` for every operation, and ``statestore.*`` metrics of
  savepoints, restores, prunes and writers (the table in docs/observability.md).

The storage base applies :func:`instrument_operations` to its public methods and
:func:`watch_primitives` to each backend (to see what a save wrote); the engine calls
:func:`record_fallback` and may call :func:`report_engine_status`.
"""

from __future__ import annotations

import collections
import contextvars
import functools
import importlib.metadata
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from . import errors

try:
    from opentelemetry import metrics, trace
except ImportError:  # the otel extra is not installed: instrument nothing
    AVAILABLE = False
else:
    AVAILABLE = True

__all__ = [
    "AVAILABLE",
    "LOADS",
    "OPERATIONS",
    "SAVES",
    "SCOPE",
    "SYSTEM",
    "TIMESTAMPED",
    "instrument_operations",
    "record_fallback",
    "record_prune_freed",
    "report_engine_status",
    "use",
    "watch_primitives",
]

#: The instrumentation scope every span and metric is reported under.
SCOPE: Final = "statestore"
#: ``db.system.name`` of every span and of ``db.client.operation.duration``.
SYSTEM: Final = "statestore"

#: The public Storage methods that get a span and a duration, by name. Pure encoding and
#: decoding (``encode_state``, ``decode_encoded_savepoint``) touch no store and are left out.
OPERATIONS: Final = (
    "is_initialized",
    "init_storage",
    "save_savepoint",
    "save_encoded_savepoint",
    "save_changes",
    "save_encoded_changes",
    "get_latest_savepoint",
    "get_latest_savepoint_timestamp",
    "get_savepoint",
    "load_savepoint",
    "list_savepoints",
    "read_encoded_savepoint",
    "describe_savepoint",
    "summarize_savepoint",
    "delete_savepoints",
    "delete_old_savepoints",
    "delete_run",
    "list_runs",
    "acquire_writer",
    "current_writer",
    "compact",
)
#: The operations that persist a savepoint.
SAVES: Final = frozenset(
    {"save_savepoint", "save_encoded_savepoint", "save_changes", "save_encoded_changes"}
)
#: The operations on one savepoint, named by its timestamp (the second argument).
TIMESTAMPED: Final = SAVES | {
    "get_savepoint", "load_savepoint", "describe_savepoint", "summarize_savepoint",
    "read_encoded_savepoint",
}  # fmt: skip
#: The operations that read and decode a savepoint, as a resume does.
LOADS: Final = frozenset({"get_latest_savepoint", "get_savepoint", "load_savepoint"})

# Histogram buckets: durations from 1 ms to a minute (the semantic conventions' advice
# for db.client.operation.duration), sizes from 1 KiB to 4 GiB by powers of four.
_DURATION_BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0]
_SIZE_BUCKETS = [float(1024 * 4**i) for i in range(12)]


@dataclass
class _Operation:
    """What the primitives of one running operation reported (see :func:`watch_primitives`)."""

    record: Any = None  # the SavepointRecord a save committed
    deleted: int | None = None  # savepoints a prune deleted


_current: contextvars.ContextVar[_Operation | None] = contextvars.ContextVar(
    "statestore_operation", default=None
)


class _Telemetry:
    """The tracer and every instrument, made from one pair of providers."""

    def __init__(self, tracer_provider: Any, meter_provider: Any) -> None:
        version = _version()
        self.tracer = trace.get_tracer(SCOPE, version, tracer_provider=tracer_provider)
        meter = metrics.get_meter(SCOPE, version or "", meter_provider=meter_provider)
        self.meter_provider = meter_provider

        def seconds(name: str, description: str) -> metrics.Histogram:
            return meter.create_histogram(
                name, "s", description, explicit_bucket_boundaries_advisory=_DURATION_BUCKETS
            )

        def size(name: str, description: str) -> metrics.Histogram:
            return meter.create_histogram(
                name, "By", description, explicit_bucket_boundaries_advisory=_SIZE_BUCKETS
            )

        count = meter.create_counter
        self.duration = seconds(
            "db.client.operation.duration", "Duration of database client operations."
        )
        self.completed = count("statestore.savepoint.completed", "{savepoint}", "Savepoints saved.")
        self.failed = count("statestore.savepoint.failed", "{savepoint}", "Saves that raised.")
        self.save_duration = seconds("statestore.savepoint.duration", "Time to save a savepoint.")
        self.size = size("statestore.savepoint.size", "Bytes one savepoint wrote to the store.")
        self.full_size = size(
            "statestore.savepoint.full_size", "Bytes one savepoint refers to, earlier ones' too."
        )
        self.entities = meter.create_histogram(
            "statestore.savepoint.entities", "{entity}", "Entities in one savepoint."
        )
        self.states_written = count(
            "statestore.savepoint.states.written", "{state}", "States a save stored anew."
        )
        self.states_reused = count(
            "statestore.savepoint.states.reused", "{state}", "States a save took from the last."
        )
        self.restore = seconds(
            "statestore.restore.duration", "Time to read and decode a savepoint."
        )
        self.fallback = count(
            "statestore.restore.fallback", "{savepoint}", "Damaged savepoints a resume skipped."
        )
        self.stale = count(
            "statestore.writer.stale", "{save}", "Saves refused: another writer took the run."
        )
        self.pruned = count(
            "statestore.prune.savepoints", "{savepoint}", "Savepoints deleted by a prune."
        )
        self.freed = count("statestore.prune.freed", "By", "Bytes of savepoint data pruned.")
        self.pending = meter.create_up_down_counter(
            "statestore.engine.pending", "{savepoint}", "Savepoints waiting for entities."
        )
        self.stalled = meter.create_up_down_counter(
            "statestore.engine.stalled", "{entity}", "Entities holding back a savepoint."
        )

    def recording(self, span: Any) -> bool:
        """Whether anything listens: worth the extra read that measures a save's full size."""
        if span.is_recording():
            return True
        provider = self.meter_provider or metrics.get_meter_provider()
        return type(provider).__name__ not in _NO_PROVIDER


#: The API's stand-ins while no SDK is configured (by class name: the proxies are private).
_NO_PROVIDER = frozenset(
    {"ProxyTracerProvider", "NoOpTracerProvider", "_ProxyMeterProvider", "NoOpMeterProvider"}
)


def _listening() -> bool:
    """Whether a provider is configured; until one is, operations skip the instruments
    (the API's no-op objects would still cost some 15 µs per operation)."""
    return (
        _providers != (None, None)
        or type(trace.get_tracer_provider()).__name__ not in _NO_PROVIDER
        or type(metrics.get_meter_provider()).__name__ not in _NO_PROVIDER
    )


def _version() -> str | None:
    try:
        return importlib.metadata.version("statestore")
    except importlib.metadata.PackageNotFoundError:
        return None


_lock = threading.Lock()
_telemetry: _Telemetry | None = None
_providers: tuple[Any, Any] = (None, None)


def use(tracer_provider: Any = None, meter_provider: Any = None) -> None:
    """Send statestore's spans and metrics to these providers instead of the global ones.

    ``None`` (the default) means OpenTelemetry's global provider. For a process that keeps
    statestore's telemetry apart, and for tests.
    """
    global _telemetry, _providers  # noqa: PLW0603 - the one process-wide choice
    with _lock:
        _providers = (tracer_provider, meter_provider)
        _telemetry = None
    with _status_lock:  # new instruments start from zero: engines report to them anew
        _engine_status.clear()
        _retired.clear()


def _get() -> _Telemetry:
    global _telemetry  # noqa: PLW0603 - made once, on first use
    telemetry = _telemetry
    if telemetry is None:
        with _lock:
            if _telemetry is None:
                _telemetry = _Telemetry(*_providers)
            telemetry = _telemetry
    return telemetry


def _common(storage: object, operation: str) -> dict[str, str]:
    return {
        "db.system.name": SYSTEM,
        "db.operation.name": operation,
        "statestore.backend": type(storage).__name__,
    }


def _error_type(exc: BaseException) -> str:
    """``error.type``: the exception's full class name, as the conventions ask."""
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def instrument_operations(cls: type) -> None:
    """Wrap each of :data:`OPERATIONS` on ``cls`` in a span and its metrics, once."""
    if not AVAILABLE:
        return
    for name in OPERATIONS:
        method = cls.__dict__.get(name)  # one renamed is left out (a test names it)
        if method is not None and not getattr(method, "__statestore_observed__", False):
            setattr(cls, name, _observed(name, method))


def _observed(operation: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def observed(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not _listening():
            return method(self, *args, **kwargs)
        telemetry = _get()
        run_id = args[0] if args and isinstance(args[0], str) else kwargs.get("run_id")
        attrs = _common(self, operation)
        span_attrs: dict[str, Any] = dict(attrs)
        if isinstance(run_id, str):
            span_attrs["db.collection.name"] = run_id
        timestamp = args[1] if len(args) > 1 else kwargs.get("timestamp")
        if operation in TIMESTAMPED and type(timestamp) is int:
            span_attrs["statestore.savepoint.timestamp"] = timestamp
        name = f"{operation} {run_id}" if isinstance(run_id, str) else operation
        op = _Operation()
        token = _current.set(op)
        start = time.perf_counter()
        with telemetry.tracer.start_as_current_span(
            name,
            kind=trace.SpanKind.CLIENT,
            attributes=span_attrs,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                result = method(self, *args, **kwargs)
            except BaseException as exc:
                elapsed = time.perf_counter() - start
                _current.reset(token)
                error = {**attrs, "error.type": _error_type(exc)}
                span.set_attribute("error.type", error["error.type"])
                span.record_exception(exc)
                span.set_status(trace.StatusCode.ERROR, str(exc))
                telemetry.duration.record(elapsed, error)
                _failed(telemetry, operation, exc, elapsed, error)
                raise
            elapsed = time.perf_counter() - start
            _current.reset(token)
            telemetry.duration.record(elapsed, attrs)
            _succeeded(telemetry, operation, op, span, elapsed=elapsed, attrs=attrs)
            if op.record is not None:  # what the save wrote
                _record_save(telemetry, op.record, span=span, attrs=attrs)
            return result

    observed.__statestore_observed__ = True  # type: ignore[attr-defined]
    return observed


def _failed(
    telemetry: _Telemetry, operation: str, exc: BaseException, elapsed: float, error: dict[str, str]
) -> None:
    if operation in SAVES:
        telemetry.failed.add(1, error)
        telemetry.save_duration.record(elapsed, error)
        if isinstance(exc, errors.StaleWriterError):
            telemetry.stale.add(1, error)
    elif operation in LOADS:
        telemetry.restore.record(elapsed, error)


def _succeeded(
    telemetry: _Telemetry,
    operation: str,
    op: _Operation,
    span: Any,
    *,
    elapsed: float,
    attrs: dict[str, str],
) -> None:
    if operation in LOADS:
        telemetry.restore.record(elapsed, attrs)
    if op.deleted:
        telemetry.pruned.add(op.deleted, attrs)
        span.set_attribute("statestore.prune.savepoints", op.deleted)
    if operation in SAVES:
        telemetry.completed.add(1, attrs)
        telemetry.save_duration.record(elapsed, attrs)


def _record_save(telemetry: _Telemetry, record: Any, *, span: Any, attrs: dict[str, str]) -> None:
    """What the committed ``record`` of a save says: sizes, entities, states reused."""
    facts = {
        "statestore.savepoint.size": record.size,
        "statestore.savepoint.entities": record.entity_count,
    }
    telemetry.size.record(record.size, attrs)
    telemetry.entities.record(record.entity_count, attrs)
    # Incremental saves: the states written anew and those taken from earlier savepoints.
    written, reused = record.states_written, record.states_reused
    telemetry.states_written.add(written, attrs)
    telemetry.states_reused.add(reused, attrs)
    facts["statestore.savepoint.states.written"] = written
    facts["statestore.savepoint.states.reused"] = reused
    # The full size: the record knows the sizes of the earlier packs it refers to.
    telemetry.full_size.record(record.full_size, attrs)
    facts["statestore.savepoint.full_size"] = record.full_size
    span.set_attributes(facts)


def watch_primitives(cls: type) -> None:
    """Let the running operation see what ``cls``'s ``_commit`` stored and
    ``_delete_savepoints`` deleted (the public methods do not return it)."""
    if not AVAILABLE:
        return
    commit = cls.__dict__.get("_commit")
    if commit is not None and not getattr(commit, "__statestore_observed__", False):

        @functools.wraps(commit)
        def watched_commit(self: Any, run_id: str, record: Any, writer_token: Any) -> None:
            commit(self, run_id, record, writer_token)
            op = _current.get()
            if op is not None:
                op.record = record

        watched_commit.__statestore_observed__ = True  # type: ignore[attr-defined]
        cls._commit = watched_commit  # type: ignore[attr-defined]
    delete = cls.__dict__.get("_delete_savepoints")
    if delete is not None and not getattr(delete, "__statestore_observed__", False):

        @functools.wraps(delete)
        def watched_delete(self: Any, run_id: str, timestamps: Any) -> None:
            delete(self, run_id, timestamps)
            op = _current.get()
            if op is not None:
                op.deleted = len(timestamps)

        watched_delete.__statestore_observed__ = True  # type: ignore[attr-defined]
        cls._delete_savepoints = watched_delete  # type: ignore[attr-defined]


def record_fallback(storage: object) -> None:
    """Count one damaged savepoint a resume skipped (the engine calls this)."""
    if AVAILABLE:
        _get().fallback.add(1, {"statestore.backend": type(storage).__name__})


def record_prune_freed(storage: object, freed: int | None) -> None:
    """Count the bytes a prune freed, when the prune's plan knew them."""
    if AVAILABLE and freed:
        _get().freed.add(freed, {"statestore.backend": type(storage).__name__})


# What each engine last reported, by id(engine), so that the process-wide sums move by the
# difference; an engine's finalizer takes its share back out.
_engine_status: dict[int, tuple[int, int]] = {}
_status_lock = threading.Lock()
# Engines garbage collected since the last report. A finalizer may run inside any locked
# section of this thread (a collection can start at any allocation): it only appends here,
# which takes no lock, and the next report takes their shares out.
_retired: collections.deque[int] = collections.deque()


def report_engine_status(engine: object, pending_savepoints: int, stalled_entities: int) -> None:
    """Report one engine's (one run's) pending savepoints and stalled entities.

    ``statestore.engine.pending`` and ``statestore.engine.stalled`` are sums over every
    engine of the process (no run id, by design): each call moves them by the change
    since this engine's last report, and an engine that was garbage collected has its
    share taken back out at the next report. The engine calls it whenever its figures
    change.
    """
    if not AVAILABLE:
        return
    pending, stalled = 0, 0
    key = id(engine)
    with _status_lock:
        while _retired:
            gone = _engine_status.pop(_retired.popleft(), (0, 0))
            pending, stalled = pending - gone[0], stalled - gone[1]
        last = _engine_status.get(key)
        if last is None:
            last = (0, 0)
            weakref.finalize(engine, _retired.append, key)
        _engine_status[key] = (pending_savepoints, stalled_entities)
    _move(pending + pending_savepoints - last[0], stalled + stalled_entities - last[1])


def _move(pending: int, stalled: int) -> None:
    telemetry = _get()
    if pending:
        telemetry.pending.add(pending)
    if stalled:
        telemetry.stalled.add(stalled)
