"""The conformance suite: every rule of the storage contract, as one pytest base class."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import ClassVar, Literal

import pytest

from ..storage import Storage, open_storage

Part = Literal["manifest", "pack"]


class StorageConformance:
    """Subclass per backend; provide the ``url`` fixture and the ``tamper`` back door.

    ``url`` names a fresh, empty store for each test; the suite opens it with
    :func:`statestore.open_storage` (several times when it needs several handles or
    processes on one store).
    """

    #: Whether separate processes opening ``url`` see one store (False for memory://).
    shared_across_processes: ClassVar[bool] = True
    #: Whether data survives closing every handle and reopening the URL.
    persistent: ClassVar[bool] = True

    @pytest.fixture
    def url(self) -> str:
        raise NotImplementedError("a backend's test class provides the url fixture")

    def tamper(
        self,
        storage: Storage,
        run_id: str,
        timestamp: int,
        part: Part,
        mutate: Callable[[bytes], bytes],
    ) -> None:
        """Back door: replace the stored bytes of one savepoint's manifest or pack with
        ``mutate(old_bytes)``, bypassing every check of the library."""
        raise NotImplementedError

    @pytest.fixture
    def storage(self, url: str) -> Iterator[Storage]:
        with open_storage(url) as storage:
            yield storage

    def test_round_trip(self, storage: Storage) -> None:
        storage.init_storage("run")
        storage.save_savepoint("run", 60_000, [("a", {"n": 1}), ("b", (1, 2))])
        assert storage.get_latest_savepoint("run") == (60_000, [("a", {"n": 1}), ("b", (1, 2))])
