"""The demo's input: a deterministic, generated stream of sensor readings.

The stream is cut into minutes of event time. Each minute is generated from its own
random generator, seeded by the demo seed and the minute number, so any suffix of the
stream (what a resumed run replays) is produced without generating what came before,
and every process that asks for it gets exactly the same events.

Timestamps are epoch milliseconds and never decrease. The first reading of every
minute sits exactly on the minute, that is, exactly on a savepoint timestamp: a
savepoint at T must not include it and a resumed run must replay it, so a replay that
starts one millisecond late changes the result and the digest check catches it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["DEFAULT_START", "MINUTE_MS", "Reading", "StreamConfig"]

#: One minute in milliseconds: the length of a stream chunk and the savepoint interval.
MINUTE_MS = 60_000
#: 2024-01-01T00:00:00Z: the stream's first minute (on the savepoint grid).
DEFAULT_START = 1_704_067_200_000


class Reading(NamedTuple):
    """One event: sensor ``sensor`` (an index) measured ``value`` at ``timestamp``."""

    timestamp: int
    sensor: int
    value: float


@dataclass(frozen=True)
class StreamConfig:
    """The size and seed of a stream; two equal configs generate equal streams."""

    seed: int
    sensors: int
    events: int
    minutes: int
    start: int = DEFAULT_START

    def __post_init__(self) -> None:
        if self.sensors < 1 or self.events < 0 or self.minutes < 1:
            raise ValueError("a stream needs at least one sensor and one minute")
        if self.start % MINUTE_MS:
            raise ValueError(f"stream start {self.start} is not on a minute")

    @property
    def end(self) -> int:
        """The first timestamp after the stream: every reading is earlier."""
        return self.start + self.minutes * MINUTE_MS

    def sensor_id(self, sensor: int) -> str:
        """The entity id of a sensor index, zero-padded so ids sort like indexes."""
        return f"sensor-{sensor:0{len(str(self.sensors - 1))}d}"

    def events_in_minute(self, minute: int) -> int:
        """How many readings minute ``minute`` (0-based) holds: spread evenly."""
        base, extra = divmod(self.events, self.minutes)
        return base + (1 if minute < extra else 0)

    def events_before(self, timestamp: int) -> int:
        """How many readings have a timestamp smaller than ``timestamp``."""
        if timestamp <= self.start:
            return 0
        if timestamp >= self.end:
            return self.events
        minute = (timestamp - self.start) // MINUTE_MS
        base, extra = divmod(self.events, self.minutes)
        whole = minute * base + min(minute, extra)
        return whole + sum(1 for r in self._minute(minute) if r.timestamp < timestamp)

    def readings(self, since: int | None = None) -> Iterator[Reading]:
        """Every reading with a timestamp >= ``since`` (all when None), in stream order."""
        first = 0 if since is None else max(0, (since - self.start) // MINUTE_MS)
        for minute in range(first, self.minutes):
            for reading in self._minute(minute):
                if since is None or reading.timestamp >= since:
                    yield reading

    def _minute(self, minute: int) -> list[Reading]:
        count = self.events_in_minute(minute)
        # A str seed is hashed with SHA-512: the same in every process and Python build.
        rng = random.Random(f"statestore-demo/{self.seed}/{minute}")  # noqa: S311 - not a secret
        offsets = sorted(rng.randrange(MINUTE_MS) for _ in range(count))
        if offsets:
            offsets[0] = 0  # a reading exactly on the savepoint timestamp (see above)
        minute_start = self.start + minute * MINUTE_MS
        sensors = self.sensors
        readings = []
        for offset in offsets:
            # Skewed load: low-numbered sensors report far more often than the rest.
            sensor = int(sensors * rng.random() ** 2)
            value = round(rng.gauss(baseline(sensor), 2.5), 3)
            readings.append(Reading(minute_start + offset, sensor, value))
        return readings


def baseline(sensor: int) -> float:
    """The temperature a sensor reads on average (degrees Celsius)."""
    return 12.0 + (sensor * 7919 % 23)
