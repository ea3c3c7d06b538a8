"""What the pages show that the operations do not compute: a diff, cached verify results."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from .. import ops
from ..storage import EncodedSavepoint, Storage

__all__ = ["Diff", "SizeChange", "VerifyCache", "diff_savepoints", "size_changes"]


@dataclass(frozen=True)
class Diff:
    """Entity ids of two savepoints: added in ``new``, removed from ``old``, stored
    differently (``changed``, in ``new``'s order), and how many are stored the same."""

    added: list[str]
    removed: list[str]
    changed: list[str]
    unchanged: int


def diff_savepoints(old: EncodedSavepoint, new: EncodedSavepoint) -> Diff:
    """Compare two savepoints by their stored bytes, decoding nothing.

    The codec encodes equal values to equal bytes, so equal bytes are an unchanged
    state; the pages decode only the few changed ones they show.
    """
    before = dict(old.entities)
    after = dict(new.entities)
    added = [entity_id for entity_id, _data in new.entities if entity_id not in before]
    removed = [entity_id for entity_id, _data in old.entities if entity_id not in after]
    changed = [
        entity_id
        for entity_id, data in new.entities
        if entity_id in before and before[entity_id] != data
    ]
    unchanged = len(after) - len(added) - len(changed)
    return Diff(added, removed, changed, unchanged)


@dataclass(frozen=True)
class SizeChange:
    """One entity's encoded size in two savepoints (None where it is absent)."""

    entity_id: str
    before: int | None
    after: int | None

    @property
    def change(self) -> int:
        return (self.after or 0) - (self.before or 0)


def size_changes(
    storage: Storage, run_id: str, old_ts: int, new_ts: int, top: int
) -> list[SizeChange]:
    """The ``top`` entities whose encoded size changed most from ``old_ts`` to ``new_ts``.

    From the two manifests alone (:meth:`Storage.describe_savepoint`): no state is read.
    """
    before = {
        s.entity_id: s.encoded_size for s in storage.describe_savepoint(run_id, old_ts).states
    }
    after = {s.entity_id: s.encoded_size for s in storage.describe_savepoint(run_id, new_ts).states}
    changes = [
        SizeChange(entity_id, before.get(entity_id), after.get(entity_id))
        for entity_id in dict.fromkeys([*after, *before])
        if before.get(entity_id) != after.get(entity_id)
    ]
    return sorted(changes, key=lambda c: (-abs(c.change), c.entity_id))[:top]


@dataclass(frozen=True)
class Checked:
    """A verify report and when it was made (``time.time()``)."""

    report: ops.VerifyReport
    at: float


class VerifyCache:
    """The latest verify result of each run and of the whole store.

    Verifying reads and decodes every state, so the pages never do it on their own:
    the runs page shows what the last check found, and a check runs only when asked.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._results: dict[str | None, Checked] = {}

    def check(self, storage: Storage, run_id: str | None) -> Checked:
        """Verify one run (or, with None, every run) now, and remember the result."""
        checked = Checked(ops.verify(storage, run_id), time.time())
        with self._lock:
            self._results[run_id] = checked
        return checked

    def get(self, run_id: str | None) -> Checked | None:
        with self._lock:
            return self._results.get(run_id)

    def health(self, run_id: str) -> tuple[bool, float] | None:
        """``(intact, when)`` from the newest check that covered the run, or None."""
        with self._lock:
            candidates = [
                (checked, checked.report.damage)
                for key, checked in self._results.items()
                if key in (run_id, None)
            ]
        if not candidates:
            return None
        checked, damage = max(candidates, key=lambda pair: pair[0].at)
        intact = not any(d.run_id == run_id for d in damage)
        return intact, checked.at
