"""``s3://``: savepoints in S3-compatible object storage, for many hosts at once.

Needs the ``s3`` extra (``pip install 'statestore[s3]'``: obstore). One module per concern:

* ``_options.py``: the URL, the ``AWS_*`` environment and the options, secrets kept apart
* ``_head.py``: the run's head object and the naming of every key
* ``_storage.py``: :class:`S3Storage`, the storage primitives over conditional writes

See ``docs/s3.md`` for the protocol, its cost in requests and the URL options.
"""

from __future__ import annotations

from ._storage import S3Storage

__all__ = ["S3Storage"]
