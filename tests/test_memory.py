"""The memory backend runs the in-process conformance suite (processes cannot share it)."""

from __future__ import annotations

import uuid

import pytest

from statestore.storage import MemoryStorage, Storage
from statestore.testing import InProcessConformance
from statestore.testing.hooks import MANIFEST, PACK_PREFIX


class TestMemory(InProcessConformance):
    persistent = True  # while the process lives, memory://NAME is the same store

    @pytest.fixture
    def url(self) -> str:
        return f"memory://test-{uuid.uuid4().hex}"

    # The back doors reach the store's dicts, which every handle on the name shares.

    def raw_parts(self, storage: Storage, run_id: str, timestamp: int) -> list[str]:
        assert isinstance(storage, MemoryStorage)
        saved = storage._store.runs[run_id].savepoints[timestamp]
        return [MANIFEST, *(PACK_PREFIX + name for name in saved.refs)]

    def raw_read(self, storage: Storage, run_id: str, timestamp: int, part: str) -> bytes:
        assert isinstance(storage, MemoryStorage)
        run = storage._store.runs[run_id]
        if part == MANIFEST:
            return run.savepoints[timestamp].manifest
        return run.blobs[part.removeprefix(PACK_PREFIX)]

    def raw_write(
        self, storage: Storage, run_id: str, timestamp: int, part: str, data: bytes
    ) -> None:
        assert isinstance(storage, MemoryStorage)
        run = storage._store.runs[run_id]
        if part == MANIFEST:
            run.savepoints[timestamp].manifest = data
        else:
            run.blobs[part.removeprefix(PACK_PREFIX)] = data
