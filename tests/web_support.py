"""The store the web view tests look at: ordinary runs, a hostile one, a big one, a diff."""

from __future__ import annotations

from pathlib import Path

from cli_support import fill

import statestore

#: A run id, an entity id and a state that are markup: the pages must show them as text.
HOSTILE_RUN = "<script>alert('run')</script>"
HOSTILE_ENTITY = '<img src=x onerror="alert(1)">'
HOSTILE_STATE = "</pre><script>alert('state')</script>"

#: A run of BIG_COUNT entities in one savepoint: three pages of 50.
BIG_RUN = "big-run"
BIG_COUNT = 120

#: Two savepoints of DIFF_RUN: "b" changes, "c" goes, "d" comes, "a" stays.
DIFF_RUN = "diff-run"
DIFF_OLD = [("a", 1), ("b", {"v": 2}), ("c", 3)]
DIFF_NEW = [("a", 1), ("b", {"v": 20}), ("d", "new")]


def make_store(tmp_path: Path) -> str:
    """A SQLite store with every run above and cli_support's two runs; returns its URL."""
    url = f"sqlite:///{tmp_path / 'web.db'}"
    fill(url)
    with statestore.open_storage(url) as storage:
        storage.init_storage(HOSTILE_RUN)
        storage.save_savepoint(HOSTILE_RUN, 60_000, [(HOSTILE_ENTITY, HOSTILE_STATE)])
        storage.init_storage(BIG_RUN)
        storage.save_savepoint(
            BIG_RUN, 60_000, [(f"entity-{i:04d}", {"i": i}) for i in range(BIG_COUNT)]
        )
        storage.init_storage(DIFF_RUN)
        storage.save_savepoint(DIFF_RUN, 60_000, DIFF_OLD)
        storage.save_savepoint(DIFF_RUN, 120_000, DIFF_NEW)
    return url
