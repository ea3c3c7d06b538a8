"""S3-specific faults: a server that ignores conditions, a server killed mid-save, racing hosts."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

if importlib.util.find_spec("obstore") is None and os.environ.get("STATESTORE_REQUIRE_S3") != "1":
    pytest.skip("obstore is not installed: pip install -e '.[s3]'", allow_module_level=True)

import obstore
from s3_server import ForwardingProxy, S3Server

import statestore
from statestore.errors import BackendError, ConfigError, StaleWriterError
from statestore.storage import S3Storage
from statestore.storage._s3._head import run_dir
from statestore.testing.worker import payload, wholeness_problem

RACE_WORKER = Path(__file__).resolve().parent / "s3_race_worker.py"


# ------------------------------------------------------------------ conditional writes


class _CarelessS3(BaseHTTPRequestHandler):
    """A tiny S3 look-alike that stores objects and ignores If-Match and If-None-Match."""

    objects: ClassVar[dict[str, bytes]] = {}

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: the test's output is its assertions

    def _reply(self, status: int, body: bytes = b"", etag: str | None = None) -> None:
        self.send_response(status)
        if etag:
            self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Last-Modified", "Mon, 07 Dec 2026 12:00:00 GMT")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    @staticmethod
    def _etag(data: bytes) -> str:
        return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'

    def do_PUT(self) -> None:
        data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.objects[self.path.split("?")[0]] = data
        self._reply(200, etag=self._etag(data))

    def do_GET(self) -> None:
        data = self.objects.get(self.path.split("?")[0])
        if data is None:
            self._reply(404, b"<Error><Code>NoSuchKey</Code></Error>")
        else:
            self._reply(200, data, etag=self._etag(data))

    do_HEAD = do_GET  # noqa: N815 - http.server's naming

    def do_DELETE(self) -> None:
        self.objects.pop(self.path.split("?")[0], None)
        self._reply(204)

    def do_POST(self) -> None:  # DeleteObjects: POST /bucket?delete with the keys in XML
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        bucket = self.path.split("?")[0].rstrip("/")
        keys = re.findall(r"<Key>(.*?)</Key>", body)
        for key in keys:
            self.objects.pop(f"{bucket}/{key}", None)
        deleted = "".join(f"<Deleted><Key>{key}</Key></Deleted>" for key in keys)
        self._reply(200, f"<DeleteResult>{deleted}</DeleteResult>".encode())


@pytest.fixture
def careless_endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CarelessS3)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


SECRET = "careless-Secret-0123"  # noqa: S105 - a test value, not a credential


def _careless_url(endpoint: str, **options: str) -> str:
    query = "&".join(f"{name}={value}" for name, value in options.items())
    return (
        f"s3://bucket/p?endpoint={endpoint}&access_key_id=AK&secret_access_key={SECRET}"
        f"&retry_timeout=2{'&' + query if query else ''}"
    )


def test_a_server_that_ignores_conditional_writes_is_refused(careless_endpoint: str) -> None:
    with pytest.raises(ConfigError, match="does not enforce conditional writes") as caught:
        statestore.open_storage(_careless_url(careless_endpoint))
    message = str(caught.value)
    assert careless_endpoint in message  # names the endpoint...
    assert SECRET not in message  # ...never the secret
    assert "conditional_writes=warn" in message  # and says how to insist
    assert _CarelessS3.objects == {}  # the probe object was deleted


def test_warn_opens_such_a_server_with_a_loud_warning(
    careless_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="statestore")
    url = _careless_url(careless_endpoint, conditional_writes="warn")
    with statestore.open_storage(url) as storage:
        assert isinstance(storage, S3Storage)
        storage.init_storage("run")
        storage.save_savepoint("run", 5, [("a", 1)])
        assert storage.get_latest_savepoint("run") == (5, [("a", 1)])
    assert "does not enforce conditional writes" in caplog.text
    assert careless_endpoint in caplog.text
    assert SECRET not in caplog.text


def test_a_real_server_passes_the_check(s3_store_url: str) -> None:
    with statestore.open_storage(s3_store_url) as storage:
        # The probe leaves nothing behind: the store is empty.
        assert isinstance(storage, S3Storage)
        assert [meta for batch in obstore.list(storage._store) for meta in batch] == []


# ------------------------------------------------------------------ a lost answer


class _AnswerLosingProxy(ForwardingProxy):
    """Forwards every request to the S3 server; of the first ``lose`` conditional puts of a
    head object, the server applies each but its answer never reaches the client.

    Only answers of success count, unless ``any_answer``: then the client's retries of
    the applied put (which the server refuses: the head changed) go unanswered too, until
    the client gives up.
    """

    lose: ClassVar[int] = 0
    lost: ClassVar[int] = 0
    any_answer: ClassVar[bool] = False
    lock = threading.Lock()

    def passes(self, status: int) -> bool:
        with self.lock:
            drop = (
                self.command == "PUT"
                and self.path.split("?")[0].endswith("/head")
                and "If-Match" in self.headers
                and (status == 200 or self.any_answer)
                and type(self).lost < self.lose
            )
            if drop:
                type(self).lost += 1
        return not drop  # a dropped one was applied upstream; the client hears nothing


@pytest.fixture
def losing_url(s3_server: S3Server) -> Iterator[str]:
    """A store reached through :class:`_AnswerLosingProxy`; the client gives up after 1 s."""
    _AnswerLosingProxy.upstream = ("127.0.0.1", s3_server.ports["s3.port"])
    _AnswerLosingProxy.lose = _AnswerLosingProxy.lost = 0
    _AnswerLosingProxy.any_answer = False
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _AnswerLosingProxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{proxy.server_address[1]}"
    try:
        yield s3_server.url(
            f"lost-{os.getpid()}-{time.monotonic_ns()}", endpoint=endpoint, retry_timeout="1"
        )
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_a_client_that_gave_up_on_an_applied_head_update_finds_it_landed(
    losing_url: str,
) -> None:
    """Every answer to the put and to the client's retries of it is lost until the client
    gives up: the writer reads the head, finds its own update, and does not do it again."""
    with statestore.open_storage(losing_url) as storage:
        storage.init_storage("run")
        before = storage.acquire_writer("run")
        _AnswerLosingProxy.lose, _AnswerLosingProxy.any_answer = 1000, True
        token = storage.acquire_writer("run")
        storage.save_savepoint("run", 1, payload(1), writer_token=token)
        retried = _AnswerLosingProxy.lost
        _AnswerLosingProxy.lose = 0
        assert retried >= 3  # each operation's put was sent and retried, none answered
        assert token == before + 1
        assert storage.acquire_writer("run") == token + 1
        assert storage.get_latest_savepoint("run") == (1, payload(1))


def test_a_head_update_applied_but_unanswered_is_not_done_twice(losing_url: str) -> None:
    url = losing_url
    try:
        with statestore.open_storage(url) as storage:
            storage.init_storage("run")
            storage.save_savepoint("run", 1, payload(1))
            before = storage.acquire_writer("run")

            def lose_one_answer() -> None:
                _AnswerLosingProxy.lose, _AnswerLosingProxy.lost = 1, 0

            lose_one_answer()
            token = storage.acquire_writer("run")
            assert _AnswerLosingProxy.lost == 1
            assert token == before + 1  # taken once, not again after the lost answer
            lose_one_answer()
            storage.save_savepoint("run", 2, payload(2), writer_token=token)
            assert _AnswerLosingProxy.lost == 1
            lose_one_answer()
            storage.save_savepoint("run", 1, payload(1), writer_token=token)  # a replace
            assert _AnswerLosingProxy.lost == 1
            _AnswerLosingProxy.lose = 0
            # Each landed once: one token taken, both savepoints whole, nothing left over.
            assert storage.acquire_writer("run") == token + 1
            assert [row.timestamp for row in storage.list_savepoints("run")] == [1, 2]
            for timestamp in (1, 2):
                assert storage.get_savepoint("run", timestamp) == (timestamp, payload(timestamp))
            assert isinstance(storage, S3Storage)
            head, _ = storage._read_head("run")
            assert head is not None
            stored = {meta["path"] for batch in obstore.list(storage._store) for meta in batch}
            wanted = {run_dir("run") + key for key in head.referenced_keys()}
            assert stored == wanted | {run_dir("run") + "head"}
    finally:
        _AnswerLosingProxy.lose = 0


# ------------------------------------------------------------------ the server killed


def test_the_server_killed_and_restarted_mid_save_tears_nothing(private_s3: S3Server) -> None:
    url = private_s3.url("restart", retry_timeout="60")
    acked: list[int] = []
    failures: list[BaseException] = []
    stop = threading.Event()
    with statestore.open_storage(url) as storage:
        storage.init_storage("run")

        def save_until_stopped() -> None:
            timestamp = 0
            while not stop.is_set():
                timestamp += 1
                try:
                    storage.save_savepoint("run", timestamp, payload(timestamp))
                except BackendError as exc:  # allowed: a clear error, nothing torn
                    failures.append(exc)
                else:
                    acked.append(timestamp)

        saver = threading.Thread(target=save_until_stopped)
        saver.start()
        try:
            while len(acked) < 5:
                time.sleep(0.01)
            private_s3.stop_server()  # SIGKILL, most likely in the middle of a save
            before = len(acked)
            time.sleep(0.5)
            private_s3.start()
            deadline = time.monotonic() + 60
            while len(acked) < before + 5 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            saver.join(timeout=120)
        assert len(acked) >= before + 5, f"no save succeeded after the restart: {failures}"
        assert all(isinstance(exc, BackendError) for exc in failures)
    with statestore.open_storage(url) as storage:  # a fresh handle, nothing cached
        listed = [row.timestamp for row in storage.list_savepoints("run")]
        assert set(acked) <= set(listed), "an acknowledged savepoint was lost"
        for timestamp in listed:
            assert wholeness_problem(storage.get_savepoint("run", timestamp)) is None
        storage.save_savepoint("run", 10**6, payload(10**6))
        assert storage.get_latest_savepoint("run") == (10**6, payload(10**6))


# ------------------------------------------------------------------ racing hosts


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(RACE_WORKER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_hosts_racing_on_one_run_keep_every_savepoint_whole_and_fence(
    s3_store_url: str, tmp_path: Path
) -> None:
    """Four writer processes with their own clients take the token, save and prune one
    run while a fifth compacts the store; every savepoint that survives is whole."""
    go, stop = tmp_path / "go", tmp_path / "stop"
    writers, keep = 4, 5
    children = [
        _spawn("writer", s3_store_url, "run", str(w), "5", "4", str(keep), str(go))
        for w in range(writers)
    ]
    compactor = _spawn("compact", s3_store_url, "run", str(go), str(stop))
    for child in [*children, compactor]:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "READY", child.stderr
    go.touch()
    outputs = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        outputs.append(out.split("\n"))
    stop.touch()
    out, err = compactor.communicate(timeout=120)
    assert compactor.returncode == 0, err
    assert int(out.split()[-1]) >= 1
    lines = [line.split() for output in outputs for line in output if line]
    tokens = [int(line[1]) for line in lines if line[0] == "TOKEN"]
    acks = {int(line[1]): int(line[2]) for line in lines if line[0] == "ACK"}
    stale = [int(line[1]) for line in lines if line[0] == "STALE"]
    print(f"tokens {len(tokens)}, saves {len(acks)}, refused stale {len(stale)}")
    assert len(tokens) == len(set(tokens)) == writers * 5, "two writers got one token"
    assert stale, "no writer was ever fenced: the children did not race"
    # A save landed only with the token current at that moment: within one writer's
    # output, no ACK follows a STALE of the same token.
    for output in outputs:
        fenced: set[str] = set()
        for line in filter(None, output):
            kind, *rest = line.split()
            if kind == "STALE":
                fenced.add(rest[0])
            elif kind == "ACK":
                assert rest[1] not in fenced
    with statestore.open_storage(s3_store_url) as storage:
        listed = [row.timestamp for row in storage.list_savepoints("run")]
        assert set(listed) <= set(acks), "a savepoint nobody acknowledged"
        # The newest `keep` acknowledged savepoints are newer than anything a prune cut.
        assert sorted(acks)[-keep:] == listed[-keep:]
        for timestamp in listed:
            assert wholeness_problem(storage.get_savepoint("run", timestamp)) is None
        # Fencing still holds once the race is over.
        current = storage.acquire_writer("run")
        with pytest.raises(StaleWriterError):
            storage.save_savepoint("run", 1, payload(1), writer_token=current - 1)
        assert 1 not in [row.timestamp for row in storage.list_savepoints("run")]
