"""The web view's pages through Starlette's test client, against a real SQLite store."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest
from cli_support import BIG, RUNS, damage_pack, run_cli, snapshot
from starlette.testclient import TestClient
from web_support import (
    BIG_COUNT,
    BIG_RUN,
    DIFF_RUN,
    HOSTILE_ENTITY,
    HOSTILE_RUN,
    HOSTILE_STATE,
    make_store,
)

import statestore
from statestore.cli.output import format_date
from statestore.web import PAGE_SIZE, RUNS_SIZE, create_app

LABEL = "sqlite:///web.db"


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_store(tmp_path_factory.mktemp("web"))


@pytest.fixture(scope="module")
def client(store_url: str) -> Iterator[TestClient]:
    with statestore.open_storage(store_url) as storage:
        yield TestClient(create_app(storage, store=LABEL), base_url="http://127.0.0.1:8765")


def get(client: TestClient, path: str, status: int = 200, **params: str | int) -> str:
    response = client.get(path, params=params)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "script-src" not in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    return response.text


def rows(html: str, table_id: str) -> list[str]:
    """The body rows of one table, as HTML."""
    match = re.search(rf'<table id="{table_id}">.*?<tbody>(.*?)</tbody>', html, re.S)
    assert match, table_id
    return re.findall(r"<tr>(.*?)</tr>", match.group(1), re.S)


def test_the_runs_page_lists_every_run_with_its_facts(client: TestClient) -> None:
    html = get(client, "/")
    listed = rows(html, "runs")
    assert len(listed) == len(RUNS) + 3
    (fleet,) = [row for row in listed if ">sensor-fleet<" in row]
    assert 'href="/run?run=sensor-fleet"' in fleet
    assert '<td class="num">4</td>' in fleet
    assert "1970-01-01 00:04:00.000" in fleet  # the latest timestamp, as a date
    assert "KiB" in fleet
    assert "not verified" in fleet  # nothing verifies until asked
    assert 'href="/run?run=billing%2F2024"' in html  # a slash in a run id survives the link
    assert LABEL in html


def test_the_run_page_shows_the_timeline_chart_and_biggest_entities(
    client: TestClient, store_url: str
) -> None:
    html = get(client, "/run", run="sensor-fleet")
    timeline = rows(html, "timeline")
    assert len(timeline) == 4
    assert "240000" in timeline[0]  # newest first
    assert 'href="/diff?run=sensor-fleet&amp;from=180000&amp;to=240000"' in timeline[0]
    assert "diff with previous" not in timeline[-1]  # the oldest has none before it
    with statestore.open_storage(store_url) as storage:
        sizes = [row.size for row in storage.list_savepoints("sensor-fleet")]
    assert (
        len(re.findall(r'<rect class="bar"', html)) == 2 * 4
    )  # written and all states, per savepoint
    assert f"written {sizes[-1]:,} B" in html  # the chart's tooltip has the exact figure
    biggest = rows(html, "biggest")
    assert BIG in biggest[0]
    assert '<select name="from">' in html


def test_a_savepoint_page_shows_states_a_page_at_a_time(client: TestClient) -> None:
    first = get(client, "/savepoint", run=BIG_RUN, ts=60_000)
    shown = rows(first, "entities")
    assert len(shown) == PAGE_SIZE
    assert "entity-0000" in shown[0]
    assert "{&#x27;i&#x27;: 0}" in shown[0]
    assert f"page 1 of 3 ({BIG_COUNT} rows)" in first
    last = get(client, "/savepoint", run=BIG_RUN, ts=60_000, page=3)
    assert len(rows(last, "entities")) == BIG_COUNT - 2 * PAGE_SIZE
    assert "entity-0119" in last
    assert "next" not in re.sub(r"<table.*</table>", "", last, flags=re.S)
    get(client, "/savepoint", 404, run=BIG_RUN, ts=60_000, page=4)
    found = get(client, "/savepoint", run=BIG_RUN, ts=60_000, q="entity-011")
    assert len(rows(found, "entities")) == 10


def test_a_long_state_is_cut(client: TestClient) -> None:
    html = get(client, "/savepoint", run="sensor-fleet", ts=240_000)
    (big_row,) = [row for row in rows(html, "entities") if BIG in row]
    assert "... +" in big_row  # 500 samples, abbreviated as the command line does
    assert len(big_row) < 3_000


def test_a_diff_shows_added_removed_and_changed_side_by_side(client: TestClient) -> None:
    html = get(client, "/diff", run=DIFF_RUN, **{"from": 60_000, "to": 120_000})
    assert "1 added, 1 removed, 1 changed, 1 unchanged" in html
    changes = rows(html, "diff")
    assert [re.search(r"<td>(\w+)</td>", row).group(1) for row in changes] == [  # type: ignore[union-attr]
        "changed",
        "added",
        "removed",
    ]
    changed, added, removed = changes
    assert ">b<" in changed
    assert "&#x27;v&#x27;: 2}" in changed
    assert "&#x27;v&#x27;: 20}" in changed
    assert ">d<" in added
    assert "&#x27;new&#x27;" in added
    assert ">c<" in removed
    assert ">3<" in removed


def test_verify_is_cached_until_asked_again(tmp_path: Path) -> None:
    url = make_store(tmp_path)
    with statestore.open_storage(url) as storage:
        client = TestClient(create_app(storage, store=LABEL), base_url="http://localhost")
        assert "Intact" in get(client, "/verify")
        assert "intact" in get(client, "/")
        damage_pack(url, "sensor-fleet", 240_000)
        assert "Intact" in get(client, "/verify")  # the cached result: nothing read again
        fresh = get(client, "/verify", fresh=1)
        assert "Damaged: 1 savepoint(s)" in fresh
        assert "240000" in fresh
        (fleet,) = [row for row in rows(get(client, "/"), "runs") if ">sensor-fleet<" in row]
        assert ">damaged<" in fleet
        damaged = get(client, "/savepoint", 500, run="sensor-fleet", ts=240_000)
        assert "Damaged" in damaged
        assert "sensor-fleet" in damaged
        run = get(client, "/verify", run="billing/2024")
        assert "Intact" in run
        assert "run billing/2024" in run


def test_markup_in_run_ids_entity_ids_and_states_is_shown_as_text(client: TestClient) -> None:
    pages = [
        get(client, "/"),
        get(client, "/run", run=HOSTILE_RUN),
        get(client, "/savepoint", run=HOSTILE_RUN, ts=60_000),
        get(client, "/verify", run=HOSTILE_RUN),
        get(client, "/run", 404, run="<script>nope</script>"),
    ]
    for html in pages:
        assert "<script" not in html.lower()
        assert "<img" not in html.lower()
    assert "&lt;script&gt;alert(&#x27;run&#x27;)&lt;/script&gt;" in pages[1]
    entity = pages[2]
    assert HOSTILE_ENTITY.replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;") in entity
    assert "&lt;/pre&gt;&lt;script&gt;" in entity
    assert HOSTILE_STATE not in entity
    quoted = urllib.parse.quote(HOSTILE_RUN, safe="")
    assert f"/run?run={quoted}" in pages[0].replace("&amp;", "&").replace("+", "%20")


def test_only_requests_for_this_machine_are_answered(store_url: str) -> None:
    with statestore.open_storage(store_url) as storage:
        app = create_app(storage, store=LABEL, allowed_hosts=["statestore.internal"])
        for base in ("http://127.0.0.1:8765", "http://localhost:1", "http://[::1]:8765",
                     "http://statestore.internal"):  # fmt: skip
            assert TestClient(app, base_url=base).get("/").status_code == 200, base
        for base in ("http://attacker.example", "http://127.0.0.1.attacker.example:8765"):
            response = TestClient(app, base_url=base).get("/")
            assert response.status_code == 400, base
            assert "sensor-fleet" not in response.text


def test_no_route_changes_the_store(client: TestClient, store_url: str) -> None:
    before = snapshot(store_url)
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        for path in ("/", "/run", "/savepoint", "/diff", "/verify"):
            response = client.request(method, path, params={"run": "sensor-fleet"})
            assert response.status_code == 405, (method, path)
    assert snapshot(store_url) == before


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/run", {}, 400),
        ("/run", {"run": "no-such-run"}, 404),
        ("/run", {"run": ""}, 400),
        ("/savepoint", {"run": "sensor-fleet", "ts": "soon"}, 400),
        ("/savepoint", {"run": "sensor-fleet", "ts": "99"}, 404),
        ("/savepoint", {"run": "sensor-fleet", "ts": "60000", "page": "0"}, 400),
        ("/diff", {"run": "sensor-fleet", "from": "60000"}, 400),
        ("/verify", {"run": "no-such-run"}, 404),
        ("/nowhere", {}, 404),
    ],
)
def test_bad_requests_get_a_clear_status(
    client: TestClient, path: str, params: dict[str, str], status: int
) -> None:
    response = client.get(path, params=params)
    assert response.status_code == status, response.text


def test_serve_needs_a_store_that_exists(tmp_path: Path) -> None:
    result = run_cli("serve", "--url", f"sqlite:///{tmp_path / 'nope.db'}")
    assert result.returncode == 1
    assert "no store at" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_run_page_lists_the_biggest_size_changes(client: TestClient) -> None:
    html = get(client, "/run", run=DIFF_RUN)
    changes = {re.search(r"<td>(\w+)</td>", row).group(1): row for row in rows(html, "changes")}  # type: ignore[union-attr]
    assert set(changes) == {"c", "d"}  # "b" changed value, not size
    assert re.search(r"<td>-</td><td>\d+ B</td>", changes["d"])  # added: no size before
    assert re.search(r"<td>\d+ B</td><td>-</td>", changes["c"])  # removed: none after


def test_serve_refuses_a_bad_port_and_says_what_it_needs(store_url: str) -> None:
    result = run_cli("serve", "--url", store_url, "--port", "70000")
    assert result.returncode == 2
    assert "--port must be 1 to 65535" in result.stderr
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('uvicorn', 'starlette'):\n"
        "            raise ModuleNotFoundError(name, name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from statestore.cli import main\n"
        f"sys.exit(main(['serve', '--url', {store_url!r}]))\n"
    )
    blocked = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert blocked.returncode == 1
    assert "pip install 'statestore[web]'" in blocked.stderr
    assert "Traceback" not in blocked.stderr


def test_the_runs_page_is_paginated_and_sizes_only_its_runs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'many.db'}"
    with statestore.open_storage(url) as storage:
        for i in range(RUNS_SIZE + 5):
            storage.init_storage(f"run-{i:03d}")
        storage.save_savepoint("run-104", 60_000, [("a", 1)])
        client = TestClient(create_app(storage, store=LABEL), base_url="http://localhost")
        first = get(client, "/")
        assert len(rows(first, "runs")) == RUNS_SIZE
        assert f"page 1 of 2 ({RUNS_SIZE + 5} rows)" in first
        second = get(client, "/", page=2)
        listed = rows(second, "runs")
        assert len(listed) == 5
        assert '<td class="num">1</td>' in listed[-1]  # run-104: one savepoint


def test_the_timeline_shows_the_states_each_savepoint_wrote_and_reused(
    client: TestClient,
) -> None:
    # DIFF_RUN's second savepoint writes "b" (changed) and "d" (new) and reuses "a".
    timeline = rows(get(client, "/run", run=DIFF_RUN), "timeline")
    assert "<td>2 / 1</td>" in timeline[0]
    assert "<td>3 / 0</td>" in timeline[1]


def _writer_line(html: str) -> str:
    match = re.search(r'<p id="writer">(.*?)</p>', html, re.S)
    assert match, html
    return match.group(1)


def test_the_run_page_shows_the_writer_token_and_its_age(tmp_path: Path) -> None:
    path = tmp_path / "writer.db"
    with statestore.open_storage(f"sqlite:///{path}") as storage:
        client = TestClient(create_app(storage, store=LABEL), base_url="http://localhost")
        storage.init_storage("job")
        assert "no writer has taken the run yet" in _writer_line(get(client, "/run", run="job"))
        token = storage.acquire_writer("job")  # a job started: no savepoint yet
        assert re.search(rf"token {token}, taken [-0-9 :.]+ UTC, \d+ s ago", _writer_line(
            get(client, "/run", run="job")
        ))  # fmt: skip
        storage.save_savepoint("job", 60_000, [("a", 1)], writer_token=token)
        # Three hours and five minutes ago: the age is counted from the stored time.
        taken_at = statestore.storage.epoch_ms() - (3 * 3600 + 5 * 60 + 30) * 1000
        with contextlib.closing(apsw.Connection(str(path))) as conn:
            conn.execute("UPDATE writer_taken SET taken_at = ?", (taken_at,))
        line = _writer_line(get(client, "/run", run="job"))
        assert f"token {token}, taken {format_date(taken_at)} UTC, 3 h 5 min ago" in line
        with contextlib.closing(apsw.Connection(str(path))) as conn:
            conn.execute("DELETE FROM writer_taken")  # as an older statestore's token reads
        line = _writer_line(get(client, "/run", run="job"))
        assert f"token {token}, taken at a time not recorded" in line


def test_a_damaged_writer_token_leaves_the_run_page_and_stats_readable(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    with statestore.open_storage(url) as storage:
        assert isinstance(storage, statestore.storage.FileStorage)
        storage.init_storage("job")
        storage.save_savepoint("job", 60_000, [("a", 1)])
        storage.acquire_writer("job")
        Path(storage._run_dir("job"), "writer-token").write_bytes(b"garbage")
        client = TestClient(create_app(storage, store=LABEL), base_url="http://localhost")
        html = get(client, "/run", run="job")  # 200: the sizes are still shown
        assert len(rows(html, "timeline")) == 1
        assert "unreadable: run &#x27;job&#x27;: the writer token file in" in _writer_line(html)
    stats = run_cli("stats", "job", "--url", url)
    assert "writer: unreadable: run 'job': the writer token file in" in stats.stdout
    data = json.loads(run_cli("stats", "job", "--url", url, "--json").stdout)
    assert data["writer"] is None
    assert "is damaged" in data["writer_problem"]
