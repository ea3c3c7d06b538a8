"""The S3 backend against a real S3 server (SeaweedFS): the whole conformance kit."""

from __future__ import annotations

import importlib.util
import os

import pytest

if importlib.util.find_spec("obstore") is None and os.environ.get("STATESTORE_REQUIRE_S3") != "1":
    pytest.skip("obstore is not installed: pip install -e '.[s3]'", allow_module_level=True)

import obstore

from statestore.storage import Storage
from statestore.storage._s3 import S3Storage
from statestore.storage._s3._head import blob_key, run_dir
from statestore.testing import StorageConformance
from statestore.testing.hooks import MANIFEST, PACK_PREFIX


def object_key(storage: Storage, run_id: str, timestamp: int, part: str) -> str:
    """The key (relative to the store's prefix) of one raw part of a savepoint."""
    assert isinstance(storage, S3Storage)
    head, _ = storage._read_head(run_id)
    assert head is not None
    entry = head.entry(timestamp)
    assert entry is not None, f"no savepoint {timestamp} in the head"
    if part == MANIFEST:
        return run_dir(run_id) + entry.manifest_key
    assert part.startswith(PACK_PREFIX), part
    name = part.removeprefix(PACK_PREFIX)
    return run_dir(run_id) + blob_key(head.blobs[name], name)


class TestS3(StorageConformance):
    @pytest.fixture
    def url(self, s3_store_url: str) -> str:
        return s3_store_url

    # The back doors: the manifest and pack objects the head names, read and written
    # with the storage's own client, past every check of the library.

    def raw_parts(self, storage: Storage, run_id: str, timestamp: int) -> list[str]:
        assert isinstance(storage, S3Storage)
        head, _ = storage._read_head(run_id)
        assert head is not None
        entry = head.entry(timestamp)
        assert entry is not None
        return [MANIFEST, *(PACK_PREFIX + name for name in entry.refs)]

    def raw_read(self, storage: Storage, run_id: str, timestamp: int, part: str) -> bytes:
        assert isinstance(storage, S3Storage)
        key = object_key(storage, run_id, timestamp, part)
        return bytes(obstore.get(storage._store, key).bytes())

    def raw_write(
        self, storage: Storage, run_id: str, timestamp: int, part: str, data: bytes
    ) -> None:
        assert isinstance(storage, S3Storage)
        obstore.put(storage._store, object_key(storage, run_id, timestamp, part), data)
