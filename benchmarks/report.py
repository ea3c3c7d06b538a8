"""The results: tables as markdown, the issue's targets as PASS/MISS lines, and JSON.

Every ratio is taken between subjects measured in the same rounds (see
:mod:`benchmarks.timing`): "x floor" is a subject's time divided by the floor's, "x
fastest peer" its time divided by that of the fastest peer on the same metric.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .rich import RichResult, rounds_of
from .subjects import CHANGE_SET_SUBJECTS, STATESTORE_BACKENDS
from .timing import Series
from .workloads import EngineResult, ScalingPoint, Timed

__all__ = ["Results", "Target", "markdown", "targets", "to_json"]

PEERS = (
    "langgraph-sqlite",
    "langgraph-postgresql",
    "langgraph-sqlite-one-channel",
    "langgraph-postgresql-one-channel",
    "msgpack-sqlite",
    "pickle-sqlite",
)
#: The peers W1's targets name: statestore must be at most these multiples of each.
W1_PEER_LIMITS = {
    "msgpack-sqlite": 1.2,
    "pickle-sqlite": 1.0,
    "langgraph-sqlite-one-channel": 1.0,
}
FLOOR = "floor"


@dataclass
class Results:
    """Everything one run of the benchmark measured, and what it could not measure."""

    meta: dict[str, Any]
    subjects: dict[str, dict[str, Any]]  # name -> group, about, durable
    unavailable: dict[str, str] = field(default_factory=dict)  # name -> why
    w1: Timed | None = None
    w2: list[ScalingPoint] | None = None
    w3: Timed | None = None
    w4: Timed | None = None
    engine: EngineResult | None = None
    w5: RichResult | None = None
    errors: dict[str, str] = field(default_factory=dict)  # workload -> what went wrong


@dataclass(frozen=True)
class Target:
    """One of the issue's targets, checked on one subject: ``passed`` is None when skipped."""

    workload: str
    subject: str
    what: str
    value: float | None
    limit: str
    passed: bool | None

    def line(self) -> str:
        verdict = {True: "PASS", False: "MISS", None: "SKIP"}[self.passed]
        if self.limit == "reported" and self.value is not None:
            verdict = "INFO"  # a figure the issue asks to report, with no bound
        shown = "not measured" if self.value is None else f"{self.value:.2f}"
        return f"{verdict}  {self.workload} {self.subject}: {self.what} = {shown} ({self.limit})"


# ------------------------------------------------------------------ formatting


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def _s(seconds: float) -> str:
    return f"{seconds:,.2f}"


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _mb(size: float) -> str:
    return f"{size / 1e6:,.1f}"


def _table(header: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _to(series: Series, name: str, reference: str | None) -> float | None:
    """``name``'s per-round ratio to ``reference``; None when either was not measured."""
    if reference is None or not series.times.get(name) or not series.times.get(reference):
        return None
    return series.ratio(name, reference)


def _fastest_peer(series: Series) -> str | None:
    return series.fastest(PEERS)


def _measured(series: Series) -> list[str]:
    return [name for name, times in series.times.items() if times]


def _kb(size: int | None) -> str:
    return "-" if size is None else f"{size / 1024:.1f}"


def _w1_table(w1: Timed) -> str:
    save, load = w1.series["save"], w1.series["load"]
    peer_save, peer_load = _fastest_peer(save), _fastest_peer(load)
    rows = [
        [
            name,
            _ms(save.median(name)),
            _x(_to(save, name, FLOOR)),
            _x(_to(save, name, peer_save)),
            _kb(w1.written.get(name)),
            _ms(load.median(name)),
            _x(_to(load, name, FLOOR)),
            _x(_to(load, name, peer_load)),
        ]
        for name in _measured(save)
    ]
    head = ["subject", "save ms", "x floor", "x fastest peer", "KiB / save", "load ms"]
    return _table([*head, "x floor", "x fastest peer"], rows) + (
        f"\n\nFastest peer: save {peer_save}, load {peer_load}. Medians of "
        f"{w1.params['savepoints']} savepoints and {w1.params['loads']} loads; "
        f"{w1.params['entities']:,} entities, {_mb(w1.params['bytes'])} MB as one "
        "MessagePack document." + _requests_note(w1)
    )


def _requests_note(timed: Timed) -> str:
    """The requests per save of the subjects that count them (S3), when any ran."""
    counted = timed.params.get("requests_per_save") or {}
    return "".join(
        f" {name}: {requests:.1f} requests per save." for name, requests in counted.items()
    )


def _w2_table(points: list[ScalingPoint]) -> str:
    rows: list[list[str]] = []
    for point in points:
        for name in _measured(point.save):
            memory = point.memory.get(name)
            rows.append(
                [
                    name,
                    f"{point.count:,}",
                    _ms(point.save.median(name)),
                    _x(_to(point.save, name, FLOOR)),
                    _ms(point.load.median(name)),
                    _x(_to(point.load, name, FLOOR)),
                    "-" if memory is None else _mb(memory.peak),
                    "-" if memory is None else _mb(memory.result),
                    "-" if memory is None else f"{memory.ratio:.2f}",
                    "-" if memory is None else f"{memory.held_ratio:.2f}",
                ]
            )
    header = ["subject", "entities", "save ms", "x floor", "load ms", "x floor"]
    header += ["load peak MB", "loaded MB", "peak / loaded", "held / loaded"]
    return _table(header, rows) + (
        "\n\nMemory: Python-heap bytes (tracemalloc) above what was allocated when the load "
        'began; "loaded" is the size of the returned states (what deleting them gives back); '
        '"held" is what was still allocated when the load returned: the states and what '
        'the store keeps for the next save; "-": not traced (tracemalloc slows allocation '
        "several-fold). Encoded sizes: "
        + ", ".join(f"{p.count:,} entities {_mb(p.encoded_bytes)} MB" for p in points)
        + "."
    )


def _w3_table(w3: Timed) -> str:
    full, sparse, load = w3.series["full"], w3.series["sparse"], w3.series["load"]
    rows = [
        [
            name,
            _ms(full.median(name)),
            _ms(sparse.median(name)),
            f"{sparse.median(name) / full.median(name):.3f}",
            _x(_to(sparse, name, FLOOR)),
            _x(_to(sparse, "langgraph-sqlite", name)),
            _kb(w3.written.get(name)),
            _ms(load.median(name)),
        ]
        for name in _measured(sparse)
    ]
    header = ["subject", "full save ms", "sparse save ms", "sparse / full", "x floor"]
    header += ["LangGraph SQLite / this", "KiB / sparse save", "load ms"]
    return _table(header, rows) + (
        f"\n\n{w3.params['entities']:,} entities; {w3.params['fraction']:.0%} of them change "
        f"between sparse savepoints (medians of {w3.params['full']} full and "
        f"{w3.params['sparse']} sparse savepoints). The floor rewrites everything each time. "
        "The `-changes` subjects save sparse savepoints through `save_changes` with the "
        f"changed states only ({_kb(w3.params.get('changed_bytes'))} KiB encoded in the "
        "last one)." + _requests_note(w3)
    )


W5_PEER = "pickle-sqlite"


def _w5_table(w5: RichResult) -> str:
    rows = [
        [
            name,
            _s(w5.job.median(name)),
            _x(_to(w5.job, name, W5_PEER)),
            _s(w5.savepoints.median(name)),
            f"{w5.share(name):.0%}",
        ]
        for name in rounds_of(w5)
    ]
    header = ["subject", "job s", f"x {W5_PEER}", "in savepoints s", "share in savepoints"]
    p = w5.params
    return _table(header, rows) + (
        f"\n\nThe whole job, medians of {p['rounds']} rounds: {p['entities']} entities, "
        f"{p['events']:,} events, a savepoint every hour of event time ({p['savepoints']:,} "
        "savepoints, the 3 newest kept). `statestore-sqlite` saves every state "
        "(the default: each is encoded to find which changed); `statestore-sqlite-changes` "
        "saves the states the job updated since the last savepoint through `save_changes`; "
        "`statestore-engine` runs the job on a `StateStore` whose watermark each event "
        "calls, `-trust` with `trust_update_state=True`."
    )


def _w4_table(w4: Timed) -> str:
    save = w4.series["save"]
    peer = _fastest_peer(save)
    total = w4.params["runs"] * w4.params["savepoints"]
    rows = [
        [
            name,
            _s(save.median(name)),
            f"{total / save.median(name):,.0f}",
            _x(_to(save, name, FLOOR)),
            _x(_to(save, name, peer)),
        ]
        for name in _measured(save)
    ]
    header = ["subject", "wall s", "savepoints / s", "x floor", "x fastest peer"]
    return _table(header, rows) + (
        f"\n\n{w4.params['runs']} runs x {w4.params['savepoints']} savepoints of "
        f"{w4.params['entities']} entities from {w4.params['processes']} processes into one "
        f"store per subject; fastest peer: {peer}."
    )


def _engine_table(engine: EngineResult) -> str:
    n = engine.params["entities"]
    rows = [
        [
            backend,
            _ms(series.median("raw")),
            _ms(series.median("engine")),
            _x(series.ratio("engine", "raw")),
            f"{series.median('engine') / n * 1e6:.1f}",
            _ms(series.median("watermark")),
            _x(series.ratio("watermark", "raw")),
            _x(series.ratio("trust-1%", "trust-all")),
        ]
        for backend, series in engine.by_backend.items()
    ]
    header = ["backend", "raw save + prune ms", "per-entity acks ms", "acks / raw", "us per ack"]
    header += ["watermark ms", "watermark / raw", "trust: 1% / all updated"]
    return _table(header, rows) + (
        f"\n\n{n:,} entities, {engine.params['savepoints']} savepoints (keep "
        f"{engine.params['keep']}), against save_savepoint plus delete_old_savepoints of the "
        "same states: each entity updating and acknowledging itself (timed whole); each "
        "updating, then one watermark call (the default mode: every state encoded; the "
        "call timed, the updates are the job's own work); and, with "
        "trust_update_state=True, the watermark after 1% of the entities updated against "
        "after all did."
    )


def markdown(results: Results) -> str:
    """The report as markdown: one section per workload, the targets, the subjects."""
    meta = results.meta
    postgres = meta.get("postgresql") or {}
    parts = [
        f"Run: {meta.get('mode')} mode, {meta.get('date')}, commit {meta.get('commit')}, "
        f"{meta.get('seconds')} s; {meta.get('cpus')} cores ({meta.get('platform')}), "
        f"Python {meta.get('python')}, SQLite {meta.get('sqlite')}, PostgreSQL "
        f"{postgres.get('version', 'not used')}."
    ]
    if meta.get("source_changed"):
        parts.append(
            "**Warning: statestore's source changed while this run was going on; figures "
            "may mix two versions.**"
        )
    sections: list[tuple[str, Any, Callable[[Any], str]]] = [
        ("W1 full savepoints", results.w1, _w1_table),
        ("W2 large", results.w2, _w2_table),
        ("W3 sparse change", results.w3, _w3_table),
        ("W4 many runs", results.w4, _w4_table),
        ("Engine overhead", results.engine, _engine_table),
        ("W5 rich states", results.w5, _w5_table),
    ]
    for title, data, render in sections:
        if data:
            parts.append(f"### {title}\n\n{render(data)}")
    parts.append("### Targets\n\n```\n" + "\n".join(t.line() for t in targets(results)) + "\n```")
    about = [[name, info["about"]] for name, info in results.subjects.items()]
    about += [[name, f"not run: {why}"] for name, why in results.unavailable.items()]
    parts.append("### Subjects\n\n" + _table(["subject", "what it does"], about))
    if results.errors:
        failed = "\n".join(
            f"- {name}: {why.splitlines()[-1]}" for name, why in results.errors.items()
        )
        parts.append(f"### Errors\n\n{failed}")
    return "\n\n".join(parts) + "\n"


# ------------------------------------------------------------------ targets


def _backends(results: Results) -> list[str]:
    return [name for name in STATESTORE_BACKENDS if name not in results.unavailable]


def _check(
    workload: str,
    subject: str,
    what: str,
    value: float | None,
    limit: float,
    *,
    at_most: bool = True,
) -> Target:
    if value is None:
        return Target(workload, subject, what, None, "", None)
    passed = value <= limit if at_most else value >= limit
    bound = f"target {'<=' if at_most else '>='} {limit}"
    return Target(workload, subject, what, value, bound, passed)


def targets(results: Results) -> list[Target]:
    """The issue's targets on each statestore backend (sqlite, file, PostgreSQL)."""
    found: list[Target] = []
    for backend in _backends(results):
        found += _w1_targets(results.w1, backend)
        found += _w3_targets(results.w3, backend)
        found += _w2_targets(results.w2, backend)
        found += _engine_targets(results.engine, backend)
    found += _w5_targets(results.w5)
    return found


def _engine_targets(engine: EngineResult | None, backend: str) -> list[Target]:
    series = None if engine is None else engine.by_backend.get(backend)

    def ratio(name: str, reference: str) -> float | None:
        return None if series is None else series.ratio(name, reference)

    watermark = ratio("watermark", "raw")
    trust = ratio("trust-1%", "trust-all")
    acks = ratio("engine", "raw")
    return [
        _check("Engine", backend, "watermark / raw save plus prune", watermark, 1.2),
        _check("Engine", backend, "trust mode: 1% updated / all updated", trust, 0.15),
        Target("Engine", backend, "per-entity acks / raw save plus prune", acks, "reported", None),
    ]


def _w5_targets(w5: RichResult | None) -> list[Target]:
    ratio = None
    if w5 is not None and w5.job.times.get(W5_PEER):
        ratio = _to(w5.job, "statestore-sqlite-changes", W5_PEER)
    what = f"job x {W5_PEER} job (save_changes, the fastest safe mode)"
    found = [_check("W5", "statestore-sqlite", what, ratio, 1.0)]
    default = None if w5 is None else _to(w5.job, "statestore-sqlite", W5_PEER)
    found.append(Target("W5", "statestore-sqlite", f"job x {W5_PEER} job (default, reported)",
                        default, "reported", None))  # fmt: skip
    for engine in ("statestore-engine", "statestore-engine-trust"):
        ratio = None if w5 is None else _to(w5.job, engine, W5_PEER)
        found.append(
            Target("W5", engine, f"job x {W5_PEER} job (reported)", ratio, "reported", None)
        )
    return found


def _w1_targets(w1: Timed | None, backend: str) -> list[Target]:
    found: list[Target] = []
    for metric, floor_limit in (("save", 1.3), ("load", 1.2)):
        series = w1.series[metric] if w1 else Series()
        found.append(
            _check("W1", backend, f"{metric} x floor", _to(series, backend, FLOOR), floor_limit)
        )
        for peer, limit in W1_PEER_LIMITS.items():
            if metric == "load" and limit > 1.0:
                continue  # the issue bounds loads by the floor and the slower peers only
            what = f"{metric} x {peer}"
            found.append(_check("W1", backend, what, _to(series, backend, peer), limit))
    return found


#: What a sparse save may write beyond twice its changed states: head, tables, headers.
W3_BYTES_CONSTANT = 4096


def _w3_targets(w3: Timed | None, backend: str) -> list[Target]:
    def share(name: str) -> float | None:
        if w3 is None or not w3.series["sparse"].times.get(name):
            return None
        return w3.series["sparse"].median(name) / w3.series["full"].median(backend)

    found = [
        _check("W3", backend, "sparse save / full save (save_savepoint)", share(backend), 0.10)
    ]
    changes = CHANGE_SET_SUBJECTS.get(backend)
    if changes is not None:
        what = "sparse save / full save (save_changes)"
        found.append(_check("W3", backend, what, share(changes), 0.10))
        written = None if w3 is None else w3.written.get(changes)
        ratio = None
        if written is not None and w3 is not None and w3.params.get("changed_bytes"):
            ratio = (written - W3_BYTES_CONSTANT) / w3.params["changed_bytes"]
        what = f"(bytes per sparse save - {W3_BYTES_CONSTANT}) / changed states' bytes"
        found.append(_check("W3", backend, what + " (save_changes)", ratio, 2.0))
    return found


def _w2_targets(points: list[ScalingPoint] | None, backend: str) -> list[Target]:
    measured = [p for p in points or [] if p.save.times.get(backend)]
    found: list[Target] = []
    for metric in ("save", "load"):
        what, growth = f"{metric} time per entity, largest count / next", None
        if len(measured) >= 2:
            small, large = measured[-2], measured[-1]
            what = f"{metric} time per entity, {large.count:,} / {small.count:,} entities"
            per_entity = [getattr(p, metric).median(backend) / p.count for p in (small, large)]
            growth = per_entity[1] / per_entity[0]
        found.append(_check("W2", backend, what, growth, 1.3))
    traced = [p for p in measured if backend in p.memory]
    held_what, held = "memory held after a load / loaded states", None
    peak_what, peak = "load peak memory / loaded states", None
    if traced:
        at = f" at {traced[-1].count:,} entities"
        held_what, peak_what = held_what + at, peak_what + at
        held, peak = traced[-1].memory[backend].held_ratio, traced[-1].memory[backend].ratio
    found.append(_check("W2", backend, held_what, held, 1.3))
    found.append(Target("W2", backend, f"{peak_what} (reported)", peak, "reported", None))
    return found


# ------------------------------------------------------------------ JSON


def _series_json(series: dict[str, Series]) -> dict[str, Any]:
    return {metric: s.as_json() for metric, s in series.items()}


def to_json(results: Results) -> dict[str, Any]:
    """Every raw time (seconds, per round), the parameters, and the target verdicts."""
    data: dict[str, Any] = {
        "meta": results.meta,
        "subjects": results.subjects,
        "unavailable": results.unavailable,
        "errors": results.errors,
    }
    for name in ("w1", "w3", "w4"):
        timed: Timed | None = getattr(results, name)
        if timed is not None:
            data[name] = {"params": timed.params, "seconds": _series_json(timed.series)}
            data[name]["bytes_per_save"] = timed.written
    if results.w2 is not None:
        data["w2"] = [
            {
                "entities": p.count,
                "encoded_bytes": p.encoded_bytes,
                "seconds": _series_json({"save": p.save, "load": p.load}),
                "memory": {
                    n: {"peak": m.peak, "loaded": m.result, "held": m.held}
                    for n, m in p.memory.items()
                },
            }
            for p in results.w2
        ]
    if results.w5 is not None:
        data["w5"] = {
            "params": results.w5.params,
            "seconds": _series_json({"job": results.w5.job, "savepoints": results.w5.savepoints}),
        }
    if results.engine is not None:
        data["engine"] = {
            "params": results.engine.params,
            "seconds": _series_json(results.engine.by_backend),
        }
    data["targets"] = [
        {"workload": t.workload, "subject": t.subject, "what": t.what, "value": t.value,
         "limit": t.limit, "passed": t.passed}
        for t in targets(results)
    ]  # fmt: skip
    return data
