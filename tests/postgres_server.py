"""A throwaway PostgreSQL cluster for the tests, built with the machine's initdb and pg_ctl.

The cluster lives in a fresh temp directory, listens on a free TCP port of 127.0.0.1
(password authentication, SCRAM) and on a Unix socket inside that directory, runs with
``fsync=on`` like a real server, and is deleted by :meth:`PostgresServer.stop`.
PostgreSQL refuses to run as root: when the tests run as root, every server command runs
as the unprivileged ``postgres`` user (``runuser -u postgres --``).

Also usable by hand::

    python tests/postgres_server.py     # starts a cluster, prints its URL, stops on Enter
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["PostgresServer", "ServerUnavailableError", "find_bin_dir", "reap_abandoned"]

#: The unprivileged account that runs the server when the tests run as root.
SERVICE_USER = "postgres"
SUPERUSER = "statestore"


DIR_PREFIX = "statestore-pg-"
#: The pid of the process that started a cluster: when it is gone, the cluster is abandoned.
OWNER_FILE = "owner.pid"


class ServerUnavailableError(Exception):
    """No PostgreSQL server can be started here; the message says why and what to install."""


def find_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin`` with initdb and pg_ctl, or one on PATH."""

    def version(path: str) -> int:
        name = Path(path).parent.name
        return int(name) if name.isdigit() else 0

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).parent))
    for candidate in candidates:
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    return None


def reap_abandoned(bin_dir: Path) -> None:
    """Stop and delete the clusters of test processes that died without cleaning up.

    A test run killed outright (SIGKILL, a closed terminal) cannot stop its server;
    the next run does it, so servers do not pile up on a shared machine.
    """
    for base in Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}*"):
        try:
            owner = int((base / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, or being created right now
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            pass  # the owner is gone: reap below
        except PermissionError:
            continue  # alive, another user's
        else:
            continue  # alive
        PostgresServer(bin_dir, adopt=base).stop()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PostgresServer:
    """One private cluster: :meth:`start`, :meth:`url`, :meth:`restart`, :meth:`stop`."""

    def __init__(self, bin_dir: Path, adopt: Path | None = None) -> None:
        """A new cluster directory, or ``adopt`` an existing one (to stop it)."""
        self.bin_dir = bin_dir
        self.password = secrets.token_urlsafe(16)
        self.port = 0
        self._as_service_user = os.geteuid() == 0
        if self._as_service_user:
            try:
                self._service = pwd.getpwnam(SERVICE_USER)
            except KeyError:
                raise ServerUnavailableError(
                    f"running as root and there is no {SERVICE_USER!r} user to run "
                    "PostgreSQL as (it refuses to run as root)"
                ) from None
        if adopt is None:
            # Directly under the temp dir: pytest's own temp dirs are private to root.
            adopt = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))
            (adopt / OWNER_FILE).write_text(str(os.getpid()))
        self.base = adopt
        self.data_dir = self.base / "data"
        self.socket_dir = self.base / "sockets"
        self.log_file = self.base / "server.log"

    # ---------------------------------------------------------------- commands

    def _run(self, *args: str) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self._as_service_user:
            command = ["runuser", "-u", SERVICE_USER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
        if done.returncode != 0:
            log = self.log_file.read_text() if self.log_file.exists() else ""
            raise ServerUnavailableError(
                f"{args[0]} failed ({done.returncode}): {done.stderr.strip()}\n{log[-2000:]}"
            )

    def _pg_ctl(self, action: str, *extra: str) -> None:
        self._run("pg_ctl", action, "-D", str(self.data_dir), "-l", str(self.log_file), "-w",
                  "-t", "60", *extra)  # fmt: skip

    def start(self) -> PostgresServer:
        """initdb (once) and start the server on a free port; returns self."""
        if not self.data_dir.exists():
            self._init_cluster()
        for attempt in range(3):  # another process may take the free port first
            self.port = _free_port()
            options = f"-p {self.port} -c listen_addresses=127.0.0.1"
            try:
                self._pg_ctl("start", "-o", options)
            except ServerUnavailableError:
                if attempt == 2:
                    raise
            else:
                return self
        raise AssertionError("unreachable")

    def _init_cluster(self) -> None:
        self.socket_dir.mkdir()
        password_file = self.base / "password"
        password_file.write_text(self.password + "\n")
        if self._as_service_user:
            for path in (self.base, self.socket_dir, password_file):
                os.chown(path, self._service.pw_uid, self._service.pw_gid)
        self._run(
            "initdb", "-D", str(self.data_dir), "-U", SUPERUSER, f"--pwfile={password_file}",
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C",
            "--no-sync",  # initdb's final sync only; the server itself runs with fsync=on
        )  # fmt: skip
        password_file.unlink()
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# statestore test cluster\n"
                "fsync = on\n"
                "synchronous_commit = on\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "max_connections = 200\n"
                "shared_buffers = 32MB\n"
                "log_min_messages = warning\n"
            )

    def url(
        self, dbname: str = "postgres", user: str = SUPERUSER, password: str | None = None
    ) -> str:
        """A TCP URL for ``user`` (the superuser, with its password, by default)."""
        secret = self.password if password is None else password
        return f"postgresql://{user}:{secret}@127.0.0.1:{self.port}/{dbname}"

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every connection is cut, the port stays the same."""
        self._pg_ctl("restart", "-m", "fast", "-o",
                     f"-p {self.port} -c listen_addresses=127.0.0.1")  # fmt: skip

    def stop_server(self) -> None:
        """Stop the server, keep the cluster (``start_again`` brings it back on its port)."""
        self._pg_ctl("stop", "-m", "fast")

    def start_again(self) -> None:
        """Start a stopped cluster on the port it had."""
        self._pg_ctl("start", "-o", f"-p {self.port} -c listen_addresses=127.0.0.1")

    def stop(self) -> None:
        """Stop the server (immediately) and delete the cluster."""
        with contextlib.suppress(ServerUnavailableError, subprocess.TimeoutExpired):
            if (self.data_dir / "postmaster.pid").exists():
                self._pg_ctl("stop", "-m", "immediate")
        shutil.rmtree(self.base, ignore_errors=True)


if __name__ == "__main__":
    found = find_bin_dir()
    if found is None:
        raise SystemExit("no initdb/pg_ctl found; install the postgresql package")
    server = PostgresServer(found).start()
    try:
        print(server.url())
        input("PostgreSQL is running; press Enter to stop it. ")
    finally:
        server.stop()
