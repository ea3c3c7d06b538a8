"""The whole conformance kit through the coroutine twins, on every built-in backend.

Each class is a backend's own test class with :class:`ThroughAsyncAPI` mixed in: the
same tests, every twinned call made through its coroutine on a fresh event loop. The
test that kills a writer mid-save is left out (its children use the blocking API; see
the mixin); the backends' own tests outside the kit run once, in their own files. The
example backend of docs/backends.md runs the kit blocking only: the twins do not depend
on the backend, and the suite's time is better spent elsewhere.
"""

from __future__ import annotations

# The backends' test modules by module name: a class imported by name would be
# collected here a second time.
import test_files
import test_memory
import test_postgres
import test_sqlite

from statestore.testing import ThroughAsyncAPI


class TestMemoryThroughAsync(ThroughAsyncAPI, test_memory.TestMemory):
    pass


class TestSQLiteThroughAsync(ThroughAsyncAPI, test_sqlite.TestSQLite):
    pass


class TestFilesThroughAsync(ThroughAsyncAPI, test_files.TestFiles):
    pass


class TestPostgresThroughAsync(ThroughAsyncAPI, test_postgres.TestPostgres):
    pass
