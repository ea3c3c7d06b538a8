"""The file backend: the conformance suite, plus what only a directory of files can get wrong."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statestore import open_storage
from statestore.errors import (
    BackendError,
    ConfigError,
    CorruptSavepointError,
    RunNotInitializedError,
    StaleWriterError,
)
from statestore.storage import Storage
from statestore.storage._files import (
    PACKS_DIR,
    SAVEPOINTS_DIR,
    FileStorage,
    SavepointFile,
    decode_savepoint_file,
    encode_savepoint_file,
    run_dir_name,
    savepoint_file_name,
)
from statestore.testing import FullDiskTests, StorageConformance
from statestore.testing.hooks import MANIFEST, PACK_PREFIX

#: The raw part of a savepoint that is its whole file, frame and all.
SAVEPOINT_FILE = "savepoint-file"
SAFE_NAME = re.compile(r"(?:[a-z0-9_]{1,24}-)?[0-9a-f]{40}")


def _savepoint_path(storage: FileStorage, run_id: str, timestamp: int) -> Path:
    return Path(storage._run_dir(run_id), SAVEPOINTS_DIR, savepoint_file_name(timestamp))


def _read_savepoint_file(storage: FileStorage, run_id: str, timestamp: int) -> SavepointFile:
    data = _savepoint_path(storage, run_id, timestamp).read_bytes()
    return decode_savepoint_file(run_id, timestamp, data)


class TestFiles(FullDiskTests, StorageConformance):
    @pytest.fixture
    def url(self, tmp_path: Path) -> str:
        return f"file://{tmp_path}/store"

    def url_in(self, directory: Path) -> str:
        return f"file://{directory}/store"

    # The back doors: the savepoint file (a frame around the manifest and the names of
    # its packs), the manifest inside it, and the pack files.

    def raw_parts(self, storage: Storage, run_id: str, timestamp: int) -> list[str]:
        assert isinstance(storage, FileStorage)
        refs = _read_savepoint_file(storage, run_id, timestamp).refs
        return [MANIFEST, *(PACK_PREFIX + name for name in refs), SAVEPOINT_FILE]

    def raw_read(self, storage: Storage, run_id: str, timestamp: int, part: str) -> bytes:
        assert isinstance(storage, FileStorage)
        if part == MANIFEST:
            return _read_savepoint_file(storage, run_id, timestamp).manifest
        return self._raw_path(storage, run_id, timestamp, part).read_bytes()

    def raw_write(
        self, storage: Storage, run_id: str, timestamp: int, part: str, data: bytes
    ) -> None:
        assert isinstance(storage, FileStorage)
        if part == MANIFEST:
            # Re-framed with a valid file checksum: only the manifest's own check is left.
            changed = _read_savepoint_file(storage, run_id, timestamp)._replace(manifest=data)
            data = encode_savepoint_file(timestamp, changed)
            part = SAVEPOINT_FILE
        self._raw_path(storage, run_id, timestamp, part).write_bytes(data)

    @staticmethod
    def _raw_path(storage: FileStorage, run_id: str, timestamp: int, part: str) -> Path:
        if part == SAVEPOINT_FILE:
            return _savepoint_path(storage, run_id, timestamp)
        assert part.startswith(PACK_PREFIX), part
        return Path(storage._run_dir(run_id), PACKS_DIR, part.removeprefix(PACK_PREFIX))


# ------------------------------------------------------------------ URLs and construction


@pytest.mark.parametrize(
    "url",
    [
        "file://relative/dir",
        "file:relative/dir",
        "file:///",
        "file://host.example/abs/dir",
        "file:///abs/dir?mode=ro",
        "file:///abs/dir#frag",
        "file:///abs/%00dir",
        "http:///abs/dir",
    ],
)
def test_bad_url_says_the_expected_form(url: str) -> None:
    with pytest.raises(ConfigError, match=re.escape("file:///absolute/dir")):
        FileStorage.from_url(url)


def test_url_takes_no_options(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no options"):
        open_storage(f"file://{tmp_path}/store", timeout=3)


def test_url_creates_missing_directories_and_decodes_escapes(tmp_path: Path) -> None:
    with open_storage(f"file://{tmp_path}/a%20b/c/store") as storage:
        assert isinstance(storage, FileStorage)
        assert storage.directory == str(tmp_path / "a b" / "c" / "store")
        storage.init_storage("run")
    assert (tmp_path / "a b" / "c" / "store").is_dir()


def test_a_file_in_the_way_is_a_backend_error(tmp_path: Path) -> None:
    (tmp_path / "store").write_text("not a directory")
    with pytest.raises(BackendError, match="store"):
        FileStorage(tmp_path / "store")


def test_data_survives_reopening(tmp_path: Path) -> None:
    with FileStorage(tmp_path / "store") as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 60_000, [("a", {"x": 1.5})])
    with FileStorage(tmp_path / "store") as storage:
        assert storage.get_latest_savepoint("run") == (60_000, [("a", {"x": 1.5})])


# ------------------------------------------------------------------ run ids become safe names

HOSTILE_RUN_IDS = [
    "../x",
    "../../x",
    "../../../escaped",
    "/etc/passwd",
    "a/b",
    "a\\b",
    ".",
    "..",
    ".hidden",
    "x" * 512,
    "/" * 512,
    "ünïcødé-运行-🚀",
    "CON",
    "con",
    "Con",
    "NUL.txt",
    "COM1",
    "run:1*?<>|\"'",
    " leading and trailing ",
    "\u202eright-to-left",
    "line\nbreak",
    ".trash",
    ".tmp",
]


def test_hostile_run_ids_stay_inside_the_store_and_round_trip(tmp_path: Path) -> None:
    store = tmp_path / "x" / "y" / "store"
    with FileStorage(store) as storage:
        for position, run_id in enumerate(HOSTILE_RUN_IDS):
            storage.init_storage(run_id)
            storage.save_savepoint(run_id, 1_000 + position, [("e", run_id)])
        assert storage.list_runs() == sorted(HOSTILE_RUN_IDS)
        for position, run_id in enumerate(HOSTILE_RUN_IDS):
            assert storage.get_latest_savepoint(run_id) == (1_000 + position, [("e", run_id)])
        # One directory per id, even for ids that differ only in case.
        run_dirs = [entry for entry in store.iterdir() if not entry.name.startswith(".")]
        assert len(run_dirs) == len(HOSTILE_RUN_IDS)
        assert all(SAFE_NAME.fullmatch(entry.name) for entry in run_dirs)
        # Nothing was written anywhere but inside the store.
        for root, _dirs, files in os.walk(tmp_path):
            for name in files:
                assert Path(root, name).is_relative_to(store)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]
        for run_id in HOSTILE_RUN_IDS:
            storage.delete_run(run_id)
        assert storage.list_runs() == []
    assert not [p for p in store.iterdir() if not p.name.startswith(".")]


@given(st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=1))
def test_every_run_id_maps_to_a_safe_name(run_id: str) -> None:
    name = run_dir_name(run_id)
    assert SAFE_NAME.fullmatch(name)
    assert len(name) <= 65
    assert run_dir_name(run_id.swapcase()) != name or run_id.swapcase() == run_id


def test_directories_not_made_by_the_store_are_not_runs(tmp_path: Path) -> None:
    with FileStorage(tmp_path / "store") as storage:
        storage.init_storage("real")
        (tmp_path / "store" / "notes").mkdir()
        (tmp_path / "store" / "README").write_text("hello")
        # A run directory copied under another name is not reachable by its id: not listed.
        shutil.copytree(storage._run_dir("real"), tmp_path / "store" / run_dir_name("copy"))
        assert storage.list_runs() == ["real"]


# ------------------------------------------------------------------ leftovers of crashes


def test_leftover_temp_files_and_trash_do_not_disturb_reads(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with FileStorage(store) as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 10, [("a", 1)])
        storage.save_savepoint("run", 20, [("a", 2)])
        run_dir = Path(storage._run_dir("run"))
        # What crashed writers leave: temp files next to savepoints and packs, a
        # half-dropped run in the trash, a half-created run in .tmp.
        (run_dir / SAVEPOINTS_DIR / ".tmp-0123456789abcdef").write_bytes(b"half a savepoint")
        (run_dir / PACKS_DIR / ".tmp-fedcba9876543210").write_bytes(b"half a pack")
        trashed = store / ".trash" / "dropped-run"
        shutil.copytree(run_dir, trashed)
        abandoned = store / ".tmp" / "abandoned"
        shutil.copytree(run_dir, abandoned)
        an_hour_ago = time.time() - 2 * 3600
        os.utime(abandoned, (an_hour_ago, an_hour_ago))
        in_flight = store / ".tmp" / "in-flight"
        in_flight.mkdir()

        assert storage.list_runs() == ["run"]
        assert storage.get_latest_savepoint("run") == (20, [("a", 2)])
        assert storage.get_savepoint("run", 10) == (10, [("a", 1)])
        assert [row.timestamp for row in storage.list_savepoints("run")] == [10, 20]

        # Pruning the run clears its temp files (commits hold the same lock: none in flight).
        storage.delete_old_savepoints("run", 1)
        assert not list(run_dir.rglob(".tmp-*"))
        assert storage.get_latest_savepoint("run") == (20, [("a", 2)])

    # Opening again finishes the crashed drop and the abandoned create, not a young one.
    with FileStorage(store) as storage:
        assert not trashed.exists()
        assert not abandoned.exists()
        assert in_flight.exists()
        assert storage.list_runs() == ["run"]


def test_compact_frees_packs_of_a_crashed_commit(tmp_path: Path) -> None:
    with FileStorage(tmp_path / "store") as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 10, [("a", "x" * 100)])
        packs = Path(storage._run_dir("run"), PACKS_DIR)
        live = sorted(p.name for p in packs.iterdir())
        (packs / "00000000000000000020-0000000000000000").write_bytes(b"orphan")
        storage.compact()
        assert sorted(p.name for p in packs.iterdir()) == live
        assert storage.get_latest_savepoint("run") == (10, [("a", "x" * 100)])


def test_dropping_a_run_leaves_nothing(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with FileStorage(store) as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 10, [("a", 1)])
        storage.delete_run("run")
        assert not storage.is_initialized("run")
        assert [p.name for p in store.iterdir() if not p.name.startswith(".")] == []
        assert list((store / ".trash").iterdir()) == []
        storage.init_storage("run")  # a new run of the same id starts empty
        assert storage.list_savepoints("run") == []


# ------------------------------------------------------------------ damaged files


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="torn"),
        pytest.param(lambda data: data[:10], id="torn-header"),
        pytest.param(lambda data: b"", id="empty"),
        pytest.param(lambda data: data[:-1] + bytes([data[-1] ^ 1]), id="flipped-bit"),
        pytest.param(lambda data: b"XXXX" + data[4:], id="bad-magic"),
    ],
)
def test_a_damaged_savepoint_file_is_detected(
    tmp_path: Path, damage: Callable[[bytes], bytes]
) -> None:
    with FileStorage(tmp_path / "store") as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 10, [("a", 1)])
        storage.save_savepoint("run", 20, [("a", 2)])
        path = _savepoint_path(storage, "run", 20)
        path.write_bytes(damage(path.read_bytes()))
        message = r"run 'run': savepoint 20 is corrupt"
        # The latest is damaged: an error, never a silent fall back to an older one.
        with pytest.raises(CorruptSavepointError, match=message):
            storage.get_latest_savepoint("run")
        with pytest.raises(CorruptSavepointError, match=message):
            storage.get_savepoint("run", 20)
        # Still listed, so that it can be verified, skipped by a resuming run, pruned.
        assert [row.timestamp for row in storage.list_savepoints("run")] == [10, 20]
        assert storage.get_savepoint("run", 10) == (10, [("a", 1)])
        storage.delete_old_savepoints("run", 0)
        assert storage.list_savepoints("run") == []


def test_a_savepoint_file_under_another_timestamp_is_detected(tmp_path: Path) -> None:
    with FileStorage(tmp_path / "store") as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 10, [("a", 1)])
        os.rename(_savepoint_path(storage, "run", 10), _savepoint_path(storage, "run", 30))
        with pytest.raises(CorruptSavepointError, match="belongs to timestamp 10"):
            storage.get_latest_savepoint("run")


def test_a_damaged_writer_token_is_an_error_not_a_reset(tmp_path: Path) -> None:
    with FileStorage(tmp_path / "store") as storage:
        storage.init_storage("run")
        token = storage.acquire_writer("run")
        Path(storage._run_dir("run"), "writer-token").write_bytes(b"garbage")
        with pytest.raises(BackendError, match="writer token"):
            storage.save_savepoint("run", 10, [("a", 1)], writer_token=token)
        assert storage.list_savepoints("run") == []


# ------------------------------------------------------------------ failing file systems


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOSPC, "the disk is full (ENOSPC)"),
        (errno.EROFS, "the file system is read-only (EROFS)"),
        (errno.EACCES, "permission denied (EACCES)"),
    ],
)
def test_common_failures_are_named_plainly(tmp_path: Path, code: int, words: str) -> None:
    # ENOSPC and EROFS cannot be provoked here without mounting; the wording is checked
    # directly, and EFBIG / EACCES are provoked for real below.
    with FileStorage(tmp_path / "store") as storage:
        text = storage._describe_failure(OSError(code, os.strerror(code), "/some/file"))
    assert words in text
    assert "/some/file" in text


def _run_python(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )


def test_a_write_failing_mid_commit_keeps_the_previous_savepoint(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with FileStorage(store) as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 10, [("small", 1)])
        before = sorted(p.relative_to(store) for p in store.rglob("*"))
    # A file size limit makes the pack write fail halfway, as a full disk would.
    script = f"""
        import os, resource, signal
        from statestore.errors import BackendError
        from statestore.storage._files import FileStorage
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        storage = FileStorage({str(store)!r})
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
        try:
            storage.save_savepoint("run", 20, [("small", 1), ("big", os.urandom(1 << 20))])
        except BackendError as exc:
            print(exc)
        """
    result = _run_python(script)
    assert "file too large (EFBIG)" in result.stdout, result.stderr
    assert "run 'run': savepoint 20:" in result.stdout
    with FileStorage(store) as storage:
        assert storage.get_latest_savepoint("run") == (10, [("small", 1)])
        assert [row.timestamp for row in storage.list_savepoints("run")] == [10]
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before


def _make_read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)


@pytest.mark.skipif(
    os.name != "posix" or os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to drop the capability that ignores permissions",
)
def test_a_read_only_store_serves_reads_and_refuses_writes(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with FileStorage(store) as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 10, [("a", 1)])
    before = sorted((p.relative_to(store), p.stat().st_size) for p in store.rglob("*"))
    _make_read_only(store)
    # We run as root, and root ignores permissions: the reader-writer runs as root
    # without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH, so the mode bits hold for it.
    script = f"""
        from statestore.errors import BackendError
        from statestore.storage._files import FileStorage
        storage = FileStorage({str(store)!r})
        print("read", storage.list_runs(), storage.get_latest_savepoint("run"))
        for attempt in (
            lambda: storage.save_savepoint("run", 20, [("a", 2)]),
            lambda: storage.acquire_writer("run"),
            lambda: storage.init_storage("other"),
            lambda: storage.delete_old_savepoints("run", 0),
            lambda: storage.delete_run("run"),
        ):
            try:
                attempt()
                print("wrote")
            except BackendError as exc:
                print("refused", exc)
        """
    result = subprocess.run(
        [
            "setpriv",
            "--bounding-set=-dac_override,-dac_read_search",
            "--inh-caps=-all",
            "--",
            sys.executable,
            "-c",
            textwrap.dedent(script),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    lines = result.stdout.splitlines()
    assert lines[:1] == ["read ['run'] Savepoint(timestamp=10, entities=[('a', 1)])"], result.stderr
    assert len(lines) == 6, result.stdout + result.stderr
    for line in lines[1:]:
        assert line.startswith("refused"), line
        assert "permission denied (EACCES)" in line
    assert sorted((p.relative_to(store), p.stat().st_size) for p in store.rglob("*")) == before
    with FileStorage(store) as storage:
        assert storage.get_latest_savepoint("run") == (10, [("a", 1)])


# ------------------------------------------------------------------ concurrency

_WRITER = """
    import sys
    from statestore.storage._files import FileStorage
    store, proc, count, keep = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    storage = FileStorage(store)
    storage.init_storage("run")
    for i in range(count):
        ts = (i + 1) * 10 + proc
        # Half the states never change (incremental saves reuse their packs), half do.
        entities = [(f"e{j}", {"p": proc, "j": j, "i": i if j % 2 else None}) for j in range(20)]
        storage.save_savepoint("run", ts, entities)
        storage.delete_old_savepoints("run", keep)
    print("done", flush=True)
"""


def _check_whole(timestamp: int, entities: list[tuple[str, object]]) -> None:
    proc, i = timestamp % 10, timestamp // 10 - 1
    expected = [(f"e{j}", {"p": proc, "j": j, "i": i if j % 2 else None}) for j in range(20)]
    assert entities == expected, f"savepoint {timestamp} is not whole"


def _assert_tidy(storage: FileStorage, run_id: str) -> None:
    """Every pack on disk is referenced by a savepoint, and no temp file is left."""
    needed = {
        ref
        for row in storage.list_savepoints(run_id)
        for ref in _read_savepoint_file(storage, run_id, row.timestamp).refs
    }
    run_dir = Path(storage._run_dir(run_id))
    assert {p.name for p in (run_dir / PACKS_DIR).iterdir()} == needed
    assert not list(run_dir.rglob(".tmp-*"))


@pytest.mark.slow
def test_two_processes_save_to_one_run_at_once(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with FileStorage(store) as storage:
        storage.init_storage("run")
        writers = [
            subprocess.Popen(
                # Keeping 2, each writer's previous savepoint (the base of its incremental save)
                # is often pruned by the other, and readers often lose the one they read.
                [sys.executable, "-c", textwrap.dedent(_WRITER), str(store), str(proc), "25", "2"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for proc in (1, 2)
        ]
        # Read while they write: every latest savepoint seen is whole.
        reads = 0
        while any(writer.poll() is None for writer in writers) or reads == 0:
            try:
                _check_whole(*storage.get_latest_savepoint("run"))
                reads += 1
            except LookupError:
                pass  # no savepoint yet
        for writer in writers:
            out, err = writer.communicate(timeout=60)
            assert writer.returncode == 0, err
            assert out.strip() == "done"
        rows = storage.list_savepoints("run")
        assert 1 <= len(rows) <= 4
        for row in rows:
            _check_whole(*storage.get_savepoint("run", row.timestamp))
        assert rows[-1].timestamp in (251, 252)
        storage.delete_old_savepoints("run", 2)
        _assert_tidy(storage, "run")


def test_threads_saving_while_the_run_is_dropped_and_recreated(tmp_path: Path) -> None:
    # A save that waited for the lock of a run dropped meanwhile must not write into
    # the trash, nor into the new run's directory without holding its lock.
    with FileStorage(tmp_path / "store") as storage:
        storage.init_storage("run")
        stop = threading.Event()
        failures: list[BaseException] = []

        def save_forever() -> None:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    storage.save_savepoint("run", i * 10 + 1, [("e0", {"p": 1, "j": 0, "i": None})])
                except RunNotInitializedError:
                    pass
                except BaseException as exc:  # reported below
                    failures.append(exc)
                    return

        saver = threading.Thread(target=save_forever)
        saver.start()
        try:
            for _ in range(30):
                storage.delete_run("run")
                storage.init_storage("run")
        finally:
            stop.set()
            saver.join()
        assert failures == []
        for row in storage.list_savepoints("run"):
            assert storage.get_savepoint("run", row.timestamp)[1] == [
                ("e0", {"p": 1, "j": 0, "i": None})
            ]
        assert list((tmp_path / "store" / ".trash").iterdir()) == []


def test_a_prune_waits_for_a_read_in_progress(tmp_path: Path) -> None:
    # A read holds the run's lock (shared) from the savepoint file to its last pack: a
    # prune by another handle waits for it instead of freeing packs mid-read.
    pruned = threading.Event()
    lock_path = tmp_path / "store"

    def prune() -> None:
        with FileStorage(tmp_path / "store") as other:
            other.save_savepoint("run", 20, [("a", "new")])  # waits: exclusive lock
            other.delete_old_savepoints("run", 1)
        pruned.set()

    class PrunedDuringRead(FileStorage):
        pruner = threading.Thread(target=prune)

        @staticmethod
        def _read_packs(run_dir: str, names: Sequence[str]) -> dict[str, bytes]:
            PrunedDuringRead.pruner.start()
            assert _wait_until(lambda: _blocked_on(Path(run_dir) / "lock"))
            assert not pruned.is_set()
            return FileStorage._read_packs(run_dir, names)

    with FileStorage(lock_path) as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 10, [("a", "old")])
    with PrunedDuringRead(lock_path) as storage:
        assert storage.get_latest_savepoint("run") == (10, [("a", "old")])
        PrunedDuringRead.pruner.join()
    assert pruned.is_set()
    with FileStorage(lock_path) as storage:
        assert storage.get_latest_savepoint("run") == (20, [("a", "new")])
        assert [row.timestamp for row in storage.list_savepoints("run")] == [20]


def _blocked_on(path: Path) -> bool:
    """Whether some flock() waits on the file at ``path`` (Linux /proc/locks)."""
    inode = path.stat().st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" not in fields:
            continue
        waiter = fields[fields.index("->") + 1 :]  # FLOCK ADVISORY WRITE pid dev:inode ...
        if waiter[0] == "FLOCK" and int(waiter[4].rsplit(":", 1)[1]) == inode:
            return True
    return False


def _wait_until(condition: Callable[[], bool], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks")
def test_a_save_waiting_on_a_dropped_run_does_not_slip_into_its_successor(
    tmp_path: Path,
) -> None:
    with FileStorage(tmp_path / "store") as storage:
        storage.init_storage("run")
        run_dir = Path(storage._run_dir("run"))
        old_lock = storage._locked("run")
        assert old_lock.__enter__() is not None
        saver = threading.Thread(target=storage.save_savepoint, args=("run", 10, [("a", 1)]))
        saver.start()
        try:
            assert _wait_until(lambda: _blocked_on(run_dir / "lock"))
            # While the save waits, the run is dropped and created anew (what another
            # process's delete_run + init_storage do), and the new run is locked too.
            os.rename(run_dir, tmp_path / "store" / "old-run")
            storage.init_storage("run")
            new_lock = storage._locked("run")
            assert new_lock.__enter__() is not None
            old_lock.__exit__(None, None, None)
            # The save must notice its lock guards a dropped run and wait for the new one.
            assert _wait_until(lambda: _blocked_on(run_dir / "lock"))
            assert list((run_dir / SAVEPOINTS_DIR).iterdir()) == []
            new_lock.__exit__(None, None, None)
        finally:
            saver.join(timeout=30)
        assert storage.get_latest_savepoint("run") == (10, [("a", 1)])


def test_the_writer_token_is_shared_by_every_handle(tmp_path: Path) -> None:
    with FileStorage(tmp_path / "store") as first, FileStorage(tmp_path / "store") as second:
        first.init_storage("run")
        old = first.acquire_writer("run")
        new = second.acquire_writer("run")
        assert new > old
        with pytest.raises(StaleWriterError):
            first.save_savepoint("run", 10, [("a", 1)], writer_token=old)
        second.save_savepoint("run", 10, [("a", 2)], writer_token=new)
        assert first.get_latest_savepoint("run") == (10, [("a", 2)])
        _assert_tidy(first, "run")


@pytest.mark.slow
def test_killing_a_writer_at_any_moment_leaves_a_consistent_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    for round_number, delay in enumerate((0.0, 0.05, 0.13, 0.31)):
        writer = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(_WRITER), str(store), "1", "100000", "3"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        with FileStorage(store) as storage:
            # Wait for this writer's first savepoint, then kill it after a varied delay.
            deadline = time.monotonic() + 30
            while writer.poll() is None and time.monotonic() < deadline:
                if storage.is_initialized("run") and storage.list_savepoints("run"):
                    break
            time.sleep(delay)
            writer.send_signal(signal.SIGKILL)
            writer.wait(timeout=30)
            assert writer.returncode == -signal.SIGKILL, f"round {round_number}"
            rows = storage.list_savepoints("run")
            assert rows
            for row in rows:
                _check_whole(*storage.get_savepoint("run", row.timestamp))
            _check_whole(*storage.get_latest_savepoint("run"))
            storage.compact()
            _assert_tidy(storage, "run")
            storage.delete_run("run")
