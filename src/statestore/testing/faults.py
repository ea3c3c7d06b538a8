"""The kit's fault tests: damaged bytes, killed writers, full disks.

Each class is a mixin on :class:`~statestore.testing.hooks.BackendHooks`, written once
against the raw back doors and the kit's child process, and run by every backend:

* :class:`DamageTests` (in :class:`~statestore.testing.InProcessConformance`): every
  byte of a stored savepoint flipped in turn, truncations and extensions, a damaged
  format version. Every read ends in ``CorruptSavepointError`` naming the run and the
  timestamp (never a wrong value, never another exception), the other savepoints read
  as before, and a StateStore resumes from the newest intact savepoint and goes on.
* :class:`CrashTests` (in :class:`~statestore.testing.StorageConformance`): a writer
  process killed with SIGKILL at random moments, fifteen times over one store, loses no
  savepoint whose save returned and leaves every savepoint whole. The rounds follow
  from one seed, printed and named in every failure; ``STATESTORE_CRASH_SEED=N``
  replays them.
* :class:`FullDiskTests` (opt-in, for a store on a local directory): a file size limit
  and a full tmpfs in the middle of a save are clear ``BackendError`` s, the previous
  savepoint stays intact, and the store works again once space returns.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from ..engine import Entity, StateStore
from ..errors import BackendError, CorruptSavepointError
from ..storage import Savepoint, Storage
from .hooks import MANIFEST, BackendHooks, Part
from .worker import payload, wholeness_problem

__all__ = ["CrashTests", "DamageTests", "FullDiskTests", "flip", "mount", "tmpfs", "unmount"]

#: The entities of every engine-driven run of the fault tests, in registration order.
ENTITIES = ("sensor-a", "sensor-b", "sensor-c")
#: The savepoint interval of every engine-driven run (milliseconds).
SCHEDULE = 1_000
#: Offset of the format version byte in a manifest (after its 4-byte magic).
VERSION_BYTE = 4


def engine_state(writer: str, entity_id: str, timestamp: int) -> dict[str, Any]:
    """The state an entity takes at ``timestamp``: it names its writer and its time."""
    return {"writer": writer, "entity": entity_id, "ts": timestamp}


def engine_savepoint(writer: str, timestamp: int) -> Savepoint:
    """The savepoint the engine persists once every entity acknowledged ``timestamp``."""
    return Savepoint(timestamp, [(e, engine_state(writer, e, timestamp)) for e in ENTITIES])


def flip(data: bytes, position: int, mask: int = 0xFF) -> bytes:
    """``data`` with the byte at ``position`` XORed with ``mask``."""
    return data[:position] + bytes([data[position] ^ mask]) + data[position + 1 :]


def drive(entities: list[Entity], writer: str, timestamp: int) -> None:
    """Every entity takes its state at ``timestamp`` and acknowledges it.

    The state comes from an input at the entity's own time, before its next savepoint
    (an input past it must wait for the acknowledgement, which the engine enforces).
    """
    for entity in entities:
        entity.update_state(entity.timestamp, engine_state(writer, entity.id, timestamp))
        entity.ack_processed_time(timestamp)


# ------------------------------------------------------------------ damaged bytes

DAMAGED_RUN = "damaged-run"

SHAPES: dict[str, Callable[[bytes], bytes]] = {
    "empty": lambda data: b"",
    "one byte": lambda data: data[:1],
    "half": lambda data: data[: len(data) // 2],
    "all but the last byte": lambda data: data[:-1],
    "one byte more": lambda data: data + b"\x00",
    "doubled": lambda data: data + data,
}

# Damage to one savepoint that the engine must skip: (part, mutation).
ENGINE_DAMAGES: dict[str, tuple[Part, Callable[[bytes], bytes]]] = {
    "flipped manifest byte": ("manifest", lambda data: flip(data, len(data) // 2)),
    "flipped pack byte": ("pack", lambda data: flip(data, len(data) - 1, 0x01)),
    "truncated manifest": ("manifest", lambda data: data[: len(data) // 3]),
    "emptied pack": ("pack", lambda data: b""),
}


def read_outcome(storage: Storage, timestamp: int) -> str:
    """How reading a damaged savepoint ended: ``corrupt``, or what went wrong instead."""
    try:
        found = storage.get_savepoint(DAMAGED_RUN, timestamp)
    except CorruptSavepointError as exc:
        named = DAMAGED_RUN in str(exc) and str(timestamp) in str(exc)
        return "corrupt" if named else f"corrupt, but the message names neither: {exc}"
    except Exception as exc:  # the finding the test exists for: report it, do not crash
        return f"RAISED {type(exc).__name__}: {exc}"
    return f"VALUE {found!r}"


class DamageTests(BackendHooks):
    """Damaged stored bytes are detected on every read, and the engine falls back."""

    def write_savepoints(self, storage: Storage, writer: str, stamps: list[int]) -> None:
        """Savepoints at ``stamps`` (grid points, ascending), written by a StateStore."""
        store = StateStore(DAMAGED_RUN, SCHEDULE, storage=storage, keep_savepoints=len(stamps))
        entities = store.init_run_state(0, [(e, engine_state(writer, e, 0)) for e in ENTITIES])
        for timestamp in stamps:
            drive(entities, writer, timestamp)
        assert [row.timestamp for row in storage.list_savepoints(DAMAGED_RUN)] == stamps

    def test_every_flipped_byte_is_caught(self, storage: Storage) -> None:
        self.write_savepoints(storage, "A", [1000, 2000, 3000])
        names = self.raw_parts(storage, DAMAGED_RUN, 3000)
        assert names[0] == MANIFEST, names
        assert self.packs(names), names
        outcomes: dict[str, int] = {}
        surprises: list[str] = []
        for name in names:
            original = self.raw_read(storage, DAMAGED_RUN, 3000, name)
            for position in range(len(original)):
                self.raw_write(storage, DAMAGED_RUN, 3000, name, flip(original, position))
                outcome = read_outcome(storage, 3000)
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                if outcome != "corrupt":
                    surprises.append(f"{name} byte {position}: {outcome}")
            self.raw_write(storage, DAMAGED_RUN, 3000, name, original)
        print(f"flipped bytes, by outcome: {outcomes}")
        assert surprises == []
        # Restored, the savepoint reads as written; its neighbours were never touched.
        for timestamp in (1000, 2000, 3000):
            assert storage.get_savepoint(DAMAGED_RUN, timestamp) == engine_savepoint("A", timestamp)

    @pytest.mark.parametrize("shape", SHAPES)
    def test_truncated_and_extended_bytes_are_caught(self, storage: Storage, shape: str) -> None:
        self.write_savepoints(storage, "A", [1000, 2000])
        for name in self.raw_parts(storage, DAMAGED_RUN, 2000):
            original = self.raw_read(storage, DAMAGED_RUN, 2000, name)
            self.raw_write(storage, DAMAGED_RUN, 2000, name, SHAPES[shape](original))
            assert read_outcome(storage, 2000) == "corrupt", name
            with pytest.raises(CorruptSavepointError):
                storage.get_latest_savepoint(DAMAGED_RUN)
            self.raw_write(storage, DAMAGED_RUN, 2000, name, original)
        assert storage.get_latest_savepoint(DAMAGED_RUN) == engine_savepoint("A", 2000)
        assert storage.get_savepoint(DAMAGED_RUN, 1000) == engine_savepoint("A", 1000)

    @pytest.mark.parametrize("mask", [0x01, 0x02, 0xFF])
    def test_a_flipped_format_version_byte_reads_as_corrupt(
        self, storage: Storage, mask: int
    ) -> None:
        # A higher version would otherwise read as "upgrade statestore", a lower one as
        # the current format: the checksum covers the version byte, so damage is corruption.
        self.write_savepoints(storage, "A", [1000, 2000])
        self.tamper(storage, DAMAGED_RUN, 2000, "manifest", lambda d: flip(d, VERSION_BYTE, mask))
        assert read_outcome(storage, 2000) == "corrupt"
        store = StateStore(DAMAGED_RUN, SCHEDULE, storage=storage)
        assert store.start(0, [(e, None) for e in ENTITIES]).timestamp == 1000

    @pytest.mark.parametrize("damage", ENGINE_DAMAGES)
    def test_the_engine_resumes_from_the_newest_intact_savepoint(
        self, url: str, damage: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        part, mutate = ENGINE_DAMAGES[damage]
        with self.open(url) as storage:
            self.write_savepoints(storage, "A", [1000, 2000, 3000, 4000])
            for timestamp in (3000, 4000):  # the two newest: the fallback skips both
                self.tamper(storage, DAMAGED_RUN, timestamp, part, mutate)
        caplog.set_level(logging.WARNING, logger="statestore")
        with self.open(url) as storage:  # a fresh handle: nothing cached from the saves
            store = StateStore(DAMAGED_RUN, SCHEDULE, storage=storage, keep_savepoints=2)
            resumed, timestamp, entities = store.start(0, [(e, None) for e in ENTITIES])
            assert (resumed, timestamp) == (True, 2000)
            assert [(e.id, e.state) for e in entities] == engine_savepoint("A", 2000).entities
            assert "3000" in caplog.text
            assert "4000" in caplog.text
            # strict=True refuses instead of falling back.
            with pytest.raises(CorruptSavepointError, match="4000"):
                StateStore(DAMAGED_RUN, SCHEDULE, storage=storage).load_run_state(strict=True)
            # The strict attempt took the writer token: take it back, then go on saving.
            resumed, timestamp, entities = store.start(0, [(e, None) for e in ENTITIES])
            assert timestamp == 2000
            for ts in (3000, 4000, 5000, 6000):
                drive(entities, "B", ts)
            rows = storage.list_savepoints(DAMAGED_RUN)
            saved = [storage.get_savepoint(DAMAGED_RUN, row.timestamp) for row in rows]
            assert saved == [engine_savepoint("B", 5000), engine_savepoint("B", 6000)]

    def test_a_run_with_no_intact_savepoint_is_refused_clearly(self, storage: Storage) -> None:
        self.write_savepoints(storage, "A", [1000, 2000])
        _, mutate = ENGINE_DAMAGES["flipped pack byte"]
        for timestamp in (1000, 2000):
            self.tamper(storage, DAMAGED_RUN, timestamp, "pack", mutate)
        store = StateStore(DAMAGED_RUN, SCHEDULE, storage=storage)
        with pytest.raises(CorruptSavepointError, match="no intact savepoint"):
            store.start(0, [(e, None) for e in ENTITIES])
        # Nothing was changed by the attempt: both savepoints are still listed.
        assert [row.timestamp for row in storage.list_savepoints(DAMAGED_RUN)] == [1000, 2000]

    def test_the_raw_back_doors_round_trip(self, storage: Storage) -> None:
        """The back doors themselves: reading and writing every part back changes nothing."""
        self.write_savepoints(storage, "A", [1000])
        for name in self.raw_parts(storage, DAMAGED_RUN, 1000):
            data = self.raw_read(storage, DAMAGED_RUN, 1000, name)
            self.raw_write(storage, DAMAGED_RUN, 1000, name, data)
        assert storage.get_latest_savepoint(DAMAGED_RUN) == engine_savepoint("A", 1000)


# ------------------------------------------------------------------ killed writers

CRASH_RUN = "crash-run"


class _KilledWriter:
    """One ``crash`` child and the ACK lines it printed before it died."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
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


def crash_seed() -> int:
    """``STATESTORE_CRASH_SEED`` when set (a replay), else a fresh random seed."""
    given = os.environ.get("STATESTORE_CRASH_SEED")
    return int(given) if given else int.from_bytes(os.urandom(4), "big")


class CrashTests(BackendHooks):
    """A writer killed at any moment loses nothing acknowledged and leaves no mix."""

    #: Writers started and killed on one store per test.
    crash_rounds: ClassVar[int] = 15

    def check_crashed_store(self, url: str, last_ack: int | None, keep_n: int, where: str) -> None:
        """Every savepoint whole; the last ACKed one kept unless newer ones pushed it out."""
        with self.open(url) as storage:
            rows = storage.list_savepoints(CRASH_RUN)
            if last_ack is None:
                assert len(rows) <= 1, f"{where}: savepoints appeared without any ACK: {rows}"
            else:
                latest = storage.get_latest_savepoint(CRASH_RUN)
                assert latest.timestamp >= last_ack, f"{where}: ACKed {last_ack}, latest {latest}"
                stamps = [row.timestamp for row in rows]
                newer = [ts for ts in stamps if ts > last_ack]
                assert last_ack in stamps or len(newer) >= keep_n, (
                    f"{where}: ACKed savepoint {last_ack} lost; savepoints now {stamps}"
                )
            for row in rows:
                problem = wholeness_problem(storage.get_savepoint(CRASH_RUN, row.timestamp))
                assert problem is None, f"{where}: {problem}"

    @pytest.mark.slow
    def test_a_killed_writer_loses_nothing_acknowledged(self, url: str) -> None:
        seed = crash_seed()
        print(f"crash rounds from seed {seed}")
        rng = random.Random(seed)  # noqa: S311 - replayable rounds, not secrets
        last_ack: int | None = None
        kills_after_an_ack = 0
        for round_number in range(self.crash_rounds):
            where = f"round {round_number} (replay with STATESTORE_CRASH_SEED={seed})"
            keep_n = rng.choice([2, 3])
            args = ("crash", url, CRASH_RUN, str(rng.getrandbits(32)), str(keep_n))
            writer = _KilledWriter(self.spawn(*args))
            assert writer.ready.wait(timeout=60), f"{where}: the writer did not start"
            # Mostly kill inside the save loop; sometimes while it opens, resumes, fences.
            early = round_number % 5 == 0
            time.sleep(rng.uniform(0.0, 0.02) if early else rng.uniform(0.05, 0.4))
            stderr = writer.kill()
            assert writer.process.returncode == -signal.SIGKILL, (
                f"{where}: the writer failed before it was killed:\n{stderr}"
            )
            if writer.acks:
                assert writer.acks == sorted(writer.acks), f"{where}: {writer.acks}"
                assert last_ack is None or writer.acks[0] >= last_ack, f"{where}: went back"
                last_ack = writer.acks[-1]
                kills_after_an_ack += 1
            self.check_crashed_store(url, last_ack, keep_n, where)
        assert kills_after_an_ack >= self.crash_rounds // 2, (
            f"too few rounds got as far as a save (replay with STATESTORE_CRASH_SEED={seed})"
        )


# ------------------------------------------------------------------ full disks

FULL_RUN = "full-run"
#: Bytes a file may grow to under the limit: far less than the worker's 2 MiB state.
FILE_SIZE_LIMIT = 256 * 1024


def mount(*args: str) -> bool:
    """Run ``mount ARGS``; False when this machine does not allow it (not root, no caps)."""
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)  # noqa: S603, S607
    return done.returncode == 0


def unmount(path: Path) -> None:
    """Unmount ``path``; lazily when something still holds it open."""
    done = subprocess.run(["umount", str(path)], capture_output=True, check=False)  # noqa: S603, S607
    if done.returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)  # noqa: S603, S607


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[bool]:
    """A tmpfs of ``size`` (``1m``, ``512k``) mounted on ``path``; yields False if refused."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    try:
        yield mounted
    finally:
        if mounted:
            unmount(path)


def fill(disk: Path, leave: int) -> Path:
    """Fill the disk up, then free ``leave`` bytes; returns the filler file."""
    filler = disk / "filler"
    chunk = b"\0" * 65536
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        while True:
            os.write(fd, chunk)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    os.truncate(filler, max(filler.stat().st_size - leave, 0))
    return filler


def big_state(writer: str, entity_id: str, ts: int) -> dict[str, object]:
    """An engine state with 256 KiB of random bytes: no compression fits it on the disk."""
    return {**engine_state(writer, entity_id, ts), "blob": os.urandom(256 * 1024)}


class FullDiskTests(BackendHooks):
    """Out of space mid-save, for a store on a local directory: a clear error, no loss.

    Two ways to run out, both real: a writer process under ``RLIMIT_FSIZE`` (``EFBIG``),
    and a 4 MiB tmpfs mounted for the test and filled up (``ENOSPC``; skipped where
    mounting is not allowed, i.e. without root). Add it to a backend's test class and
    fill in :meth:`url_in`.
    """

    #: What the refusal of a save past the file size limit says (SQLite reports EFBIG
    #: as a disk I/O error).
    file_too_large_reason: ClassVar[str] = "file too large"

    def url_in(self, directory: Path) -> str:
        """The URL of a fresh store kept in ``directory``."""
        raise NotImplementedError("a backend's FullDiskTests class provides url_in")

    def check_integrity(self, url: str) -> None:
        """Whatever the backend can check of its own files beyond reading (a no-op here)."""

    def assert_intact(self, url: str, stamps: list[int]) -> None:
        """The run holds exactly ``stamps``, each savepoint whole."""
        with self.open(url) as storage:
            assert [row.timestamp for row in storage.list_savepoints(FULL_RUN)] == stamps
            assert storage.get_latest_savepoint(FULL_RUN).timestamp == stamps[-1]
            for timestamp in stamps:
                assert wholeness_problem(storage.get_savepoint(FULL_RUN, timestamp)) is None
        self.check_integrity(url)

    @contextlib.contextmanager
    def small_disk(self, tmp_path: Path) -> Iterator[Path]:
        """A 4 MiB tmpfs for this test; skips where mounting is not allowed."""
        with tmpfs(tmp_path / "disk", "4m") as mounted:
            if not mounted:
                pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
            yield tmp_path / "disk"

    @staticmethod
    def started_engine(storage: Storage) -> tuple[StateStore, list[Entity]]:
        """A StateStore on the run, initialized at 0 with writer A's states."""
        store = StateStore(FULL_RUN, SCHEDULE, storage=storage, keep_savepoints=3)
        return store, store.init_run_state(0, [(e, engine_state("A", e, 0)) for e in ENTITIES])

    def test_a_file_size_limit_mid_save_keeps_the_previous_savepoint(self, tmp_path: Path) -> None:
        url = self.url_in(tmp_path)
        with self.open(url) as storage:
            storage.init_storage(FULL_RUN)
            for timestamp in (1000, 2000):
                storage.save_savepoint(FULL_RUN, timestamp, payload(timestamp))
        lines = self.finish(self.spawn("limited-save", url, FULL_RUN, str(FILE_SIZE_LIMIT)))
        refused, latest, listed = lines.splitlines()
        assert refused.startswith(f"REFUSED run '{FULL_RUN}': savepoint 3000: "), refused
        assert self.file_too_large_reason in refused, refused
        assert (latest, listed) == ("LATEST 2000", "LISTED [1000, 2000]")
        self.assert_intact(url, [1000, 2000])
        # The limit lifted (a process without it), the same big save goes through.
        with self.open(url) as storage:
            big = [*payload(3000), ("big", os.urandom(2 << 20))]
            storage.save_savepoint(FULL_RUN, 3000, big)
            assert storage.get_latest_savepoint(FULL_RUN) == (3000, big)
            storage.save_savepoint(FULL_RUN, 4000, payload(4000))
        with self.open(url) as storage:
            stamps = [row.timestamp for row in storage.list_savepoints(FULL_RUN)]
            assert stamps == [1000, 2000, 3000, 4000]
            assert storage.get_latest_savepoint(FULL_RUN) == (4000, payload(4000))
        self.check_integrity(url)

    def test_a_full_disk_fails_the_save_clearly_and_the_engine_retries(
        self, tmp_path: Path
    ) -> None:
        with self.small_disk(tmp_path) as disk:
            url = self.url_in(disk)
            with self.open(url) as storage:
                _store, entities = self.started_engine(storage)
                drive(entities, "A", 1000)
                filler = fill(disk, leave=64 * 1024)
                for entity in entities[:-1]:  # savepoint 2000 fills in memory: no write
                    entity.update_state(1999, big_state("A", entity.id, 2000))
                    entity.ack_processed_time(2000)
                last = entities[-1]
                last.update_state(1999, big_state("A", last.id, 2000))
                with pytest.raises(BackendError, match=r"savepoint 2000: .*disk is full") as full:
                    last.ack_processed_time(2000)
                print(full.value)  # shown with -s: the error a user sees
                assert last.next_savepoint == 2000  # the failed call left the entity as it was
                # The previous savepoint is intact, and nothing of the failed one shows.
                assert storage.list_savepoints(FULL_RUN)[-1].timestamp == 1000
                assert storage.get_latest_savepoint(FULL_RUN) == engine_savepoint("A", 1000)
                filler.unlink()  # space returns
                last.ack_processed_time(2000)  # retried: savepoint 2000 persists now
                saved = storage.get_latest_savepoint(FULL_RUN)
                assert saved.timestamp == 2000
                assert [state["ts"] for _, state in saved.entities] == [2000] * len(ENTITIES)
                drive(entities, "A", 3000)
                assert storage.get_latest_savepoint(FULL_RUN) == engine_savepoint("A", 3000)
                stamps = [row.timestamp for row in storage.list_savepoints(FULL_RUN)]
                assert stamps == [1000, 2000, 3000]
            self.check_integrity(url)

    def test_a_full_disk_fails_the_watermark_leaving_every_entity_as_it_was(
        self, tmp_path: Path
    ) -> None:
        with self.small_disk(tmp_path) as disk:
            url = self.url_in(disk)
            with self.open(url) as storage:
                store, entities = self.started_engine(storage)
                store.ack_processed_time(1000)
                for entity in entities:
                    entity.update_state(1999, big_state("A", entity.id, 2000))
                filler = fill(disk, leave=64 * 1024)
                before = [(e.timestamp, e.next_savepoint, e.last_savepoint) for e in entities]
                with pytest.raises(BackendError, match=r"savepoint 2000: .*disk is full"):
                    store.ack_processed_time(2000)
                after = [(e.timestamp, e.next_savepoint, e.last_savepoint) for e in entities]
                assert after == before  # every entity as it was, none half-saved
                assert [row.timestamp for row in storage.list_savepoints(FULL_RUN)] == [1000]
                filler.unlink()  # space returns
                store.ack_processed_time(2000)  # the same call again: persisted now
                saved = storage.get_latest_savepoint(FULL_RUN)
                assert saved.timestamp == 2000
                assert [state["ts"] for _, state in saved.entities] == [2000] * len(ENTITIES)
                assert [e.next_savepoint for e in entities] == [3000] * len(ENTITIES)
            self.check_integrity(url)

    def test_every_write_on_a_full_disk_is_a_clear_error(self, tmp_path: Path) -> None:
        with self.small_disk(tmp_path) as disk:
            url = self.url_in(disk)
            with self.open(url) as storage:
                storage.init_storage(FULL_RUN)
                storage.save_savepoint(FULL_RUN, 1000, payload(1000))
                filler = fill(disk, leave=0)
                big = [*payload(2000), ("big", os.urandom(1 << 20))]
                with pytest.raises(BackendError, match="disk is full"):
                    storage.save_savepoint(FULL_RUN, 2000, big)
                with pytest.raises(BackendError, match="disk is full"):
                    storage.init_storage("another-run")
                assert storage.get_latest_savepoint(FULL_RUN) == (1000, payload(1000))
                filler.unlink()
                storage.save_savepoint(FULL_RUN, 2000, big)
                storage.init_storage("another-run")
                assert storage.get_latest_savepoint(FULL_RUN) == (2000, big)
                assert storage.list_runs() == ["another-run", FULL_RUN]
            self.check_integrity(url)
