"""Test kit shipped with statestore: the backend conformance suite, its fault tests and
their helpers.

A backend, built-in or your own, gets the whole contract checked, crashes, damaged and
crafted bytes included, by subclassing :class:`StorageConformance` in a pytest module
and filling in the hooks of :class:`~statestore.testing.hooks.BackendHooks`::

    from statestore.testing import StorageConformance

    class TestMyBackend(StorageConformance):
        opener = "mypackage.store:open_store"   # only if not registered by URL

        @pytest.fixture
        def url(self, tmp_path):                # a fresh, empty store for each test
            return f"mybackend://{tmp_path}"

        def raw_parts(self, storage, run_id, ts):        # back doors, past the library:
            return ["manifest", *(f"pack:{n}" for n in ...)]
        def raw_read(self, storage, run_id, ts, part): ...   # the stored bytes
        def raw_write(self, storage, run_id, ts, part, data): ...

:class:`InProcessConformance` is the suite for a store that processes cannot share;
:class:`FullDiskTests` adds the full-disk and file-size-limit tests for a store on a
local directory; :class:`ThroughAsyncAPI` runs a backend's suite through the coroutine
twins (``asave_savepoint`` ...).
The long tests are marked ``slow``: register the marker in your pytest
configuration (``markers = ["slow: ..."]``) when you run with ``--strict-markers``.

Requires pytest and hypothesis (``pip install 'statestore[dev]'``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .conformance import InProcessConformance, StorageConformance
    from .faults import FullDiskTests
    from .hooks import BackendHooks
    from .through_async import ThroughAsyncAPI

__all__ = [
    "BackendHooks",
    "FullDiskTests",
    "InProcessConformance",
    "StorageConformance",
    "ThroughAsyncAPI",
]

_HOMES = {
    "BackendHooks": "hooks",
    "FullDiskTests": "faults",
    "InProcessConformance": "conformance",
    "StorageConformance": "conformance",
    "ThroughAsyncAPI": "through_async",
}


def __getattr__(name: str) -> Any:
    # Imported lazily: the suite's child processes import statestore.testing.worker
    # and should not pay for loading pytest and hypothesis.
    if name in _HOMES:
        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(name)
