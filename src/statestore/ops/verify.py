"""Verify a store: every checksum checked, every state decoded, each damaged savepoint named."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError, CorruptSavepointError, NoSavepointError
from ..storage import SavepointInfo, Storage
from ._common import Progress, require_run
from ._stored import decode_states, read_stored

__all__ = ["Damage", "VerifyReport", "verify"]


@dataclass(frozen=True)
class Damage:
    """A damaged savepoint; ``timestamp`` is None when the run cannot even be listed."""

    run_id: str
    timestamp: int | None
    error: str


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify` checked and found.

    ``undecoded`` counts savepoints whose checksums passed but whose states were written
    with a codec this storage was not opened with (e.g. pickle): their bytes are intact,
    their values were not decoded.
    """

    runs: int
    savepoints: int
    damage: list[Damage] = field(default_factory=list)
    undecoded: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing is damaged."""
        return not self.damage


def verify(
    storage: Storage, run_id: str | None = None, *, progress: Progress | None = None
) -> VerifyReport:
    """Check every checksum and decode every state of one run, or of every run.

    Never stops at the first damage: each damaged savepoint is listed in the report, and
    so is one this statestore cannot read at all (a newer format version): whatever
    could not be verified is reported.
    Raises NoSavepointError when ``run_id`` names no run.
    """
    run_ids = [require_run(storage, run_id)] if run_id is not None else storage.list_runs()
    damage: list[Damage] = []
    listed: list[tuple[str, list[SavepointInfo]]] = []
    for rid in run_ids:
        try:
            listed.append((rid, storage.list_savepoints(rid)))
        except CorruptSavepointError as exc:  # a backend whose listing itself checks bytes
            damage.append(Damage(rid, None, str(exc)))
    total = sum(len(rows) for _rid, rows in listed)
    done = checked = undecoded = 0
    if progress is not None:
        progress(0, total)
    for rid, rows in listed:
        for row in rows:
            try:
                stored = read_stored(storage, rid, row.timestamp)
                if not storage.can_decode(stored.codec):
                    undecoded += 1
                else:
                    decode_states(storage, stored)
                checked += 1
            except (CorruptSavepointError, ConfigError) as exc:
                # ConfigError: a format this statestore cannot read (a damaged version
                # byte reads so too). Either way it is not verified: name it.
                damage.append(Damage(rid, row.timestamp, str(exc)))
                checked += 1
            except NoSavepointError:
                pass  # pruned since it was listed: nothing left to check
            done += 1
            if progress is not None:
                progress(done, total)
    return VerifyReport(len(run_ids), checked, damage, undecoded)
