"""Every command against a PostgreSQL store (a throwaway server, a schema per test)."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
from cli_support import RUNS, assert_one_line_error, fill, run_cli, snapshot, store_url
from psycopg import sql

import statestore


def _damage_pack(url: str, schema: str, run_id: str, timestamp: int) -> None:
    """Flip a byte in the middle of the first chunk of each pack of the savepoint."""
    with statestore.open_storage(url) as storage:
        packs = list(storage.describe_savepoint(run_id, timestamp).packs)
    server_url = url.split("?", 1)[0]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "UPDATE {}.statestore_blobs SET data = set_byte(data, length(data) / 2, "
                "get_byte(data, length(data) / 2) # 64) WHERE name = ANY(%s) AND chunk = 0"
            ).format(sql.Identifier(schema)),
            (list(packs),),
        )


def test_every_command_on_postgres(
    tmp_path: Path, postgres_store_url: str, postgres_schema: str
) -> None:
    url = postgres_store_url
    saved = fill(url)

    def ok(*args: str) -> str:
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return result.stdout

    runs = json.loads(ok("runs", "--url", url, "--json"))
    assert {r["run_id"]: r["savepoints"] for r in runs} == {k: len(v) for k, v in RUNS.items()}
    rows = json.loads(ok("savepoints", "sensor-fleet", "--url", url, "--json"))
    assert [r["timestamp"] for r in rows] == RUNS["sensor-fleet"]
    shown = json.loads(ok("show", "sensor-fleet", "--at", "60000", "--url", url, "--json"))
    assert shown["timestamp"] == 60_000
    assert "1970-01-01 00:04:00.000" in ok("stats", "sensor-fleet", "--url", url)
    assert json.loads(ok("verify", "--url", url, "--json"))["ok"] is True

    ok("export", "billing/2024", "billing.ssa", "--url", url)
    ok("delete", "billing/2024", "--yes", "--url", url)
    assert sorted(snapshot(url)) == ["sensor-fleet"]
    ok("import", "billing.ssa", "--url", url)
    assert snapshot(url) == saved

    plan = json.loads(
        ok("prune", "sensor-fleet", "--keep", "2", "--dry-run", "--url", url, "--json")
    )
    assert plan["runs"][0]["delete"] == RUNS["sensor-fleet"][:2]
    ok("prune", "--all", "--keep", "2", "--url", url)
    assert [sp.timestamp for sp in snapshot(url)["sensor-fleet"]] == RUNS["sensor-fleet"][2:]
    assert "compacted" in ok("compact", "--url", url)

    copy = store_url(tmp_path, "file", "copy")
    ok("copy", url, copy)
    assert snapshot(copy) == snapshot(url)

    _damage_pack(url, postgres_schema, "sensor-fleet", 240_000)
    result = run_cli("verify", "--url", url, "--json")
    assert result.returncode == 3
    damage = json.loads(result.stdout)["damage"]
    assert [(d["run_id"], d["timestamp"]) for d in damage] == [("sensor-fleet", 240_000)]
    line = assert_one_line_error(run_cli("show", "sensor-fleet", "--url", url), 3)
    assert "240000" in line
