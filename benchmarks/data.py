"""The data every subject saves: entity states shaped like a stream job's aggregates.

Each entity holds a small dict (counters, floats, a short list of recent values, a
name): about 150 bytes as MessagePack. States are built outside the timed sections and
handed to every subject as the very same Python objects, so every subject saves
exactly the same data.
"""

from __future__ import annotations

import gc
import random
from collections.abc import Sequence
from typing import Any

import ormsgpack

__all__ = ["Entities", "encoded_size", "entity_id", "full_step", "sparse_step"]

#: A savepoint's entities, in save order: ``[(entity_id, state), ...]``.
Entities = list[tuple[str, dict[str, Any]]]

_RECENT = 6  # values in each state's "recent" list


def entity_id(index: int) -> str:
    """The id of entity ``index``: fixed width, so every id encodes to the same length."""
    return f"entity-{index:07d}"


def _state(index: int, step: int, rng: random.Random) -> dict[str, Any]:
    count = index % 997 + step * 40
    return {
        "name": f"sensor-{index:06d}",
        "count": count,
        "errors": (index + step) % 13,
        "sum": count * 21.5 + rng.random(),
        "min": -rng.random() * 10,
        "max": rng.random() * 100,
        "recent": [rng.random() for _ in range(_RECENT)],
        "window_ms": 60_000,
        "active": (index + step) % 7 != 0,
    }


def full_step(count: int, step: int) -> Entities:
    """Every entity's state after ``step``: each one differs from the step before."""
    rng = random.Random(step)
    # Building millions of dicts makes the collector rescan the growing list again and
    # again; nothing here can form a cycle, so it is off meanwhile.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return [(entity_id(i), _state(i, step, rng)) for i in range(count)]
    finally:
        if collecting:
            gc.enable()


def sparse_step(previous: Entities, step: int, fraction: float) -> tuple[Entities, list[str]]:
    """``previous`` with ``fraction`` of the entities changed, and the changed ids.

    The changed entities are spread over the whole range (every ``1/fraction``-th one,
    shifted by ``step``), as in a job where a few keys are hot at any time.
    """
    stride = max(1, round(1 / fraction))
    rng = random.Random(step)
    entities = list(previous)
    changed: list[str] = []
    for index in range(step % stride, len(entities), stride):
        entities[index] = (entities[index][0], _state(index, step, rng))
        changed.append(entities[index][0])
    return entities, changed


def encoded_size(entities: Sequence[tuple[str, Any]]) -> int:
    """Bytes of the whole savepoint encoded with ormsgpack: what the floor writes."""
    return len(ormsgpack.packb(list(entities)))
