"""No secret of a PostgreSQL URL reaches any output: every command, every error.

libpq takes the password from ``user:password@`` and from the query string
(``?password=...``, ``?sslpassword=...``, parameter names percent-escaped or not). Each
command runs as the real console script against the test server with the secrets in
both places, and neither stdout nor stderr may contain them.
"""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.parse
from pathlib import Path

import pytest
from cli_support import RUNS, fill, run_cli, store_url
from conftest import with_query
from postgres_server import SUPERUSER, PostgresServer

import statestore
from statestore.errors import BackendError, ConfigError
from statestore.storage import redact_url

#: A key passphrase libpq would use for an encrypted client key: a secret like the password.
SSL_SECRET = "ssl-Secret-0f9e8d7c"  # noqa: S105 (a test value, not a credential)


def _secrets(password: str) -> list[str]:
    return [password, urllib.parse.quote(password, safe=""), SSL_SECRET]


def _query_url(server: PostgresServer, schema: str, port: int | None = None) -> str:
    """The password only in the query string (its name percent-escaped, as libpq allows)."""
    base = f"postgresql://{SUPERUSER}@127.0.0.1:{port or server.port}/postgres"
    return (
        f"{base}?%70assword={urllib.parse.quote(server.password, safe='')}"
        f"&sslpassword={SSL_SECRET}&schema={schema}"
    )


@pytest.fixture(params=["userinfo", "query"])
def secret_url(
    request: pytest.FixtureRequest, postgres_server: PostgresServer | None, postgres_schema: str
) -> tuple[str, str]:
    """A store URL with the password in ``user:password@`` or in ``?password=``."""
    if postgres_server is None:
        pytest.skip("needs the test's own server: the password must be known to the test")
    if request.param == "userinfo":
        url = with_query(postgres_server.url(), schema=postgres_schema, sslpassword=SSL_SECRET)
    else:
        url = _query_url(postgres_server, postgres_schema)
    return url, postgres_server.password


def _assert_hidden(result: subprocess.CompletedProcess[str], password: str) -> None:
    for secret in _secrets(password):
        assert secret not in result.stdout, (result.args, result.stdout)
        assert secret not in result.stderr, (result.args, result.stderr)


def test_no_command_prints_the_password(secret_url: tuple[str, str], tmp_path: Path) -> None:
    url, password = secret_url
    fill(url)
    run = "sensor-fleet"
    copy = store_url(tmp_path, "file", "copy")
    archive = str(tmp_path / "run.ssa")
    commands: list[tuple[tuple[str, ...], int]] = [
        (("runs", "--url", url), 0),
        (("runs", "--url", url, "--json"), 0),
        (("savepoints", run, "--url", url), 0),
        (("show", run, "--url", url), 0),
        (("stats", "--url", url), 0),
        (("stats", run, "--url", url), 0),
        (("verify", "--url", url), 0),
        (("verify", run, "--url", url, "--json"), 0),
        (("prune", run, "--keep", "3", "--dry-run", "--url", url), 0),
        (("prune", "--all", "--keep", "3", "--url", url), 0),
        (("export", run, archive, "--url", url), 0),
        (("delete", run, "--yes", "--url", url), 0),
        (("import", archive, "--url", url), 0),
        (("compact", "--url", url), 0),
        (("compact", "--url", url, "--json"), 0),
        (("copy", url, copy), 0),
        (("copy", copy, url, "--replace"), 0),
        (("copy", url, copy), 1),  # refused: the destination has the runs
        # Not found: the CLI names the store beside libpq's message.
        (("savepoints", "no-such-run", "--url", url), 4),
        (("show", run, "--at", "1", "--url", url), 4),
        (("stats", "no-such-run", "--url", url), 4),
        (("delete", "no-such-run", "--yes", "--url", url), 4),
        (("export", "no-such-run", str(tmp_path / "x.ssa"), "--url", url), 4),
        (("delete", run, "--url", url), 2),  # no --yes off a terminal
    ]
    for args, code in commands:
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == code, (args, result.stdout, result.stderr)
        _assert_hidden(result, password)
        if args[0] in ("runs", "verify") and "--json" not in args:
            assert "***" in result.stdout  # the URL is shown, redacted
    runs = json.loads(run_cli("runs", "--url", url, "--json").stdout)
    assert sorted(r["run_id"] for r in runs) == sorted(RUNS)  # the commands did their work


def test_unreachable_server_error_hides_the_password(
    postgres_server: PostgresServer | None, tmp_path: Path
) -> None:
    if postgres_server is None:
        pytest.skip("needs the test's own server")
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    password = postgres_server.password
    wrong_port = postgres_server.url().replace(f":{postgres_server.port}/", f":{port}/")
    for url in (
        with_query(wrong_port, sslpassword=SSL_SECRET),
        _query_url(postgres_server, "s", port=port),
    ):
        result = run_cli("runs", "--url", url, cwd=tmp_path)
        assert result.returncode == 1, result.stderr
        assert "statestore: error:" in result.stderr
        _assert_hidden(result, password)
        with pytest.raises(BackendError) as raised:
            statestore.open_storage(url)
        for secret in _secrets(password):
            assert secret not in str(raised.value)


def test_repr_and_errors_of_the_backend_hide_the_password(
    secret_url: tuple[str, str],
) -> None:
    url, password = secret_url
    with statestore.open_storage(url) as storage:
        shown = repr(storage)
        with pytest.raises(statestore.NoSavepointError) as missing:
            storage.get_latest_savepoint("no-such-run")
    for secret in _secrets(password):
        assert secret not in shown
        assert secret not in str(missing.value)
    with pytest.raises(ConfigError) as bad:
        statestore.open_storage(url + "&no_such_libpq_option=1")
    for secret in _secrets(password):
        assert secret not in str(bad.value)


def test_schema_with_a_percent_is_refused_before_any_query(postgres_url: str) -> None:
    # psycopg reads % in a statement as a placeholder: such a name passed validation and
    # then failed inside the first query with a psycopg error.
    for schema in ("a%b", "%s", "100%"):
        with pytest.raises(ConfigError, match="'%' is not allowed"):
            statestore.open_storage(with_query(postgres_url, schema=schema))


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw@h:5/db", "postgresql://u:***@h:5/db"),
        ("postgresql://u@h/db?password=pw&x=1", "postgresql://u@h/db?password=***&x=1"),
        ("postgresql://h/db?a=1&sslpassword=pw", "postgresql://h/db?a=1&sslpassword=***"),
        ("postgresql://h/db?%70assword=p%20w", "postgresql://h/db?%70assword=***"),
        ("postgresql://h/db?PASSWORD=pw", "postgresql://h/db?PASSWORD=***"),
        (
            "postgresql://h/db?passfile=/home/u/.pgpass",
            "postgresql://h/db?passfile=/home/u/.pgpass",
        ),
        (
            "postgresql://u:a@h/db?password=b&sslpassword=c",
            "postgresql://u:***@h/db?password=***&sslpassword=***",
        ),
        ("host=h password=pw dbname=d", "host=h password=*** dbname=d"),
        ("host=h password='p w' dbname=d", "host=h password=*** dbname=d"),
        ("failed: 'postgres://u:pw@h/db' is down", "failed: 'postgres://u:***@h/db' is down"),
        ("sqlite:///a?b.db", "sqlite:///a?b.db"),
        (
            "s3://b/p?access_key_id=AK&secret_access_key=s%2Fk&session_token=t",
            "s3://b/p?access_key_id=AK&secret_access_key=***&session_token=***",
        ),
        ("s3://b?SECRET_ACCESS_KEY=sk&region=r", "s3://b?SECRET_ACCESS_KEY=***&region=r"),
        ("sqlite:///dir:x@y/a.db", "sqlite:///dir:x@y/a.db"),
    ],
)
def test_redact_url_hides_every_secret_libpq_reads(url: str, shown: str) -> None:
    assert redact_url(url) == shown
