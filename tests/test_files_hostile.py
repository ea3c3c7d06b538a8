"""The file backend facing a hostile or foreign directory: it never touches what is not its own.

Symbolic links planted inside a store (by anyone who can write it) are never followed
out of it, and a directory that is not a store is refused before anything in it is
cleaned up. Each test fills an ``outside`` directory, points a link at it (or opens a
foreign directory), runs every operation, and checks ``outside`` is exactly as it was.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_support import assert_one_line_error, run_cli

from statestore import open_storage
from statestore.errors import BackendError, ConfigError, CorruptSavepointError, StateStoreError
from statestore.storage._files import (
    MARKER_FILE,
    PACKS_DIR,
    SAVEPOINTS_DIR,
    FileStorage,
    decode_savepoint_file,
    run_dir_name,
    savepoint_file_name,
)

RUN = "run"
TWO_HOURS_AGO = time.time() - 2 * 3600

Tree = dict[str, tuple[int, bytes | str | None]]


def tree(root: Path) -> Tree:
    """Every entry under ``root``: mode and content (bytes, link target); links not followed."""
    found: Tree = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        content: bytes | str | None = None
        if path.is_symlink():
            content = os.readlink(path)
        elif path.is_file():
            content = path.read_bytes()
        found[str(path.relative_to(root))] = (info.st_mode, content)
    return found


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """Someone's data next to the store: subdirectories, files, old and new."""
    root = tmp_path / "outside"
    (root / "photos").mkdir(parents=True)
    (root / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 a cat")
    (root / "old-project").mkdir()
    (root / "old-project" / "notes.txt").write_text("keep me")
    (root / "thesis.tex").write_text("\\documentclass{article}")
    (root / "00000000000000000020-0000000000000000").write_bytes(b"looks like a pack")
    for path in root.rglob("*"):
        os.utime(path, (TWO_HOURS_AGO, TWO_HOURS_AGO), follow_symlinks=False)
    return root


def make_store(tmp_path: Path) -> tuple[Path, FileStorage]:
    store = tmp_path / "store"
    storage = FileStorage(store)
    storage.init_storage(RUN)
    storage.save_savepoint(RUN, 10, [("a", "x" * 50), ("b", 1)])
    storage.save_savepoint(RUN, 20, [("a", "x" * 50), ("b", 2)])
    return store, storage


def plant(link: Path, target: Path) -> None:
    """Replace whatever is at ``link`` with a symlink to ``target``."""
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    elif link.exists() or link.is_symlink():
        link.unlink()
    link.symlink_to(target)


def every_operation(store: Path) -> dict[str, object]:
    """Open the store again and run every operation; what each returned or raised."""
    outcomes: dict[str, object] = {}
    attempts: dict[str, Callable[[FileStorage], object]] = {
        "list_runs": lambda s: s.list_runs(),
        "is_initialized": lambda s: s.is_initialized(RUN),
        "list_savepoints": lambda s: s.list_savepoints(RUN),
        "get_latest_savepoint": lambda s: s.get_latest_savepoint(RUN),
        "get_savepoint": lambda s: s.get_savepoint(RUN, 10),
        "save": lambda s: s.save_savepoint(RUN, 30, [("a", "y" * 50), ("b", 3)]),
        "replace": lambda s: s.save_savepoint(RUN, 20, [("a", "z" * 50), ("b", 4)]),
        "init other": lambda s: s.init_storage("other"),
        "acquire_writer": lambda s: s.acquire_writer(RUN),
        "prune": lambda s: s.delete_old_savepoints(RUN, 1),
        "compact": lambda s: s.compact(),
        "delete other": lambda s: s.delete_run("other"),
        "delete_run": lambda s: s.delete_run(RUN),
    }
    with FileStorage(store) as storage:
        for name, attempt in attempts.items():
            try:
                outcomes[name] = attempt(storage)
            except StateStoreError as exc:  # anything else is a bug and fails the test
                outcomes[name] = exc
    return outcomes


# ------------------------------------------------------------------ item 7: planted links


@pytest.mark.parametrize("name", [".trash", ".tmp"])
def test_a_housekeeping_directory_linked_outside_is_never_followed(
    tmp_path: Path, outside: Path, name: str
) -> None:
    store, storage = make_store(tmp_path)
    storage.close()
    before = tree(outside)
    plant(store / name, outside)
    outcomes = every_operation(store)
    assert tree(outside) == before
    # Whatever needs the linked directory is refused, never redirected outside.
    needs = "delete_run" if name == ".trash" else "init other"
    assert isinstance(outcomes[needs], BackendError), outcomes
    assert "symbolic link" in str(outcomes[needs])
    assert outcomes["get_latest_savepoint"] == (20, [("a", "x" * 50), ("b", 2)])


@pytest.mark.parametrize("name", [PACKS_DIR, SAVEPOINTS_DIR])
def test_a_run_subdirectory_linked_outside_is_refused(
    tmp_path: Path, outside: Path, name: str
) -> None:
    store, storage = make_store(tmp_path)
    storage.close()
    before = tree(outside)
    plant(Path(storage._run_dir(RUN), name), outside)
    outcomes = every_operation(store)
    assert tree(outside) == before
    for op in ("list_savepoints", "get_latest_savepoint", "save", "replace", "prune"):
        assert isinstance(outcomes[op], BackendError), (op, outcomes[op])
        assert RUN in str(outcomes[op])
        assert "symbolic link" in str(outcomes[op])


def test_a_run_directory_linked_outside_is_not_a_run(tmp_path: Path, outside: Path) -> None:
    store, storage = make_store(tmp_path)
    # The link points at a complete run, so following it would find something to use.
    run_dir = Path(storage._run_dir(RUN))
    storage.close()
    shutil.copytree(run_dir, outside / "a-run", symlinks=True)
    before = tree(outside)
    plant(run_dir, outside / "a-run")
    outcomes = every_operation(store)
    assert tree(outside) == before
    assert outcomes["list_runs"] == []
    for op in ("is_initialized", "get_latest_savepoint", "save", "prune", "delete_run"):
        assert isinstance(outcomes[op], BackendError), (op, outcomes[op])
    assert (store / run_dir_name(RUN)).is_symlink()


def test_a_savepoint_file_linked_outside_reads_as_damage(tmp_path: Path, outside: Path) -> None:
    _, storage = make_store(tmp_path)
    savepoints = Path(storage._run_dir(RUN), SAVEPOINTS_DIR)
    # A valid savepoint file outside: following the link would return its content.
    shutil.copy(savepoints / savepoint_file_name(20), outside / "valid.sp")
    before = tree(outside)
    plant(savepoints / savepoint_file_name(20), outside / "valid.sp")
    with pytest.raises(CorruptSavepointError, match=r"savepoint 20 .*symbolic link"):
        storage.get_savepoint(RUN, 20)
    with pytest.raises(CorruptSavepointError, match="savepoint 20"):
        storage.get_latest_savepoint(RUN)
    assert [row.timestamp for row in storage.list_savepoints(RUN)] == [10, 20]
    storage.delete_old_savepoints(RUN, 2)  # cannot tell what a damaged one needs: keeps packs
    assert storage.get_savepoint(RUN, 10) == (10, [("a", "x" * 50), ("b", 1)])
    storage.delete_old_savepoints(RUN, 0)  # unlinks the link, never its target
    storage.close()
    assert tree(outside) == before
    assert not savepoints.joinpath(savepoint_file_name(20)).is_symlink()


@pytest.mark.parametrize("victim", ["pack", "lock", "writer-token", "run-id"])
def test_a_file_of_a_run_linked_outside_is_never_followed(
    tmp_path: Path, outside: Path, victim: str
) -> None:
    store, storage = make_store(tmp_path)
    run_dir = Path(storage._run_dir(RUN))
    storage.close()
    if victim == "pack":  # one that savepoint 10 refers to
        sp10 = (run_dir / SAVEPOINTS_DIR / savepoint_file_name(10)).read_bytes()
        path = run_dir / PACKS_DIR / decode_savepoint_file(RUN, 10, sp10).refs[0]
    else:
        path = run_dir / victim
    shutil.copy(path, outside / "copy")
    before = tree(outside)
    plant(path, outside / "copy")
    outcomes = every_operation(store)
    assert tree(outside) == before
    if victim == "pack":  # a link is a missing pack: savepoint 10 is damaged
        assert isinstance(outcomes["get_savepoint"], CorruptSavepointError), outcomes
    elif victim == "run-id":
        assert outcomes["list_runs"] == []
    else:
        assert isinstance(outcomes["acquire_writer"], BackendError), outcomes


def test_a_link_in_the_trash_is_removed_not_followed(tmp_path: Path, outside: Path) -> None:
    store, storage = make_store(tmp_path)
    storage.close()
    before = tree(outside)
    (store / ".trash").mkdir(exist_ok=True)
    (store / ".trash" / "leftover").symlink_to(outside)
    FileStorage(store).close()
    assert not os.path.lexists(store / ".trash" / "leftover")
    assert tree(outside) == before


# ------------------------------------------------------------------ item 8: foreign directories


def test_a_foreign_directory_is_refused_and_nothing_in_it_deleted(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".trash" / "x").mkdir(parents=True)
    (home / ".trash" / "x" / "letter.txt").write_text("dear")
    (home / ".tmp").mkdir()
    (home / ".tmp" / "old-file").write_text("old")
    (home / "report.pdf").write_bytes(b"%PDF")
    for path in home.rglob("*"):
        os.utime(path, (TWO_HOURS_AGO, TWO_HOURS_AGO))
    before = tree(home)
    with pytest.raises(ConfigError, match=r"is not a statestore store .*report\.pdf"):
        FileStorage(home)
    assert tree(home) == before
    result = run_cli("runs", "--url", f"file://{home}")
    assert "not a statestore store" in assert_one_line_error(result, 1)
    assert tree(home) == before


@pytest.mark.parametrize(
    "content", [b"", b"something else\n", b"statestore file store\nformat x\n"]
)
def test_a_marker_that_is_not_ours_is_refused(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / MARKER_FILE).write_bytes(content)
    with pytest.raises(ConfigError, match="not a statestore store"):
        FileStorage(tmp_path / "store")


def test_a_newer_store_format_asks_for_an_upgrade(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / MARKER_FILE).write_bytes(b"statestore file store\nformat 2\n")
    with pytest.raises(ConfigError, match=r"format 2.*upgrade statestore"):
        FileStorage(tmp_path / "store")


@pytest.mark.parametrize("exists", [True, False])
def test_a_new_store_gets_its_marker(tmp_path: Path, exists: bool) -> None:
    if exists:
        (tmp_path / "store").mkdir()
    with open_storage(f"file://{tmp_path}/store") as storage:
        assert storage.list_runs() == []
    marker = (tmp_path / "store" / MARKER_FILE).read_bytes()
    assert marker == b"statestore file store\nformat 1\n"
    assert [p.name for p in (tmp_path / "store").iterdir()] == [MARKER_FILE]


def _store_without_marker(tmp_path: Path) -> Path:
    """A store as statestore wrote it before markers: runs, .tmp and .trash, no marker.

    Today's code writes nothing else, so removing the marker gives exactly that layout
    (checked below), with a crashed drop in .trash and an abandoned create in .tmp.
    """
    store, storage = make_store(tmp_path)
    storage.init_storage("gone")
    storage.delete_run("gone")
    storage.close()
    (store / MARKER_FILE).unlink()
    run_dir = Path(storage._run_dir(RUN))
    assert sorted(p.name for p in store.iterdir()) == [".tmp", ".trash", run_dir.name]
    shutil.copytree(run_dir, store / ".trash" / "crashed-drop")
    shutil.copytree(run_dir, store / ".tmp" / "abandoned")
    os.utime(store / ".tmp" / "abandoned", (TWO_HOURS_AGO, TWO_HOURS_AGO))
    return store


def test_a_store_written_before_markers_keeps_opening(tmp_path: Path) -> None:
    store = _store_without_marker(tmp_path)
    with FileStorage(store) as storage:
        assert storage.list_runs() == [RUN]
        assert storage.get_latest_savepoint(RUN) == (20, [("a", "x" * 50), ("b", 2)])
        assert storage.get_savepoint(RUN, 10) == (10, [("a", "x" * 50), ("b", 1)])
    # Opened writable: recognised, marked, and its leftovers cleaned like any store's.
    assert (store / MARKER_FILE).read_bytes() == b"statestore file store\nformat 1\n"
    assert not (store / ".trash" / "crashed-drop").exists()
    assert not (store / ".tmp" / "abandoned").exists()


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to drop the capability that ignores permissions",
)
def test_a_read_only_open_cleans_nothing_up(tmp_path: Path) -> None:
    store = _store_without_marker(tmp_path)
    for path in [store, *store.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    before = tree(store)
    script = f"""
        from statestore.storage._files import FileStorage
        storage = FileStorage({str(store)!r})
        print(storage.list_runs(), storage.get_latest_savepoint("run").timestamp)
        """
    try:
        result = subprocess.run(
            ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all",
             "--", sys.executable, "-c", textwrap.dedent(script)],
            capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )  # fmt: skip
        assert result.stdout == "['run'] 20\n", result.stderr
        assert tree(store) == before  # no marker written, no leftover removed
    finally:
        for path in [store, *store.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
