"""The floor: the least work any durable savepoint store can do on this machine.

Saving encodes the whole entity list with one call of the fastest MessagePack encoder
available (ormsgpack, Rust), writes the bytes to a temporary file, fsyncs it, renames
it over the run's one file and fsyncs the directory: the shortest sequence that is both
durable and crash-safe (a crash leaves the old file or the new one). Loading reads the
file and decodes it with one call, the garbage collector paused as statestore pauses
it. No checksums, no index, no history, no validation: no real store can beat it, so
it is the yardstick every figure is divided by.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from typing import Any

import ormsgpack

from statestore import collector

from .data import Entities
from .subjects import Place, Subject

__all__ = ["Floor"]


class Floor(Subject):
    name = "floor"
    group = "floor"
    about = (
        "ormsgpack.packb of the list + write, fsync, rename, fsync dir; "
        "read + unpackb, collector paused"
    )

    def __init__(self, place: Place) -> None:
        self._written: int | None = None
        self.directory = place.directory / "floor"
        self.directory.mkdir(exist_ok=True)

    def _path(self, run_id: str) -> str:
        return os.path.join(self.directory, f"{run_id}.msgpack")

    def init_run(self, run_id: str) -> None:
        pass  # the file is the run

    def save(
        self, run_id: str, timestamp: int, entities: Entities, changed: Collection[str] | None
    ) -> None:
        data = ormsgpack.packb(entities)
        self._written = len(data)
        path = self._path(run_id)
        temporary = f"{path}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def load(self, run_id: str) -> Sequence[Any]:
        with open(self._path(run_id), "rb") as file:
            data = file.read()
        with collector.paused():  # as statestore pauses it, so a ratio measures the store
            loaded: Sequence[Any] = ormsgpack.unpackb(data)
        return loaded

    def close(self) -> None:
        pass

    def last_save_bytes(self, run_id: str) -> int | None:
        return self._written
