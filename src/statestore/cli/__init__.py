"""The ``statestore`` command line: each command a thin layer over :mod:`statestore.ops`.

One module per command group: :mod:`.inspect` (runs, savepoints, show, stats),
:mod:`.maintain` (verify, prune, delete, compact), :mod:`.transfer` (export, import,
copy), :mod:`.demo`; :mod:`.output` prints tables, states and JSON. Usage and exit
codes: ``docs/cli.md`` or ``statestore --help``.
"""

from __future__ import annotations

from ._main import main

__all__ = ["main"]
