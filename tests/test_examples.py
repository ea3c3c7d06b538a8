"""Every engine example in the docs resumes exactly, and prints what the docs say it prints.

Each ```python block of README.md and docs/*.md that uses ``StateStore`` is run as a script:

* killed with SIGKILL right after its k-th engine call (``Entity.update_state`` /
  ``Entity.ack_processed_time``, the watermark ``StateStore.ack_processed_time``,
  ``StateStore.add_entity`` / ``StateStore.remove_entity``), for every k, and for
  "never" (a complete run), then run again unmodified: that second run resumes, and its
  final entity states must equal those of an uninterrupted run. This is the contract a
  savepoint makes (a savepoint at T holds each entity's state after every input below T;
  resuming replays the inputs at or after T): an example that gets it wrong teaches
  every reader to double-count.
* run twice in a fresh directory, plainly: the output must be the block after its
  "Run twice:" line, when the docs give one.

The kill runs go through a harness: this file run as a script. It imports the engine once
and forks one process per run (a fresh interpreter per run would cost a quarter of a second
each), so every kill point is tried. In the killed run it wraps the real engine's methods
to count calls and kill the process at call k; in every run it records the store
``StateStore.start`` (or ``init_run_state`` / ``load_run_state``) started and writes
the states of its entities (``StateStore.entities()``, the added ones with them) when
the example ends. The engine itself runs unchanged.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import pickle
import re
import runpy
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
ENGINE_CALLS = ("update_state", "ack_processed_time")
STORE_CALLS = ("ack_processed_time", "add_entity", "remove_entity")
STARTS = ("start", "init_run_state", "load_run_state")


@dataclass(frozen=True)
class Example:
    """One engine example: where it is, its code, and the output the docs give for it."""

    where: str  # "README.md:97", the line of its opening fence
    code: str
    run_twice: str | None  # the block after "Run twice:", or None when there is none


def _examples_in(path: Path) -> list[Example]:
    text = path.read_text()
    blocks = list(FENCE.finditer(text))
    examples = []
    for i, block in enumerate(blocks):
        if block.group(1) != "python" or "StateStore" not in block.group(2):
            continue
        following = blocks[i + 1] if i + 1 < len(blocks) else None
        run_twice = None
        if following is not None and following.group(1) == "":
            between = text[block.end() : following.start()].strip()
            if between.endswith("Run twice:"):
                run_twice = following.group(2)
        line = text.count("\n", 0, block.start()) + 1
        where = f"{path.relative_to(ROOT)}:{line}"
        examples.append(Example(where, block.group(2), run_twice))
    return examples


EXAMPLES = [
    example
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for example in _examples_in(path)
]


def _env() -> dict[str, str]:
    """The worktree's src first, so the code under test is this checkout's."""
    paths = [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def _write(example: Example, directory: Path) -> Path:
    script = directory / "example.py"
    script.write_text(example.code)
    return script


def test_the_docs_have_engine_examples_with_their_output() -> None:
    readme = [e for e in EXAMPLES if e.where.startswith("README.md")]
    assert readme, "README.md has no ```python block using StateStore"
    assert all(e.run_twice is not None for e in readme), "a README engine example lacks its output"
    assert any(e.where.startswith("docs/engine.md") for e in EXAMPLES)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the harness forks one process per run")
@pytest.mark.parametrize("example", EXAMPLES, ids=[e.where for e in EXAMPLES])
def test_example_killed_at_any_engine_call_resumes_to_the_uninterrupted_result(
    example: Example, tmp_path: Path
) -> None:
    script = _write(example, tmp_path)
    report_file = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, __file__, str(script), str(tmp_path / "runs"), str(report_file)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"harness failed:\n{done.stdout}\n{done.stderr}"
    report = json.loads(report_file.read_text())
    assert report["calls"] > 0, f"{example.where}: the example makes no engine call"
    assert report["persisted_at"], f"{example.where}: the example persists no savepoint"
    wrong = [run for run in report["runs"] if not run["equal"]]
    assert not wrong, (
        f"{example.where}: uninterrupted it ends with {report['uninterrupted']}; killed and "
        f"resumed it ends otherwise ({len(wrong)} of {len(report['runs'])} kill points; "
        f"savepoints are persisted by calls {report['persisted_at']}):\n"
        + "\n".join(f"  killed after call {r['kill_at']}: {r['resumed']}" for r in wrong)
    )


@pytest.mark.parametrize(
    "example",
    [e for e in EXAMPLES if e.run_twice is not None],
    ids=[e.where for e in EXAMPLES if e.run_twice is not None],
)
def test_example_run_twice_prints_its_documented_output(example: Example, tmp_path: Path) -> None:
    script = _write(example, tmp_path)
    printed = ""
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, f"{example.where} failed:\n{done.stderr}"
        printed += done.stdout
    assert printed == example.run_twice


# ------------------------------------------------------------------ the harness


def _entities_of(started: Any) -> list[Any]:
    """The entities in what ``start`` / ``init_run_state`` / ``load_run_state`` returned."""
    if isinstance(started, list):
        return started
    if isinstance(started, tuple) and len(started) == 2:  # (timestamp, entities)
        return list(started[1])
    return list(started.entities)  # StartResult


def _run_example(script: Path, directory: Path, kill_at: int | None, result: Path) -> NoReturn:
    """In a forked child: run ``script`` in ``directory``; SIGKILL after call ``kill_at``.

    Writes ``{"states", "calls", "latest"}`` to ``result`` when the example ends:
    the final state of each started entity, the number of engine calls, and the latest
    persisted savepoint after each call (to tell which calls persisted one).
    """
    from statestore.engine import Entity, StateStore  # imported by the harness already

    directory.mkdir(parents=True, exist_ok=True)
    os.chdir(directory)
    log = os.open("output.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    calls = 0
    latest: list[int | None] = []
    stores: list[StateStore] = []
    entities: list[Any] = []

    def latest_savepoint() -> int | None:
        listed = stores[-1].storage.list_savepoints(stores[-1].run_id) if stores else []
        return listed[-1].timestamp if listed else None

    def counted(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def call(*args: Any) -> Any:
            nonlocal calls
            returned = method(*args)
            calls += 1
            if calls == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            latest.append(latest_savepoint())
            return returned

        return call

    def recorded(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def start(store: StateStore, *args: Any, **kwargs: Any) -> Any:
            returned = method(store, *args, **kwargs)
            stores.append(store)
            entities[:] = _entities_of(returned)
            return returned

        return start

    for name in ENGINE_CALLS:
        setattr(Entity, name, counted(getattr(Entity, name)))
    for name in STORE_CALLS:
        setattr(StateStore, name, counted(getattr(StateStore, name)))
    for name in STARTS:
        setattr(StateStore, name, recorded(getattr(StateStore, name)))
    status = 0
    try:
        runpy.run_path(str(script), run_name="__main__")
        current = stores[-1].entities() if stores else entities
        states = {entity.id: entity.state for entity in current}
        result.write_bytes(pickle.dumps({"states": states, "calls": calls, "latest": latest}))
    except BaseException:
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _fork(script: Path, directory: Path, kill_at: int | None) -> tuple[int, Any]:
    """Run the example in a child process: its wait status and what it recorded."""
    result = directory / "result.pickle"
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        _run_example(script, directory, kill_at, result)
    _, status = os.waitpid(pid, 0)
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) != 0:
        output = (directory / "output.txt").read_text()
        raise RuntimeError(f"the example failed in {directory}:\n{output}")
    return status, pickle.loads(result.read_bytes()) if result.exists() else None


def _harness(script: Path, workdir: Path) -> dict[str, Any]:
    """Kill the example after each engine call in turn, resume it, compare the results."""
    import statestore.engine  # noqa: F401  (once here, not once per forked run)

    _, uninterrupted = _fork(script, workdir / "uninterrupted", None)
    latest = uninterrupted["latest"]
    # The calls after which the latest persisted savepoint changed: they persisted one.
    changes = enumerate(itertools.pairwise([None, *latest]), 1)
    persisted_at = [k for k, (was, now) in changes if now != was]
    runs = []
    for kill_at in [*range(1, uninterrupted["calls"] + 1), None]:
        directory = workdir / f"killed-after-{kill_at or 'none'}"
        status, _ = _fork(script, directory, kill_at)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        if killed != (kill_at is not None):
            raise RuntimeError(f"the run to kill after call {kill_at} ended with status {status}")
        # The resume: the same script in the same directory, so on the same store.
        _, resumed = _fork(script, directory, None)
        runs.append(
            {
                "kill_at": kill_at,
                "resumed": repr(resumed["states"]),
                "equal": resumed["states"] == uninterrupted["states"],
            }
        )
    return {
        "calls": uninterrupted["calls"],
        "persisted_at": persisted_at,
        "uninterrupted": repr(uninterrupted["states"]),
        "runs": runs,
    }


if __name__ == "__main__":
    _script, _workdir, _report = map(Path, sys.argv[1:4])
    Path(_report).write_text(json.dumps(_harness(_script.resolve(), _workdir.resolve())))
