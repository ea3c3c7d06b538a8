"""Test kit shipped with statestore: the backend conformance suite and its helpers.

A backend, built-in or your own, gets the whole contract checked by subclassing
:class:`~statestore.testing.conformance.StorageConformance` in a pytest module::

    from statestore.testing import StorageConformance

    class TestMyBackend(StorageConformance):
        @pytest.fixture
        def url(self, tmp_path):            # a fresh, empty store for each test
            return f"mybackend://{tmp_path}"

        def tamper(self, storage, run_id, timestamp, part, mutate):
            ...                              # back door: rewrite stored bytes

Requires pytest and hypothesis (``pip install 'statestore[dev]'``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .conformance import StorageConformance

__all__ = ["StorageConformance"]


def __getattr__(name: str) -> Any:
    # Imported lazily: the suite's child processes import statestore.testing._worker
    # and should not pay for loading pytest and hypothesis.
    if name == "StorageConformance":
        from .conformance import StorageConformance  # noqa: PLC0415

        return StorageConformance
    raise AttributeError(name)
