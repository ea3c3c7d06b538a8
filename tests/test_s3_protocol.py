"""The S3 commit protocol step by step: garbage, epochs, tombstones and the cost in requests."""

from __future__ import annotations

import importlib.util
import json
import os
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

if importlib.util.find_spec("obstore") is None and os.environ.get("STATESTORE_REQUIRE_S3") != "1":
    pytest.skip("obstore is not installed: pip install -e '.[s3]'", allow_module_level=True)


import obstore
from s3_server import ForwardingProxy, S3Server

import statestore
from statestore.errors import StaleWriterError
from statestore.storage import S3Storage
from statestore.storage._s3 import _head
from statestore.storage._s3._head import run_dir
from statestore.testing.worker import payload, wholeness_problem


def _open(url: str) -> S3Storage:
    storage = statestore.open_storage(url)
    assert isinstance(storage, S3Storage)
    return storage


def _keys(storage: S3Storage) -> set[str]:
    return {meta["path"] for batch in obstore.list(storage._store) for meta in batch}


def _needed(storage: S3Storage, *run_ids: str) -> set[str]:
    """Every key the heads of ``run_ids`` name, and the heads themselves."""
    keys = set()
    for run_id in run_ids:
        head, _ = storage._read_head(run_id)
        assert head is not None
        keys.add(run_dir(run_id) + _head.HEAD)
        keys.update(run_dir(run_id) + key for key in head.referenced_keys())
    return keys


def test_a_killed_writers_objects_are_invisible_and_compact_reclaims_them(
    s3_store_url: str,
) -> None:
    with _open(s3_store_url) as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 1, payload(1))
        head, _ = storage._read_head("run")
        assert head is not None
        # What a writer killed between its uploads and its head update leaves behind.
        orphans = [
            run_dir("run") + _head.blob_key(head.epoch, "00000000000000000002-0123456789abcdef"),
            run_dir("run") + _head.new_manifest_key(head.epoch, 2),
        ]
        for key in orphans:
            obstore.put(storage._store, key, b"half a save")
        assert [row.timestamp for row in storage.list_savepoints("run")] == [1]
        assert storage.get_latest_savepoint("run") == (1, payload(1))
        storage.compact()
        assert _keys(storage) == _needed(storage, "run")
        assert storage.get_latest_savepoint("run") == (1, payload(1))


def test_a_collection_between_upload_and_commit_makes_the_writer_upload_again(
    s3_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another host compacts after this writer uploaded but before its head update: the
    update fails, the writer sees the new epoch and uploads again, nothing is torn."""
    with _open(s3_store_url) as storage, _open(s3_store_url) as other:
        storage.init_storage("run")
        storage.save_savepoint("run", 1, payload(1))
        replace_head = storage._replace_head
        compactions: list[int] = []

        def compact_first(*args: Any) -> bool:
            if not compactions:
                other.compact()  # deletes the first upload
                compactions.append(1)
            return replace_head(*args)

        monkeypatch.setattr(storage, "_replace_head", compact_first)
        storage.save_savepoint("run", 2, payload(2))
        assert compactions
        for timestamp in (1, 2):
            assert wholeness_problem(storage.get_savepoint("run", timestamp)) is None
        other.compact()
        assert _keys(storage) == _needed(storage, "run")


def test_a_prune_between_read_and_commit_makes_an_incremental_save_full(
    s3_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The savepoint an incremental save builds on is pruned by another host after the
    writer read the head: the commit sees its blobs gone and the base saves in full."""
    shared = [("still", "the same"), ("moving", 0)]
    with _open(s3_store_url) as storage, _open(s3_store_url) as other:
        storage.init_storage("run")
        storage.save_savepoint("run", 1, shared)
        cached_head = storage._cached_head
        pruned: list[bool] = []

        def prune_after_read(run_id: str) -> Any:
            found = cached_head(run_id)  # the head this writer starts from
            if not pruned:
                other.save_savepoint("run", 5, [("other", 1)])
                other.delete_old_savepoints("run", 1)  # frees savepoint 1's blobs
                pruned.append(True)
            return found

        monkeypatch.setattr(storage, "_cached_head", prune_after_read)
        storage.save_savepoint("run", 2, [("still", "the same"), ("moving", 1)])
        monkeypatch.undo()
        assert storage.get_savepoint("run", 2) == (2, [("still", "the same"), ("moving", 1)])
        assert [row.timestamp for row in storage.list_savepoints("run")] == [2, 5]
        assert _keys(storage) == _needed(storage, "run")


def test_a_read_racing_a_replace_reads_the_newer_head_not_damage(
    s3_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another host replaces the savepoint after this reader read the head: the objects
    the reader was about to fetch are gone, so it reads the new head and its savepoint."""
    with _open(s3_store_url) as reader, _open(s3_store_url) as other:
        other.init_storage("run")
        other.save_savepoint("run", 1, payload(1))
        read_head = reader._read_head
        replaced: list[bool] = []

        def replace_after_read(run_id: str) -> Any:
            found = read_head(run_id)
            if not replaced:
                other.save_savepoint("run", 1, payload(7))  # deletes the old objects
                replaced.append(True)
            return found

        monkeypatch.setattr(reader, "_read_head", replace_after_read)
        assert reader.get_savepoint("run", 1) == (1, payload(7))
        assert replaced


def test_delete_run_leaves_a_tombstone_that_keeps_the_token(s3_store_url: str) -> None:
    with _open(s3_store_url) as storage:
        storage.init_storage("run")
        token = storage.acquire_writer("run")
        storage.save_savepoint("run", 1, payload(1), writer_token=token)
        storage.delete_run("run")
        assert not storage.is_initialized("run")
        assert storage.list_runs() == []
        # Only the tombstone is left: a racing saver finds the run gone.
        assert _keys(storage) == {run_dir("run") + _head.HEAD}
        with pytest.raises(statestore.errors.RunNotInitializedError):
            storage.save_savepoint("run", 2, payload(2), writer_token=token)
        # Created again, the run starts empty and the old writer stays fenced.
        storage.init_storage("run")
        assert storage.list_savepoints("run") == []
        with pytest.raises(StaleWriterError):
            storage.save_savepoint("run", 2, payload(2), writer_token=token - 1)
        assert storage.acquire_writer("run") == token + 1


def test_a_remembered_head_never_decides_a_refusal_or_a_no_op(s3_store_url: str) -> None:
    """A handle writes from the head it last saw; when another host changed the run
    since, every decision that writes nothing is made again on the current head."""
    with _open(s3_store_url) as storage, _open(s3_store_url) as other:
        storage.init_storage("run")
        storage.save_savepoint("run", 1, payload(1))
        other.delete_run("run")
        storage.init_storage("run")  # remembered: exists; current: dropped
        assert other.is_initialized("run")
        other.delete_savepoints("run", [7])  # nothing to do, and nothing done
        other.save_savepoint("run", 7, payload(7))
        storage.delete_savepoints("run", [7])  # remembered: no 7; current: there is
        assert other.list_savepoints("run") == []
        other.delete_run("run")
        storage.init_storage("run")
        token = other.acquire_writer("run")
        storage.save_savepoint("run", 2, payload(2), writer_token=token)  # remembered: stale
        assert [row.timestamp for row in other.list_savepoints("run")] == [2]


def test_a_damaged_head_is_a_clear_error(s3_store_url: str) -> None:
    with _open(s3_store_url) as storage:
        storage.init_storage("run")
        obstore.put(storage._store, run_dir("run") + _head.HEAD, b"{not json")
        with pytest.raises(statestore.errors.BackendError, match="head object is damaged"):
            storage.list_savepoints("run")


@pytest.mark.parametrize(
    "taken_at", [pytest.param(None, id="older head"), "yesterday", -5, 2**64, True]
)
def test_a_head_without_a_usable_token_time_still_serves(s3_store_url: str, taken_at: Any) -> None:
    """A head an older statestore wrote has no time; a crafted one's is dropped, not used."""
    with _open(s3_store_url) as storage:
        storage.init_storage("run")
        token = storage.acquire_writer("run")
        storage.save_savepoint("run", 1, payload(1), writer_token=token)
        key = run_dir("run") + _head.HEAD
        document = json.loads(bytes(obstore.get(storage._store, key).bytes()))
        if taken_at is None:
            del document["token_taken_at"]
        else:
            document["token_taken_at"] = taken_at
        obstore.put(storage._store, key, json.dumps(document).encode())
        assert storage.current_writer("run") == statestore.storage.WriterToken(token, None)
        storage.save_savepoint("run", 2, payload(2), writer_token=token)  # the token holds
        assert storage.get_latest_savepoint("run") == (2, payload(2))


# ------------------------------------------------------------------ requests per operation


class _CountingProxy(ForwardingProxy):
    """Forwards requests to the S3 server and counts them by method."""

    counts: ClassVar[Counter[str]] = Counter()

    def passes(self, status: int) -> bool:
        listing = self.command == "GET" and "list-type" in self.path
        self.counts["LIST" if listing else self.command] += 1
        return True


@pytest.fixture
def counted_url(s3_server: S3Server) -> Iterator[str]:
    _CountingProxy.upstream = ("127.0.0.1", s3_server.ports["s3.port"])
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _CountingProxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{proxy.server_address[1]}"
    try:
        yield s3_server.url(f"counted-{os.getpid()}-{id(proxy)}", endpoint=endpoint)
    finally:
        proxy.shutdown()
        proxy.server_close()


def _count(call: Any, storage: S3Storage | None = None) -> dict[str, int]:
    """The requests the proxy saw during ``call``; the handle's own count agrees."""
    before = Counter(storage.requests) if storage is not None else Counter()
    _CountingProxy.counts.clear()
    call()
    seen = dict(_CountingProxy.counts)
    if storage is not None:  # a bulk delete is a POST on the wire
        wire = Counter({"DELETE" if kind == "POST" else kind: n for kind, n in seen.items()})
        assert storage.requests - before == wire
    return seen


def test_requests_per_operation_are_what_docs_s3_md_says(counted_url: str) -> None:
    opened: list[S3Storage] = []
    assert _count(lambda: opened.append(_open(counted_url))) == {"PUT": 3, "POST": 1}
    storage = opened[0]
    with storage, _open(counted_url) as other:
        assert _count(lambda: storage.init_storage("run"), storage) == {"GET": 1, "PUT": 1}
        # A save: one pack, its table, the manifest, the head replaced on the ETag this
        # handle remembers from its last write (no GET: nobody else wrote).
        assert _count(lambda: storage.save_savepoint("run", 1, payload(1)), storage) == {"PUT": 4}
        # Another handle's save: its first try starts from the head it read.
        assert _count(lambda: other.save_savepoint("run", 2, payload(2)), other) == {
            "GET": 1,
            "PUT": 4,
        }
        # This handle's remembered head is stale now: its conditional put fails, it
        # reads the head and puts again (the pack and manifest it uploaded are kept).
        assert _count(lambda: storage.save_savepoint("run", 3, payload(3)), storage) == {
            "GET": 1,
            "PUT": 5,
        }
        # A load: the head, the manifest, its table, its pack.
        assert _count(lambda: storage.get_latest_savepoint("run"), storage) == {"GET": 4}
        assert _count(lambda: storage.list_savepoints("run"), storage) == {"GET": 1}
        assert _count(lambda: storage.acquire_writer("run"), storage) == {"GET": 1, "PUT": 1}
        assert _count(lambda: storage.current_writer("run"), storage) == {"GET": 1}
        # Sizes: the head and manifest (not remembered yet), then the head, the manifest,
        # its table and its pack; asked again, the head and the manifest alone.
        assert _count(lambda: storage.summarize_savepoint("run", 3), storage) == {"GET": 6}
        assert _count(lambda: storage.summarize_savepoint("run", 3), storage) == {"GET": 2}
        # A prune: the head (to choose), the new head, one listing of the run and one
        # bulk delete.
        assert _count(lambda: storage.delete_old_savepoints("run", 1), storage) == {
            "GET": 1,
            "PUT": 1,
            "LIST": 1,
            "POST": 1,
        }
        # Replacing a savepoint frees the old one's objects after the head update. (The
        # first save after a load also reads the loaded savepoint again, to build on it.)
        assert _count(lambda: storage.save_savepoint("run", 3, payload(4)), storage) == {
            "GET": 4,
            "PUT": 4,
            "POST": 1,
        }
        for timestamp, states in ((3, payload(4)),):
            assert other.get_savepoint("run", timestamp) == (timestamp, states)
