"""Each sensor's stateful aggregator, and the digest that compares two runs.

A sensor's state is a plain dict the default codec stores exactly: counts, a float sum
(order-sensitive, so a reading applied twice or missed shows), min and max, a moving
window of the latest values, an exponentially weighted mean, an alert count and the
last timestamp. The job updates it in place, as real code does; the engine captures
it by value at each savepoint.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from .stream import Reading, StreamConfig, baseline

__all__ = ["WINDOW", "apply", "initial_state", "reference_states", "states_digest"]

#: How many of its latest values a sensor keeps.
WINDOW = 8
#: Weight of the newest value in the exponentially weighted mean.
EWMA_ALPHA = 0.2
#: A value this far above a sensor's baseline raises an alert.
ALERT_MARGIN = 5.0

SensorState = dict[str, Any]


def initial_state(sensor: int) -> SensorState:
    """The state of a sensor before its first reading."""
    return {
        "threshold": baseline(sensor) + ALERT_MARGIN,
        "count": 0,
        "sum": 0.0,
        "min": None,
        "max": None,
        "ewma": None,
        "alerts": 0,
        "window": [],
        "last_ts": None,
    }


def apply(state: SensorState, reading: Reading) -> None:
    """Fold one reading into a sensor's state, in place."""
    value = reading.value
    state["count"] += 1
    state["sum"] += value
    if state["min"] is None or value < state["min"]:
        state["min"] = value
    if state["max"] is None or value > state["max"]:
        state["max"] = value
    ewma = state["ewma"]
    state["ewma"] = value if ewma is None else ewma + EWMA_ALPHA * (value - ewma)
    if value > state["threshold"]:
        state["alerts"] += 1
    window = state["window"]
    window.append(value)
    if len(window) > WINDOW:
        del window[0]
    state["last_ts"] = reading.timestamp


def reference_states(config: StreamConfig, progress: Any = None) -> list[tuple[str, SensorState]]:
    """Run the whole stream in memory, without storage: what an uninterrupted run ends with.

    ``progress``, when given, is called with the number of readings done so far.
    """
    states = [initial_state(sensor) for sensor in range(config.sensors)]
    done = 0
    for reading in config.readings():
        apply(states[reading.sensor], reading)
        done += 1
        if progress is not None and done % 10_000 == 0:
            progress(done)
    if progress is not None:
        progress(done)
    # A sensor joins the run with its first reading: one never read is not in it.
    return [
        (config.sensor_id(sensor), state) for sensor, state in enumerate(states) if state["count"]
    ]


def states_digest(states: Iterable[tuple[str, Any]]) -> str:
    """SHA-256 over every ``(entity_id, state)``, sorted by id, in canonical JSON.

    JSON with sorted keys writes each float by its shortest exact repr, so two digests
    are equal exactly when every count, sum and window value is.
    """
    digest = hashlib.sha256()
    for entity_id, state in sorted(states, key=lambda item: item[0]):
        line = json.dumps([entity_id, state], sort_keys=True, separators=(",", ":"))
        digest.update(line.encode())
        digest.update(b"\n")
    return digest.hexdigest()
