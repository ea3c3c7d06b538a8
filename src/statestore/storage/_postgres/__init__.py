"""``postgresql://``: savepoints in PostgreSQL, for many processes and hosts at once.

Needs the ``postgres`` extra (``pip install 'statestore[postgres]'``: psycopg 3 and
psycopg_pool). One module per concern:

* ``_options.py``: the URL and its options, the password kept out of every message
* ``_schema.py``: the tables and their numbered migrations
* ``_storage.py``: :class:`PostgresStorage`, the storage primitives as SQL

See ``docs/postgres.md`` for URL options, the schema and how to run the tests.
"""

from __future__ import annotations

from ._storage import PostgresStorage

__all__ = ["PostgresStorage"]
