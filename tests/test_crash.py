"""Crash test: kill a writer with SIGKILL at random moments; nothing acknowledged is lost.

Each round starts ``crash_writer.py`` on the same store, lets it save and prune for a
random while, and kills it (inside a save, a prune, a token update, or between them:
wherever it happens to be). Afterwards every savepoint decodes and is whole (no mix of
two saves), and the last savepoint whose save returned is still there, or retention
legitimately replaced it with newer ones. The next round's writer resumes the damaged
store, so the leftovers of each crash are exercised by the next writer too.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from statestore import open_storage
from statestore.testing._worker import wholeness_problem

WRITER = Path(__file__).with_name("crash_writer.py")
ROUNDS = 15
RUN_ID = "crash-run"

# One entry per backend under test, making a fresh store's URL. A server backend adds a
# line that asks for its server fixture, e.g.
# "postgresql": lambda request, tmp: request.getfixturevalue("postgres_url").
URL_MAKERS: dict[str, Callable[[pytest.FixtureRequest, Path], str]] = {
    "sqlite": lambda request, tmp: f"sqlite:///{tmp}/crash.db",
    "file": lambda request, tmp: f"file://{tmp}/crash-store",
    "postgresql": lambda request, tmp: request.getfixturevalue("postgres_store_url"),
}


@pytest.fixture(params=sorted(URL_MAKERS))
def crash_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return URL_MAKERS[request.param](request, tmp_path)


class Writer:
    """One crash_writer.py process and the ACK lines it printed before it died."""

    def __init__(self, url: str, seed: int, keep_n: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(WRITER), url, RUN_ID, str(seed), str(keep_n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.acks: list[int] = []
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("ACK "):
                self.acks.append(int(line.split()[1]))
            elif line.strip() == "READY":
                self.ready.set()
        self.ready.set()  # the writer exited: stop waiting either way

    def kill(self) -> str:
        """SIGKILL the writer; returns its stderr. Every flushed ACK is read by then."""
        self.process.kill()
        self.process.wait(timeout=30)
        self._reader.join(timeout=30)
        assert self.process.stderr is not None
        return self.process.stderr.read()


def check_store(url: str, last_ack: int | None, keep_n: int, where: str) -> None:
    """Every savepoint whole; the last ACKed one kept unless newer ones pushed it out."""
    with open_storage(url) as storage:
        rows = storage.list_savepoints(RUN_ID)
        if last_ack is None:
            assert len(rows) <= 1, f"{where}: savepoints appeared without any ACK: {rows}"
        else:
            latest = storage.get_latest_savepoint(RUN_ID)
            assert latest.timestamp >= last_ack, f"{where}: ACKed {last_ack}, latest {latest}"
            stamps = [row.timestamp for row in rows]
            newer = [ts for ts in stamps if ts > last_ack]
            assert last_ack in stamps or len(newer) >= keep_n, (
                f"{where}: ACKed savepoint {last_ack} lost; savepoints now {stamps}"
            )
        for row in rows:
            problem = wholeness_problem(storage.get_savepoint(RUN_ID, row.timestamp))
            assert problem is None, f"{where}: {problem}"


@pytest.mark.slow
def test_killed_writer_loses_nothing_acknowledged(crash_url: str) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    last_ack: int | None = None
    kills_after_an_ack = 0
    for round_number in range(ROUNDS):
        keep_n = rng.choice([2, 3])
        writer = Writer(crash_url, rng.getrandbits(32), keep_n)
        assert writer.ready.wait(timeout=60), "the writer did not start"
        # Mostly kill inside the save loop; sometimes while it opens, resumes, takes the token.
        delay = rng.uniform(0.0, 0.02) if round_number % 5 == 0 else rng.uniform(0.05, 0.4)
        time.sleep(delay)
        stderr = writer.kill()
        where = f"seed {seed}, round {round_number}"
        assert writer.process.returncode == -signal.SIGKILL, (
            f"{where}: the writer failed before it was killed:\n{stderr}"
        )
        if writer.acks:
            assert writer.acks == sorted(writer.acks), f"{where}: {writer.acks}"
            assert last_ack is None or writer.acks[0] >= last_ack, f"{where}: went back in time"
            last_ack = writer.acks[-1]
            kills_after_an_ack += 1
        check_store(crash_url, last_ack, keep_n, where)
    assert kills_after_an_ack >= ROUNDS // 2, "too few rounds got as far as a save"
