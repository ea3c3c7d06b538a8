"""The PostgreSQL server itself killed mid-save and restarted: nothing acknowledged is lost.

A writer process (``tests/fault_helpers.py saver``) saves savepoints back to back,
printing ``ACK <ts>`` once each save returned and retrying through the errors of an
outage. Meanwhile the test kills the server of its own cluster, at random moments
while saves are in flight, several times: ``pg_ctl stop -m immediate`` (every process
of the server quits at once, no checkpoint: crash recovery on the next start) or
SIGKILL of the postmaster. After each restart the writer must go on saving; at the
end every acknowledged savepoint is there and whole, no savepoint is half-written,
no blob is left that no savepoint refers to, and the storage still works.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import psycopg
import pytest
from conftest import with_query
from fault_helpers import Child
from postgres_server import SERVICE_USER, PostgresServer, ServerUnavailableError

from statestore import BackendError, StateStore, open_storage
from statestore.storage._postgres._options import settings_from_url
from statestore.storage._postgres._schema import Tables
from statestore.testing.faults import ENTITIES, SCHEDULE, engine_savepoint, engine_state
from statestore.testing.worker import wholeness_problem

RUN = "outage-run"
ROUNDS = 2
#: Saves the writer must acknowledge between two outages, and after the last one.
ACKS_BETWEEN = 5


def pg_ctl(server: PostgresServer, *args: str) -> None:
    command = [str(server.bin_dir / "pg_ctl"), "-D", str(server.data_dir), *args]
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        command = ["runuser", "-u", SERVICE_USER, "--", *command]
    subprocess.run(command, capture_output=True, check=True, timeout=120)


def crash(server: PostgresServer, how: str) -> None:
    """Take the server down the hard way."""
    if how == "immediate stop":
        pg_ctl(server, "stop", "-m", "immediate", "-w")
        return
    pid = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)


def start_again(server: PostgresServer) -> None:
    """Start the crashed server on its port; its orphaned backends may take a moment to exit."""
    deadline = time.monotonic() + 60
    while True:
        try:
            server.start_again()
        except ServerUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
        else:
            return


def take(line: str, acks: list[int], errors: list[str]) -> None:
    """File one line of the writer's output."""
    if line.startswith("ACK "):
        acks.append(int(line.split()[1]))
    else:
        errors.append(line)


def wait_for_acks(writer: Child, acks: list[int], errors: list[str], count: int) -> None:
    """Read the writer's lines until ``count`` more ACKs came."""
    target = len(acks) + count
    while len(acks) < target:
        take(writer.line(timeout=120), acks, errors)


def orphan_blobs(url: str) -> list[str]:
    """Blobs that no savepoint refers to: what a half-done commit would leave."""
    settings = settings_from_url(url, {})
    tables = Tables(settings.schema)
    with psycopg.connect(settings.conninfo, autocommit=True) as conn:
        rows = conn.execute(
            tables.sql(
                """SELECT DISTINCT b.name FROM {blobs} b WHERE NOT EXISTS (
                    SELECT 1 FROM {savepoints} s
                    WHERE s.run_key = b.run_key AND b.name = ANY (s.refs))"""
            )
        ).fetchall()
    return [name for (name,) in rows]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["immediate stop", "postmaster SIGKILL"])
def test_a_server_crash_mid_save_loses_nothing_acknowledged(
    private_postgres: PostgresServer, how: str
) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    url = with_query(private_postgres.url(), schema="outage", pool_timeout="1", connect_timeout="2")
    acks: list[int] = []
    errors: list[str] = []
    with Child("saver", url, RUN, "1000") as writer:
        writer.ready()
        for _round in range(ROUNDS):
            wait_for_acks(writer, acks, errors, ACKS_BETWEEN)
            time.sleep(rng.uniform(0, 0.05))  # somewhere inside the next saves
            crash(private_postgres, how)
            time.sleep(rng.uniform(0.1, 0.5))  # the writer meets the outage
            start_again(private_postgres)
        wait_for_acks(writer, acks, errors, ACKS_BETWEEN)  # it recovered
        writer.kill()
        for line in writer.rest():  # what it printed before it was killed
            take(line, acks, errors)
    where = f"seed {seed}, {how}"
    # A short outage may pass unnoticed: the storage retries once on a new connection.
    assert all(line.startswith("ERR ") for line in errors), errors
    assert acks == sorted(set(acks)), f"{where}: {acks}"
    with open_storage(url) as storage:
        stored = [row.timestamp for row in storage.list_savepoints(RUN)]
        lost = sorted(set(acks) - set(stored))
        assert lost == [], f"{where}: acknowledged savepoints lost: {lost}"
        # At most the save in flight when the writer was killed went unacknowledged.
        assert len(stored) - len(acks) <= 1, f"{where}: {stored} vs {acks}"
        for timestamp in stored:
            problem = wholeness_problem(storage.get_savepoint(RUN, timestamp))
            assert problem is None, f"{where}: {problem}"
        assert orphan_blobs(url) == []
        storage.save_savepoint(RUN, stored[-1] + 1, [("after", "recovery")])
        assert storage.get_latest_savepoint(RUN) == (stored[-1] + 1, [("after", "recovery")])
    print(f"{where}: {ROUNDS} crashes, {len(acks)} savepoints acknowledged, all kept; "
          f"{len(errors)} errors seen by the writer during the outages")  # fmt: skip


def test_the_engine_retries_a_persist_once_the_server_is_back(
    private_postgres: PostgresServer,
) -> None:
    url = with_query(private_postgres.url(), schema="engine", pool_timeout="1")
    with open_storage(url) as storage:
        store = StateStore(RUN, SCHEDULE, storage=storage)
        entities = store.init_run_state(0, [(e, engine_state("A", e, 0)) for e in ENTITIES])

        def ack(timestamp: int, *which: int) -> None:
            for i in which or range(len(entities)):
                entities[i].update_state(
                    entities[i].timestamp, engine_state("A", ENTITIES[i], timestamp)
                )
                entities[i].ack_processed_time(timestamp)

        ack(1000)
        ack(2000, 0, 1)  # savepoint 2000 filled by all but the last entity: in memory
        crash(private_postgres, "immediate stop")
        with pytest.raises(BackendError, match="savepoint 2000"):
            ack(2000, 2)  # the call that completes it cannot persist it
        start_again(private_postgres)
        entities[2].ack_processed_time(2000)  # the same call again: persisted now
        assert storage.get_latest_savepoint(RUN) == engine_savepoint("A", 2000)
        ack(3000)
        saved = [storage.get_savepoint(RUN, row.timestamp) for row in storage.list_savepoints(RUN)]
        assert saved == [engine_savepoint("A", ts) for ts in (1000, 2000, 3000)]
