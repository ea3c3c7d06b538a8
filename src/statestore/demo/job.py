"""The demo's parent: run the worker, kill it, resume it, and check the result.

1. A worker process (:mod:`statestore.demo.worker`) starts the run and processes the
   stream. When it reports the crash point, the parent kills it with SIGKILL at once;
   the worker is still working, so the kill lands at an unplanned moment (often in
   the middle of a save).
2. The parent looks at what the crash left in the store, then starts a new worker on
   the same run: it resumes from the latest savepoint and replays the readings from
   that savepoint's timestamp to the end of the stream.
3. The parent computes the same job in memory without any storage (the uninterrupted
   reference) and compares three digests: the reference, the resumed worker's final
   states, and the final savepoint as stored.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import open_storage
from ..storage import redact_url
from .aggregate import reference_states, states_digest
from .stream import StreamConfig
from .worker import URL_VARIABLE

__all__ = ["DemoError", "DemoOptions", "DemoResult", "WorkerRun", "run_demo"]

#: Called with a phase ("run", "resume" or "reference") and its stream position.
ProgressFn = Callable[[str, int], None]


class DemoError(Exception):
    """The demo could not run (a worker failed, the store is unusable); one line."""


@dataclass(frozen=True)
class DemoOptions:
    """What to run: the stream, the store, and where to crash (None: no crash)."""

    stream: StreamConfig
    url: str | None
    run_id: str
    crash_at: int | None
    fault: str = "none"


@dataclass
class WorkerRun:
    """What one worker process did, as it reported it."""

    resumed: bool = False
    timestamp: int = 0
    first_position: int = 0
    position: int = 0
    start_ms: float = 0.0
    ready_ms: float = 0.0
    persist_ms: list[float] = field(default_factory=list)
    savepoints: dict[int, int] = field(default_factory=dict)
    digest: str | None = None
    killed_at: int | None = None
    exit_code: int | None = None


@dataclass
class DemoResult:
    """Everything the report shows."""

    options: DemoOptions
    url: str
    temporary: bool
    first: WorkerRun
    second: WorkerRun | None
    latest_after_kill: int | None
    kept_savepoints: int
    bytes_kept: int
    file_bytes: int | None
    final_timestamp: int
    stored_digest: str
    reference_digest: str
    elapsed_s: float

    @property
    def match(self) -> bool:
        """Whether the resumed run ended exactly where the uninterrupted one does."""
        last = self.second or self.first
        return (
            last.digest == self.reference_digest
            and self.stored_digest == self.reference_digest
            and self.final_timestamp == self.options.stream.end
        )

    @property
    def savepoints(self) -> dict[int, int]:
        """Every savepoint written, by timestamp, with its size in bytes."""
        merged = dict(self.first.savepoints)
        if self.second is not None:
            merged.update(self.second.savepoints)
        return merged

    @property
    def persist_ms(self) -> list[float]:
        """The latency of every acknowledgement that persisted savepoints."""
        return self.first.persist_ms + (self.second.persist_ms if self.second else [])


def run_demo(options: DemoOptions, progress: ProgressFn | None = None) -> DemoResult:
    """Run the demo end to end; raises :class:`DemoError` when it cannot."""
    began = time.perf_counter()
    with _store_url(options.url) as (url, temporary):
        _refuse_existing_run(url, options.run_id)
        first = _run_worker(options, url, "run", options.crash_at, progress)
        second = latest_after_kill = None
        if options.crash_at is not None:
            if first.killed_at is None:
                raise DemoError(f"the worker was not killed (exit status {first.exit_code})")
            latest_after_kill = _merge_surviving(url, options.run_id, first)
            second = _run_worker(options, url, "resume", None, progress)
        last = second or first
        if last.digest is None:
            raise DemoError("the worker ended without reporting its result")
        with open_storage(url) as storage:
            final_ts, final_states = storage.get_latest_savepoint(options.run_id)
            rows = storage.list_savepoints(options.run_id)
            file_bytes = storage.disk_usage()
        stored_digest = states_digest(final_states)
    stream = options.stream

    def reference_progress(done: int) -> None:
        if progress is not None:
            progress("reference", done)

    reference_digest = states_digest(reference_states(stream, reference_progress))
    return DemoResult(
        options=options,
        url=redact_url(url),
        temporary=temporary,
        first=first,
        second=second,
        latest_after_kill=latest_after_kill,
        kept_savepoints=len(rows),
        bytes_kept=sum(row.size for row in rows),
        file_bytes=file_bytes,
        final_timestamp=final_ts,
        stored_digest=stored_digest,
        reference_digest=reference_digest,
        elapsed_s=time.perf_counter() - began,
    )


@contextmanager
def _store_url(url: str | None) -> Iterator[tuple[str, bool]]:
    """The store to use: the given URL, or a SQLite file in a temporary directory."""
    if url is not None:
        yield url, False
        return
    with tempfile.TemporaryDirectory(prefix="statestore-demo-") as directory:
        yield f"sqlite:///{Path(directory, 'demo.db').resolve()}", True


def _refuse_existing_run(url: str, run_id: str) -> None:
    # The demo starts a run from scratch: one that exists would be resumed instead.
    with open_storage(url) as storage:
        if storage.is_initialized(run_id):
            raise DemoError(f"run {run_id!r} already exists in {redact_url(url)}; pick another")


def _merge_surviving(url: str, run_id: str, first: WorkerRun) -> int | None:
    """Record the savepoints the killed worker persisted but had no time to report."""
    with open_storage(url) as storage:
        rows = storage.list_savepoints(run_id)
    for row in rows:
        first.savepoints.setdefault(row.timestamp, row.size)
    return rows[-1].timestamp if rows else None


def _run_worker(
    options: DemoOptions,
    url: str,
    phase: str,
    crash_at: int | None,
    progress: ProgressFn | None,
) -> WorkerRun:
    stream = options.stream
    command = [
        sys.executable,
        "-m",
        "statestore.demo.worker",
        f"--run-id={options.run_id}",
        f"--seed={stream.seed}",
        f"--sensors={stream.sensors}",
        f"--events={stream.events}",
        f"--minutes={stream.minutes}",
        f"--crash-at={-1 if crash_at is None else crash_at}",
        f"--fault={options.fault}",
    ]
    result = WorkerRun()
    with tempfile.TemporaryFile(mode="w+") as errors:
        launched = time.perf_counter()
        process = subprocess.Popen(  # noqa: S603 - our own module, with our interpreter
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env={**os.environ, URL_VARIABLE: url},
        )
        assert process.stdout is not None
        assert process.stdin is not None
        try:
            failure = _follow(process, result, phase, launched, progress)
        except BaseException:
            process.kill()
            raise
        finally:
            # EOF on its stdin: a worker waiting for a SIGKILL that never comes ends.
            process.stdin.close()
            result.exit_code = process.wait()
        if failure is None and result.killed_at is None and result.exit_code != 0:
            errors.seek(0)
            lines = errors.read().strip().splitlines()
            failure = lines[-1] if lines else f"exit status {result.exit_code}"
    if failure is not None:
        raise DemoError(f"the {phase} worker failed: {failure}")
    if result.killed_at is not None and result.exit_code != -signal.SIGKILL:
        raise DemoError(f"the worker ended with status {result.exit_code}, not by SIGKILL")
    return result


def _follow(
    process: subprocess.Popen[str],
    result: WorkerRun,
    phase: str,
    launched: float,
    progress: ProgressFn | None,
) -> str | None:
    """Act on the worker's reports until its output ends; returns an error message."""
    shown = -1
    assert process.stdout is not None
    for line in process.stdout:
        if not line.endswith("\n"):
            break  # the last line, cut short by the kill
        message: dict[str, Any] = json.loads(line)
        kind = message["type"]
        if kind == "crash-point":
            process.send_signal(signal.SIGKILL)
            result.killed_at = message["position"]
        elif kind == "ready":
            result.ready_ms = (time.perf_counter() - launched) * 1000
            result.resumed = message["resumed"]
            result.timestamp = message["timestamp"]
            result.start_ms = message["start_ms"]
            result.first_position = result.position = message["position"]
        elif kind == "progress":
            result.position = message["position"]
        elif kind == "savepoint":
            result.persist_ms.append(message["persist_ms"])
            result.savepoints.update(zip(message["timestamps"], message["sizes"], strict=True))
        elif kind == "done":
            result.position = message["position"]
            result.digest = message["digest"]
        elif kind == "error":
            return str(message["message"])
        if progress is not None and result.position != shown:
            shown = result.position
            progress(phase, shown)
    return None
