"""The demo's report: a few lines for people, or one JSON object for programs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from .job import DemoResult

__all__ = ["percentile", "report_dict", "report_text"]


def percentile(values: Sequence[float], p: float) -> float | None:
    """The nearest-rank ``p``-th percentile (0 < p <= 100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def report_dict(result: DemoResult) -> dict[str, Any]:
    """The report as plain JSON-ready data; timestamps are epoch milliseconds."""
    stream = result.options.stream
    savepoints = result.savepoints
    latencies = result.persist_ms
    crash, resume = _crash_and_resume(result)
    return {
        "match": result.match,
        "stream": {
            "seed": stream.seed,
            "sensors": stream.sensors,
            "events": stream.events,
            "minutes": stream.minutes,
            "start": stream.start,
            "end": stream.end,
        },
        "store": {
            "url": result.url,
            "temporary": result.temporary,
            "run_id": result.options.run_id,
            "savepoints_written": len(savepoints),
            "bytes_written": sum(savepoints.values()),
            "savepoints_kept": result.kept_savepoints,
            "bytes_kept": result.bytes_kept,
            "file_bytes": result.file_bytes,
        },
        "crash": crash,
        "resume": resume,
        "save_latency_ms": {
            "count": len(latencies),
            "p50": _round(percentile(latencies, 50)),
            "p95": _round(percentile(latencies, 95)),
            "p99": _round(percentile(latencies, 99)),
            "max": _round(max(latencies, default=None)),
        },
        "final_savepoint": result.final_timestamp,
        "digests": {
            "reference": result.reference_digest,
            "resumed": (result.second or result.first).digest,
            "stored": result.stored_digest,
        },
        "elapsed_s": round(result.elapsed_s, 3),
    }


def _crash_and_resume(result: DemoResult) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The report's crash and resume sections; both None when the run was not killed."""
    if result.second is None:
        return None, None
    first, second = result.first, result.second
    killed_at = first.killed_at or 0
    crash = {
        "signal": "SIGKILL",
        "exit_code": first.exit_code,
        "killed_at_event": killed_at,
        "latest_savepoint_after_kill": result.latest_after_kill,
    }
    resume = {
        "resumed": second.resumed,
        "from_timestamp": second.timestamp,
        "from_event": second.first_position,
        "events_replayed": result.options.stream.events - second.first_position,
        "events_since_savepoint": max(0, killed_at - second.first_position),
        "start_ms": round(second.start_ms, 3),
        "restart_ms": round(second.ready_ms, 3),
    }
    return crash, resume


def report_text(result: DemoResult) -> str:
    """The report for people: what ran, the crash, the resume, the figures, the verdict."""
    data = report_dict(result)
    stream, store, latency = data["stream"], data["store"], data["save_latency_ms"]
    temporary = " (temporary)" if store["temporary"] else ""
    lines = [
        f"statestore demo: {stream['sensors']:,} sensors, {stream['events']:,} readings "
        f"over {stream['minutes'] / 60:g} h of event time (seed {stream['seed']})",
        _row("store", f"{store['url']}{temporary}"),
        _row("run", f"{store['run_id']}: a savepoint every minute of event time"),
    ]
    lines += _crash_lines(data)
    file_size = f", {_bytes(store['file_bytes'])} on disk" if store["file_bytes"] else ""
    digests = data["digests"]
    verdict = (
        "MATCH: the resumed run equals the uninterrupted one"
        if data["match"]
        else "MISMATCH: the resumed run differs from the uninterrupted one"
    )
    lines += [
        _row(
            "savepoints",
            f"{store['savepoints_written']:,} written ({_bytes(store['bytes_written'])}), "
            f"{store['savepoints_kept']} kept ({_bytes(store['bytes_kept'])}){file_size}",
        ),
        _row(
            "save latency",
            f"p50 {_ms(latency['p50'])}  p95 {_ms(latency['p95'])}  p99 {_ms(latency['p99'])}"
            f"  max {_ms(latency['max'])}  ({latency['count']} saves)",
        ),
        _row("elapsed", f"{data['elapsed_s']:.1f} s"),
        _row("digests", f"{digests['reference']}  uninterrupted, in memory"),
        _row("", f"{digests['resumed']}  resumed worker"),
        _row("", f"{digests['stored']}  final savepoint, as stored"),
        _row("result", verdict),
    ]
    return "\n".join(lines)


def _crash_lines(data: dict[str, Any]) -> list[str]:
    """The text report's crash, resume and replay rows."""
    stream, crash, resume = data["stream"], data["crash"], data["resume"]
    if crash is None or resume is None:
        return [_row("crash", "none (--no-crash)")]
    after = crash["latest_savepoint_after_kill"]
    how = "resumed from" if resume["resumed"] else "no savepoint yet: started again at"
    lines = [
        _row(
            "crash",
            f"worker killed with SIGKILL at reading {crash['killed_at_event']:,} "
            f"of {stream['events']:,}",
        ),
        _row(
            "resume",
            f"new worker {how} {_when(resume['from_timestamp'])} in "
            f"{resume['start_ms']:.0f} ms ({resume['restart_ms']:.0f} ms after launch)",
        ),
        _row(
            "replay",
            f"{resume['events_replayed']:,} readings, "
            f"{resume['events_since_savepoint']:,} of them done before the crash",
        ),
    ]
    if after != resume["from_timestamp"]:  # resuming skipped a damaged savepoint
        lines.append(_row("after crash", f"latest savepoint {_when(after) if after else 'none'}"))
    return lines


def _row(label: str, text: str) -> str:
    return f"  {label:<14}{text}"


def _when(timestamp: int) -> str:
    moment = datetime.fromtimestamp(timestamp / 1000, UTC)
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC ({timestamp})"


def _bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "kB", "MB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
