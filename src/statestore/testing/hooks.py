"""What a backend's test class tells the kit: its URL, its opener and its back doors.

Every test class of the kit (:mod:`~statestore.testing.conformance`,
:mod:`~statestore.testing.faults`) derives from :class:`BackendHooks`. A backend's test
class provides:

* the ``url`` fixture: a fresh, empty store for each test;
* the three raw back doors, :meth:`~BackendHooks.raw_parts`,
  :meth:`~BackendHooks.raw_read` and :meth:`~BackendHooks.raw_write`, which reach the
  stored bytes of one savepoint past every check of the library (as zarr's
  ``StoreTests.get``/``set`` do). Everything that damages or forges stored bytes is
  written once, here and in the kit, on top of these three;
* optionally :attr:`~BackendHooks.opener`, when its URLs are not registered under the
  ``statestore.backends`` entry point: the kit's child processes import it by name.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from typing import ClassVar, Literal

import pytest

from ..codecs import Codec
from ..storage import Storage
from .worker import DEFAULT_OPENER, command, load_opener

__all__ = ["MANIFEST", "PACK_PREFIX", "BackendHooks", "Part"]

#: What :meth:`BackendHooks.tamper` changes: the manifest, or every pack.
Part = Literal["manifest", "pack"]

#: The name of a savepoint's manifest among its :meth:`BackendHooks.raw_parts`.
MANIFEST = "manifest"
#: The prefix of a pack's name among its :meth:`BackendHooks.raw_parts`.
PACK_PREFIX = "pack:"

#: How long the kit waits for a child process to finish its work (seconds).
CHILD_TIMEOUT = 120


class BackendHooks:
    """The hooks every kit test class uses; a backend's test class fills them in."""

    #: Whether data survives closing every handle and reopening the URL.
    persistent: ClassVar[bool] = True

    #: ``"package.module:callable"`` that opens a URL (``open_storage``'s signature),
    #: imported by the kit's child processes and by :meth:`open`. The default, the URL
    #: registry, finds backends registered under the ``statestore.backends`` entry
    #: point; an unregistered backend names its own opener.
    opener: ClassVar[str] = DEFAULT_OPENER

    @pytest.fixture
    def url(self) -> str:
        raise NotImplementedError("a backend's test class provides the url fixture")

    def open(self, url: str, codec: Codec | None = None) -> Storage:
        """Open a handle on the store through :attr:`opener`; override to pass options."""
        return load_opener(self.opener)(url, codec=codec)

    @pytest.fixture
    def storage(self, url: str) -> Iterator[Storage]:
        with self.open(url) as storage:
            yield storage

    # ---------------------------------------------------------------- back doors

    def raw_parts(self, storage: Storage, run_id: str, timestamp: int) -> list[str]:
        """Back door: the names of the stored byte strings of one savepoint.

        First :data:`MANIFEST`, then ``"pack:NAME"`` for each pack the savepoint refers
        to, then any other bytes the backend stores for the savepoint alone (a file
        backend's framing around the manifest, say), under names of the backend's own.
        ``storage`` is an open handle on the store (the test's own).
        """
        raise NotImplementedError("a backend's test class provides the raw back doors")

    def raw_read(self, storage: Storage, run_id: str, timestamp: int, part: str) -> bytes:
        """Back door: the stored bytes of ``part`` (a name of :meth:`raw_parts`).

        :data:`MANIFEST` reads the manifest exactly as the layout sealed it
        (:func:`statestore.testing.forgery.manifest_fields` takes it apart), whatever
        framing the backend stores around it.
        """
        raise NotImplementedError("a backend's test class provides the raw back doors")

    def raw_write(
        self, storage: Storage, run_id: str, timestamp: int, part: str, data: bytes
    ) -> None:
        """Back door: replace the stored bytes of ``part`` by ``data``, past every check.

        Writing :data:`MANIFEST` stores ``data`` as the manifest and re-wraps any framing
        of the backend's own with valid checksums, so only the manifest's own checks
        are left to catch the change.
        """
        raise NotImplementedError("a backend's test class provides the raw back doors")

    # ---------------------------------------------------------------- derived

    def tamper(
        self,
        storage: Storage,
        run_id: str,
        timestamp: int,
        part: Part,
        mutate: Callable[[bytes], bytes],
    ) -> None:
        """Replace the stored bytes of one savepoint's manifest, or of each of its packs,
        with ``mutate(old_bytes)``, through the raw back doors."""
        names = self.raw_parts(storage, run_id, timestamp)
        assert names[0] == MANIFEST, f"raw_parts must name the manifest first: {names}"
        chosen = names[:1] if part == "manifest" else self.packs(names)
        assert chosen, f"the savepoint {timestamp} refers to no pack: {names}"
        for name in chosen:
            old = self.raw_read(storage, run_id, timestamp, name)
            self.raw_write(storage, run_id, timestamp, name, mutate(old))

    @staticmethod
    def packs(names: list[str]) -> list[str]:
        """The pack parts among ``names`` (of :meth:`raw_parts`)."""
        return [name for name in names if name.startswith(PACK_PREFIX)]

    # ---------------------------------------------------------------- child processes

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        """Start ``python -m statestore.testing.worker ARGS`` with this class's opener."""
        return subprocess.Popen(  # noqa: S603 - our own interpreter and module
            command(*args, opener=self.opener),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    @staticmethod
    def finish(child: subprocess.Popen[str]) -> str:
        """Wait for a child of :meth:`spawn`; its stdout, once it exited with status 0."""
        stdout, stderr = child.communicate(timeout=CHILD_TIMEOUT)
        assert child.returncode == 0, f"worker {child.args!r} failed:\n{stderr}"
        return stdout
