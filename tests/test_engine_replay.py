"""A stream job killed anywhere and resumed ends exactly as one never interrupted.

Hypothesis drives a job with random inputs, entities added and removed as keys come and
go, acknowledgements by the watermark or entity by entity, and random kill points. A kill
here abandons the process's StateStore and storage handle between two engine calls and a
new handle resumes (every engine call persists before it returns, so this is what a
SIGKILL leaves; tests/test_examples.py kills real processes running the docs' examples).
The resumed run's final states must equal the uninterrupted run's, types included.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from statestore import open_storage
from statestore.engine import StateStore

RUN = "job"
SCHEDULE = 10
KEYS = ["k0", "k1", "k2", "k3"]

# (timestamp step, kind, key, value, acknowledge by the watermark?)
Event = tuple[int, str, str, int, bool]

EVENTS = st.lists(
    st.tuples(
        st.integers(0, 25),
        st.sampled_from(["input", "input", "input", "add", "remove"]),
        st.sampled_from(KEYS),
        st.integers(-5, 5),
        st.booleans(),
    ),
    max_size=40,
)


def _initial(key: str) -> dict[str, Any]:
    return {"key": key, "n": 0, "seen": set(), "last": None, "sum": Decimal("0.0")}


def _apply(state: dict[str, Any], ts: int, value: int) -> dict[str, Any]:
    return {
        "key": state["key"],
        "n": state["n"] + 1,
        "seen": state["seen"] | {value % 3},
        "last": (ts, value),
        "sum": state["sum"] + Decimal(value) / 4,
    }


def _typed(value: Any) -> Any:
    """``value`` with each part's type beside it: equal only if the types are equal too."""
    if isinstance(value, dict):
        return ("dict", sorted((k, _typed(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [_typed(v) for v in value])
    if isinstance(value, set):
        return ("set", sorted(_typed(v) for v in value))
    return (type(value).__name__, repr(value))


def _run(
    url: str, events: list[Event], stop_after: int | None, *, trust: bool
) -> dict[str, Any] | None:
    """Run the job on the store at ``url``, resuming if it has savepoints.

    Returns the final states, or None when stopped (killed) after ``stop_after`` events.
    """
    with open_storage(url) as storage:
        store = StateStore(
            RUN, SCHEDULE, storage=storage, keep_savepoints=2, trust_update_state=trust
        )
        _resumed, since, _entities = store.start(3, [("k0", _initial("k0"))])
        done = 0
        for ts, kind, key, value, by_watermark in events:
            if ts < since:
                continue  # before the savepoint resumed from: in its states already
            if done == stop_after:
                return None
            done += 1
            if by_watermark:
                store.ack_processed_time(ts)
            else:
                for entity in store.entities():
                    entity.ack_processed_time(ts)
            if kind == "add":
                store.add_entity(key, ts, _initial(key))
            elif kind == "remove":
                store.remove_entity(key, ts)
            else:
                target = next((e for e in store.entities() if e.id == key), None)
                if target is not None:  # an input for a key the run does not have: dropped
                    target.update_state(ts, _apply(target.state, ts, value))
        return {entity.id: entity.state for entity in store.entities()}


@settings(max_examples=100, deadline=None)
@given(
    steps=EVENTS,
    kills=st.lists(st.integers(0, 40), max_size=3),
    trust=st.booleans(),
)
def test_a_job_killed_and_resumed_anywhere_ends_as_the_uninterrupted_one(
    steps: list[Event], kills: list[int], trust: bool
) -> None:
    """Both save modes: the job hands every new state to update_state."""
    events = []
    ts = 3
    for step, kind, key, value, by_watermark in steps:
        ts += step
        events.append((ts, kind, key, value, by_watermark))
    expected = _run(f"memory://replay-{uuid.uuid4().hex}", events, None, trust=False)
    assert expected is not None

    url = f"memory://replay-{uuid.uuid4().hex}"
    for stop_after in kills:
        _run(url, events, stop_after, trust=trust)  # killed after that many events
    resumed = _run(url, events, None, trust=trust)
    assert resumed is not None
    assert _typed(resumed) == _typed(expected)
