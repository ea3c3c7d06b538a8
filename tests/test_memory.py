"""The memory backend runs the in-process conformance suite (processes cannot share it)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from statestore.storage import MemoryStorage, Storage
from statestore.testing.conformance import InProcessConformance, Part


class TestMemory(InProcessConformance):
    persistent = True  # while the process lives, memory://NAME is the same store

    @pytest.fixture
    def url(self) -> str:
        return f"memory://test-{uuid.uuid4().hex}"

    def tamper(
        self,
        storage: Storage,
        run_id: str,
        timestamp: int,
        part: Part,
        mutate: Callable[[bytes], bytes],
    ) -> None:
        assert isinstance(storage, MemoryStorage)
        run = storage._store.runs[run_id]
        saved = run.savepoints[timestamp]
        if part == "manifest":
            saved.manifest = mutate(saved.manifest)
        else:
            for name in saved.refs:
                run.blobs[name] = mutate(run.blobs[name])
