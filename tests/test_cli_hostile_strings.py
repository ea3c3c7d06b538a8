"""User strings in the command line's output: shown as written, never read as Rich markup.

Run and entity ids are the user's (or an attacker's) text. Rich reads ``[bold]x[/bold]``
as style and ``ops[/]`` as a closing tag with nothing to close (a MarkupError for the
whole table), so every table cell, message and progress line must show them verbatim.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from cli_support import BACKENDS, assert_one_line_error, damage_pack, run_cli, store_url
from rich.console import Console

import statestore
from statestore.cli.output import Output, to_json

#: Ids Rich would read as markup: a style, an unmatched closing tag, an unclosed link.
HOSTILE = ["[bold]prod[/bold]", "ops[/]", "[link=x]y"]
TIMESTAMPS = [60_000, 120_000]
#: The documented tag of a dict with keys that are not all str (docs/cli.md).
MAP_TAG = "__map__"


@pytest.fixture(params=BACKENDS)
def hostile_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store whose every run id and entity id is one of HOSTILE."""
    url = store_url(tmp_path, str(request.param))
    with statestore.open_storage(url) as storage:
        for run_id in HOSTILE:
            storage.init_storage(run_id)
            for timestamp in TIMESTAMPS:
                entities = [(entity_id, {"n": timestamp, "id": entity_id}) for entity_id in HOSTILE]
                storage.save_savepoint(run_id, timestamp, entities)
    return url


def _ok(*args: str, cwd: Path | None = None) -> str:
    result = run_cli(*args, cwd=cwd)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stdout


def test_tables_show_hostile_run_ids_verbatim(hostile_store: str) -> None:
    url = hostile_store
    for output in (
        _ok("runs", "--url", url),
        _ok("stats", "--url", url),
        _ok("prune", "--all", "--keep", "1", "--dry-run", "--url", url),
    ):
        for run_id in HOSTILE:
            assert run_id in output, output


def test_every_read_command_shows_hostile_ids_verbatim(hostile_store: str) -> None:
    url = hostile_store
    for run_id in HOSTILE:
        _ok("savepoints", run_id, "--url", url)
        shown = _ok("show", run_id, "--url", url)
        assert repr(run_id) in shown
        stats = _ok("stats", run_id, "--url", url)  # the biggest-entities table
        assert repr(run_id) in stats
        for entity_id in HOSTILE:
            assert f"{entity_id}:" in shown
            assert entity_id in stats
            one = _ok("show", run_id, "--entity", entity_id, "--url", url)
            assert f"{entity_id}:" in one
        assert "ok: " in _ok("verify", run_id, "--url", url)


def test_verify_damage_table_shows_hostile_run_id(hostile_store: str) -> None:
    damage_pack(hostile_store, "ops[/]", TIMESTAMPS[-1])
    result = run_cli("verify", "--url", hostile_store)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    (row,) = [line for line in result.stdout.splitlines() if str(TIMESTAMPS[-1]) in line]
    assert row.split()[0] == "ops[/]"


def test_export_delete_prune_messages_show_hostile_ids(hostile_store: str, tmp_path: Path) -> None:
    url = hostile_store
    for number, run_id in enumerate(HOSTILE):
        archive = tmp_path / f"run-{number}.ssa"
        assert repr(run_id) in _ok("export", run_id, str(archive), "--url", url)
        pruned = _ok("prune", run_id, "--keep", "1", "--url", url)
        assert pruned.splitlines()[2].split()[0] == run_id  # the first row of the table
        assert repr(run_id) in _ok("delete", run_id, "--yes", "--url", url)
        assert repr(run_id) in _ok("import", str(archive), "--url", url)
    runs = json.loads(_ok("runs", "--json", "--url", url))
    assert sorted(r["run_id"] for r in runs) == sorted(HOSTILE)


def test_progress_line_shows_a_hostile_run_id() -> None:
    """The bar is drawn only on a terminal: a Console that believes it is one, into a buffer."""
    out = Output()
    buffer = io.StringIO()
    out.err = Console(file=buffer, force_terminal=True, width=100, color_system=None)
    with out.progress("exporting ops[/] [bold]prod[/bold]") as progress:
        progress(1, 2)
    assert "exporting ops[/] [bold]prod[/bold]" in buffer.getvalue()


def test_show_json_keeps_keys_that_str_would_merge(tmp_path: Path) -> None:
    url = store_url(tmp_path, "sqlite")
    state = {1: "a", "1": "b"}
    with statestore.open_storage(url) as storage:
        storage.init_storage("r")
        storage.save_savepoint("r", 1000, [("e", state)])
    shown = json.loads(_ok("show", "r", "--json", "--url", url))
    assert shown["entities"][0]["state"] == {MAP_TAG: [[1, "a"], ["1", "b"]]}


def test_to_json_tags_every_dict_with_a_non_str_key() -> None:
    assert to_json({"a": {2: None}}) == {"a": {MAP_TAG: [[2, None]]}}
    assert to_json({(1, 2): {3, 1, 2}}) == {MAP_TAG: [[[1, 2], [1, 2, 3]]]}
    assert to_json({b"k": 1.5, None: True}) == {MAP_TAG: [["aw==", 1.5], [None, True]]}
    # A str-keyed dict that looks like the tagged form is tagged itself: never ambiguous.
    assert to_json({MAP_TAG: []}) == {MAP_TAG: [[MAP_TAG, []]]}
    assert to_json({MAP_TAG: 1, "x": 2}) == {MAP_TAG: 1, "x": 2}
    assert to_json({"plain": 1}) == {"plain": 1}


@pytest.mark.parametrize("url", ["sqlite:ref.db", "sqlite:/ref.db", "file:ref", "file:/tmp/x"])
def test_a_url_without_slashes_gets_the_library_verdict(url: str, tmp_path: Path) -> None:
    # The CLI took such a URL apart itself and said "ef.db does not exist".
    result = run_cli("runs", "--url", url, cwd=tmp_path)
    line = assert_one_line_error(result, 1)
    assert f"not a storage URL: {url!r}" in line
    assert list(tmp_path.iterdir()) == []  # nothing created
