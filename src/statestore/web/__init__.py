"""``statestore serve``: a read-only web view of a store (docs/web.md).

Pages: the runs, one run (its savepoint timeline as an inline SVG chart, its biggest
entities), one savepoint's entities, a diff of two savepoints, verify. Server-rendered
HTML without a script or anything fetched from elsewhere, so it works offline. Needs
the ``web`` extra (Starlette and uvicorn).

Safe by default: bound to 127.0.0.1, the ``Host`` header checked, GET only, every
stored string escaped, the store's URL shown with its secrets redacted.
"""

from __future__ import annotations

from ._app import LOOPBACK_HOSTS, PAGE_SIZE, RUNS_SIZE, create_app

__all__ = ["LOOPBACK_HOSTS", "PAGE_SIZE", "RUNS_SIZE", "create_app"]
