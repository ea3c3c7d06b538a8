"""Test wiring: Hypothesis in CI, and PostgreSQL (one server per session, a schema per test).

In CI (``CI`` set) Hypothesis runs derandomized: the same examples every run, so a
submission lands or fails on its own merits; run locally, the property tests explore new
examples each time, and a failure found there is kept as a regression test.

``STATESTORE_TEST_POSTGRES_URL=postgresql://user:pass@host/db`` runs the PostgreSQL tests
against that server (each test in a schema of its own, dropped afterwards). Otherwise a
throwaway cluster is started with the machine's ``initdb``/``pg_ctl`` (see
``tests/postgres_server.py``); with pytest-xdist each worker starts its own. When neither
is possible the tests are skipped, unless ``STATESTORE_REQUIRE_POSTGRES=1`` (CI) makes
that a failure. Every test using these fixtures is marked ``postgres``, so
``-m 'not postgres'`` leaves them out.
"""

from __future__ import annotations

import os
import urllib.parse
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import settings
from postgres_server import PostgresServer, ServerUnavailableError, find_bin_dir, reap_abandoned

settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

URL_ENV = "STATESTORE_TEST_POSTGRES_URL"
REQUIRE_ENV = "STATESTORE_REQUIRE_POSTGRES"
POSTGRES_FIXTURES = {
    "postgres_url",
    "postgres_server",
    "postgres_schema",
    "postgres_store_url",
    "private_postgres",
}


def _unavailable(reason: str, how: str | None = None) -> None:
    """Skip, or fail when PostgreSQL tests are required (CI)."""
    how = how or (
        f"install the PostgreSQL server binaries (initdb, pg_ctl) or set {URL_ENV} to a "
        "server's URL"
    )
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"PostgreSQL tests are required ({REQUIRE_ENV}=1) but {reason}; {how}")
    pytest.skip(f"PostgreSQL tests skipped: {reason}; to run them, {how}")


def with_query(url: str, **params: str) -> str:
    """``url`` with ``params`` added to its query string."""
    parts = urllib.parse.urlsplit(url)
    # Spaces as %20, never +: libpq does not read + as a space.
    added = urllib.parse.urlencode(params, quote_via=urllib.parse.quote)
    query = f"{parts.query}&{added}" if parts.query else added
    return urllib.parse.urlunsplit(parts._replace(query=query))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    marker = pytest.mark.postgres
    for item in items:
        if POSTGRES_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(marker)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer | None]:
    """This session's own server, or None when ``STATESTORE_TEST_POSTGRES_URL`` names one."""
    try:
        import psycopg  # noqa: F401 - only to report a missing extra clearly
    except ImportError:
        _unavailable("psycopg is not installed (pip install -e '.[postgres]')")
    if os.environ.get(URL_ENV):
        yield None
        return
    bin_dir = find_bin_dir()
    if bin_dir is None:
        _unavailable("no initdb/pg_ctl found under /usr/lib/postgresql/*/bin or on PATH")
        return
    reap_abandoned(bin_dir)
    try:
        server = PostgresServer(bin_dir).start()
    except ServerUnavailableError as exc:
        _unavailable(f"the throwaway server did not start: {exc}")
        return
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer | None) -> str:
    """A superuser URL of the test server (password included)."""
    if postgres_server is None:
        return os.environ[URL_ENV]
    return postgres_server.url()


@pytest.fixture
def postgres_schema(postgres_url: str) -> Iterator[str]:
    """A schema name no other test uses; the schema is dropped after the test."""
    import psycopg
    from psycopg import sql

    schema = f"test_{uuid.uuid4().hex[:20]}"
    yield schema
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def postgres_store_url(postgres_url: str, postgres_schema: str) -> str:
    """The URL of an empty store: the test server, in this test's own schema."""
    return with_query(postgres_url, schema=postgres_schema)


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    """A cluster of this test's own, to stop, restart or crash (about 1.5 s to start)."""
    how = "install the PostgreSQL server binaries (initdb, pg_ctl): this test stops its server"
    bin_dir = find_bin_dir()
    if bin_dir is None:
        _unavailable("no initdb/pg_ctl found to start a private server for this test", how)
        return
    try:
        server = PostgresServer(bin_dir).start()
    except ServerUnavailableError as exc:
        _unavailable(f"the private server did not start: {exc}", how)
        return
    try:
        yield server
    finally:
        server.stop()
