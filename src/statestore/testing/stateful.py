"""Model-based test: random operations on a backend and on a plain dict, compared every step.

The model is ``{run_id: {timestamp: entities}}``. Each rule does one operation of the
contract on both (or checks that the backend refuses what the model says it must), and
after every step :meth:`StorageMachine.matches_model` compares everything the backend
can be asked: runs, savepoint rows, the latest timestamp and savepoint.
:func:`check_against_model` runs it; the conformance suite calls it for every backend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ..errors import (
    EncodeError,
    InvalidArgumentError,
    NoSavepointError,
    RunNotInitializedError,
)
from ..storage import Storage
from .strategies import MAX_TIMESTAMP, Unencodable, exact_difference

__all__ = ["MODEL_SETTINGS", "StorageMachine", "check_against_model"]

#: Quick enough to run on every backend on every test run.
MODEL_SETTINGS = settings(
    max_examples=25,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# A few runs, so operations collide; awkward ids included (path syntax, non-ASCII).
RUN_IDS = ["run-a", "run-b", "a/../b", "é"]
RUNS = st.sampled_from(RUN_IDS)
TIMESTAMPS = st.sampled_from([0, 1, 9, 10, 60_000, 120_000, 2**40, MAX_TIMESTAMP]) | st.integers(
    0, MAX_TIMESTAMP
)
# Small states, plus long compressible strings so the compressed path is taken too.
STATES = (
    st.integers()
    | st.text(max_size=40)
    | st.tuples(st.integers(), st.booleans())
    | st.integers(4000, 9000).map(lambda n: "x" * n)
)
ENTITIES = st.lists(
    st.tuples(st.text(max_size=6), STATES), max_size=5, unique_by=lambda pair: pair[0]
)
BAD_SAVES = st.sampled_from(["duplicate-ids", "unencodable", "bad-timestamp", "not-a-pair"])

Entities = list[tuple[str, Any]]


class StorageMachine(RuleBasedStateMachine):
    """Drives one storage object and a dict model with the same operations."""

    def __init__(self, open_store: Callable[[], Storage], *, reopen: bool) -> None:
        super().__init__()
        self.open_store = open_store
        self.can_reopen = reopen
        self.storage = open_store()
        for run_id in self.storage.list_runs():  # each example starts from an empty store
            self.storage.delete_run(run_id)
        self.model: dict[str, dict[int, Entities]] = {}
        self.tokens: dict[str, int] = {}

    def teardown(self) -> None:
        self.storage.close()

    # ---------------------------------------------------------------- writes

    @rule(run_id=RUNS)
    def init_storage(self, run_id: str) -> None:
        self.storage.init_storage(run_id)
        self.model.setdefault(run_id, {})

    @rule(run_id=RUNS, timestamp=TIMESTAMPS, entities=ENTITIES)
    def save(self, run_id: str, timestamp: int, entities: Entities) -> None:
        if run_id not in self.model:
            with pytest.raises(RunNotInitializedError):
                self.storage.save_savepoint(run_id, timestamp, entities)
            return
        self.storage.save_savepoint(run_id, timestamp, entities)
        self.model[run_id][timestamp] = list(entities)

    @rule(run_id=RUNS, timestamp=TIMESTAMPS, changed=STATES)
    def save_mostly_unchanged(self, run_id: str, timestamp: int, changed: Any) -> None:
        """Save the latest savepoint's states again with one changed, as a run does:
        a backend may share the unchanged data between savepoints."""
        savepoints = self.model.get(run_id)
        if not savepoints:
            return
        entities = [*savepoints[max(savepoints)], ("changed", changed)]
        entities = list(dict(entities).items())  # a re-saved id keeps its place
        self.storage.save_savepoint(run_id, timestamp, entities)
        savepoints[timestamp] = entities

    @rule(run_id=RUNS, timestamp=TIMESTAMPS, kind=BAD_SAVES)
    def save_bad_input(self, run_id: str, timestamp: int, kind: str) -> None:
        bad: dict[str, tuple[type[Exception], Any, Any]] = {
            "duplicate-ids": (InvalidArgumentError, timestamp, [("x", 1), ("x", 2)]),
            "unencodable": (EncodeError, timestamp, [("x", 1), ("y", Unencodable())]),
            "bad-timestamp": (InvalidArgumentError, float(timestamp), [("x", 1)]),
            "not-a-pair": (InvalidArgumentError, timestamp, [("x", 1), ("y",)]),
        }
        error, ts, entities = bad[kind]
        with pytest.raises(error):  # whatever the run's state: validation comes first
            self.storage.save_savepoint(run_id, ts, entities)

    @rule(run_id=RUNS, keep_n=st.integers(0, 4))
    def delete_old_savepoints(self, run_id: str, keep_n: int) -> None:
        self.storage.delete_old_savepoints(run_id, keep_n)
        savepoints = self.model.get(run_id)
        if savepoints:
            for timestamp in sorted(savepoints)[: max(len(savepoints) - keep_n, 0)]:
                del savepoints[timestamp]

    @rule(run_id=RUNS)
    def delete_run(self, run_id: str) -> None:
        self.storage.delete_run(run_id)
        self.model.pop(run_id, None)
        self.tokens.pop(run_id, None)

    @rule(run_id=RUNS)
    def acquire_writer(self, run_id: str) -> None:
        if run_id not in self.model:
            with pytest.raises(RunNotInitializedError):
                self.storage.acquire_writer(run_id)
            return
        token = self.storage.acquire_writer(run_id)
        assert token > self.tokens.get(run_id, -1), "writer tokens must only grow"
        self.tokens[run_id] = token
        current = self.storage.current_writer(run_id)
        assert current is not None
        assert current.token == token

    @precondition(lambda self: self.can_reopen)
    @rule()
    def reopen(self) -> None:
        self.storage.close()
        self.storage = self.open_store()

    # ---------------------------------------------------------------- reads

    @rule(run_id=RUNS, data=st.data())
    def get_savepoint(self, run_id: str, data: st.DataObject) -> None:
        known = sorted(self.model.get(run_id, {}))
        timestamp = data.draw(st.sampled_from(known) if known else TIMESTAMPS, label="timestamp")
        expected = self.model.get(run_id, {}).get(timestamp)
        if expected is None:
            with pytest.raises(NoSavepointError):
                self.storage.get_savepoint(run_id, timestamp)
            return
        self._assert_same(self.storage.get_savepoint(run_id, timestamp), timestamp, expected)

    @invariant()
    def matches_model(self) -> None:
        assert self.storage.list_runs() == sorted(self.model)
        for run_id in RUN_IDS:
            assert self.storage.is_initialized(run_id) == (run_id in self.model)
            savepoints = self.model.get(run_id, {})
            rows = self.storage.list_savepoints(run_id)
            assert [row.timestamp for row in rows] == sorted(savepoints)
            assert [row.entity_count for row in rows] == [
                len(savepoints[ts]) for ts in sorted(savepoints)
            ]
            assert all(row.size > 0 for row in rows)
            if not savepoints:
                with pytest.raises(NoSavepointError):
                    self.storage.get_latest_savepoint_timestamp(run_id)
                with pytest.raises(NoSavepointError):
                    self.storage.get_latest_savepoint(run_id)
                continue
            latest = max(savepoints)
            assert self.storage.get_latest_savepoint_timestamp(run_id) == latest
            self._assert_same(self.storage.get_latest_savepoint(run_id), latest, savepoints[latest])

    @staticmethod
    def _assert_same(found: tuple[int, Entities], timestamp: int, entities: Entities) -> None:
        problem = exact_difference((timestamp, entities), tuple(found), "savepoint")
        assert problem is None, problem


def check_against_model(
    open_store: Callable[[], Storage],
    *,
    reopen: bool,
    settings: settings = MODEL_SETTINGS,
) -> None:
    """Run :class:`StorageMachine` on the stores ``open_store`` opens (one store, emptied
    at the start of each example); ``reopen`` adds a rule that closes and reopens it."""

    class BoundMachine(StorageMachine):
        def __init__(self) -> None:
            super().__init__(open_store, reopen=reopen)

    run_state_machine_as_test(BoundMachine, settings=settings)
