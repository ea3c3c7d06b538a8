"""Which SQLite library the SQLite backend runs on, and the limits it sets.

SQLite 3.7.0 to 3.51.2 can corrupt a WAL database when two connections write or
checkpoint at the same moment (the "WAL-reset bug", https://sqlite.org/wal.html, fixed in
3.51.3): exactly what several processes saving into one store do. The backend runs on
the SQLite that apsw bundles, not on the (often older) one Python's sqlite3 links.
"""

from __future__ import annotations

import re
from pathlib import Path

import apsw
import pytest
from cli_support import fill, run_cli, store_url

from statestore.errors import ConfigError
from statestore.storage import open_storage
from statestore.storage._sqlite import SQLiteStorage

#: The first SQLite release with the WAL-reset bug fixed.
FIXED_IN = (3, 51, 3)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


# ==================================================================== the library


def test_the_store_runs_on_a_sqlite_without_the_wal_reset_bug(tmp_path: Path) -> None:
    with SQLiteStorage(tmp_path / "store.db") as storage:
        version = storage.sqlite_version
        assert isinstance(version, str)
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
        assert _version(version) >= FIXED_IN
        assert version == apsw.sqlite_lib_version()
        # The version reported is the one the store's own connections run on.
        running = storage._connection().execute("SELECT sqlite_version()").fetchall()
        assert running == [(version,)]


def test_stats_prints_the_sqlite_library(tmp_path: Path) -> None:
    url = store_url(tmp_path, "sqlite")
    fill(url)
    with open_storage(url) as storage:
        assert isinstance(storage, SQLiteStorage)
        version = storage.sqlite_version
    result = run_cli("stats", "--url", url)
    assert result.returncode == 0, result.stderr
    assert f"SQLite library: {version}\n" in result.stdout
    assert _version(version) >= FIXED_IN


def test_stats_of_another_backend_names_no_sqlite_library(tmp_path: Path) -> None:
    url = store_url(tmp_path, "file")
    fill(url)
    result = run_cli("stats", "--url", url)
    assert result.returncode == 0, result.stderr
    assert "SQLite library" not in result.stdout


@pytest.mark.parametrize("old", ["3.51.2", "3.40.1", "3.7.0"])
def test_a_sqlite_library_with_the_wal_reset_bug_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old: str
) -> None:
    # The real old library cannot be loaded next to the bundled one: feed the check an
    # old version instead.
    monkeypatch.setattr(apsw, "sqlite_lib_version", lambda: old)
    with pytest.raises(ConfigError) as raised:
        SQLiteStorage(tmp_path / "sub" / "store.db")
    message = str(raised.value)
    assert f"SQLite {old}" in message
    assert "3.51.3" in message
    assert "WAL-reset" in message
    assert "apsw" in message  # the fix: install a newer apsw
    assert not (tmp_path / "sub").exists()  # refused before anything was created


def test_the_first_fixed_sqlite_library_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apsw, "sqlite_lib_version", lambda: "3.51.3")
    with SQLiteStorage(tmp_path / "store.db") as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 1, [("a", 1)])
        assert storage.sqlite_version == "3.51.3"
