"""The one error tree of statestore.

Every error the library raises on purpose is one of these; driver errors (sqlite3,
psycopg, OSError) are translated at the backend boundary, so callers catch
``StateStoreError`` and nothing else::

    StateStoreError
    ├── NoSavepointError        (also LookupError)  the run has no savepoint (or no storage)
    ├── RunNotInitializedError  (also LookupError)  save on a run that was never initialized
    ├── CorruptSavepointError                       stored bytes fail a checksum or do not decode
    ├── ConfigError                                 no configured storage, bad URL, codec mismatch
    ├── InvalidArgumentError    (also ValueError)   bad run id, timestamp, keep_n, entities
    ├── EncodeError             (also TypeError)    a state the codec cannot encode
    ├── StaleWriterError                            a newer writer has taken the run
    └── BackendError                                the store itself failed (disk full, server gone)

Messages name the run, the timestamp and the entity where they are known.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "ConfigError",
    "CorruptSavepointError",
    "EncodeError",
    "InvalidArgumentError",
    "NoSavepointError",
    "RunNotInitializedError",
    "StaleWriterError",
    "StateStoreError",
]


class StateStoreError(Exception):
    """Base of every error statestore raises."""


class NoSavepointError(StateStoreError, LookupError):
    """The run has no savepoint, or no storage at all."""


class RunNotInitializedError(StateStoreError, LookupError):
    """A savepoint was saved to a run whose storage was never initialized."""


class CorruptSavepointError(StateStoreError):
    """Stored data failed its checksum or could not be decoded; no value is returned."""


class ConfigError(StateStoreError):
    """The storage is not configured, or is configured wrongly (URL, codec, options)."""


class InvalidArgumentError(StateStoreError, ValueError):
    """An argument is malformed; nothing was changed."""


class EncodeError(StateStoreError, TypeError):
    """A state cannot be encoded by the configured codec; nothing was changed."""


class StaleWriterError(StateStoreError):
    """This writer's token was superseded by a newer writer of the same run."""


class BackendError(StateStoreError):
    """The underlying store failed (I/O error, disk full, read-only, server unreachable)."""
