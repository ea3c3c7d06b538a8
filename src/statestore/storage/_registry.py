"""Choosing a backend by URL: one table, imported lazily, with install hints.

Each scheme maps to ``module:Class``; the module is imported only when a URL of that
scheme is opened, so ``import statestore`` never pays for (or needs) psycopg.
Third-party backends register under the ``statestore.backends`` entry-point group
with their scheme as the name; their class must offer ``from_url(url, codec, **options)``
like the built-in ones.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from ..codecs import Codec
from ..errors import ConfigError
from ._base import Storage
from .layout import LIMIT_OPTION, MAX_SAVEPOINT_BYTES
from .url import redact_url, take_options

__all__ = ["missing_store", "open_storage", "redact_url"]

# scheme -> (module, class, extra to install when the import fails)
_BACKENDS: dict[str, tuple[str, str, str | None]] = {
    "memory": ("statestore.storage._memory", "MemoryStorage", None),
    "sqlite": ("statestore.storage._sqlite", "SQLiteStorage", None),
    "file": ("statestore.storage._files", "FileStorage", None),
    "postgresql": ("statestore.storage._postgres", "PostgresStorage", "postgres"),
    "postgres": ("statestore.storage._postgres", "PostgresStorage", "postgres"),
    "s3": ("statestore.storage._s3", "S3Storage", "s3"),
}


def open_storage(url: str, codec: Codec | None = None, **options: Any) -> Storage:
    """Open the backend a URL names.

    >>> storage = open_storage("memory://")
    >>> storage.init_storage("run-1")

    ``memory://[NAME]``, ``sqlite:///relative.db`` or ``sqlite:////absolute.db``,
    ``file:///absolute/dir``, ``postgresql://user:pass@host:port/db``,
    ``s3://bucket/prefix?endpoint=...`` (see docs/s3.md). ``codec``
    defaults to :class:`~statestore.codecs.SafeCodec`; ``options`` go to the backend,
    except ``max_savepoint_bytes`` (also ``?max_savepoint_bytes=N`` in the URL), the most
    bytes one savepoint's states may encode to (default 2 GiB), which every backend keeps.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(
            f"not a storage URL: {redact_url(str(url))!r} (expected e.g. sqlite:///statestore.db)"
        )
    url, limit = _take_savepoint_limit(url, options)
    scheme = url.split("://", 1)[0].lower()
    backend = _load_backend(scheme, url)
    storage = backend.from_url(url, codec, **options)
    storage.max_savepoint_bytes = limit
    return storage


def _take_savepoint_limit(url: str, options: dict[str, Any]) -> tuple[str, int]:
    """The URL without the ``max_savepoint_bytes`` option every backend shares, and its value.

    The option is the storage's, not the backend's, so it is taken here, once: as a
    keyword (``open_storage(url, max_savepoint_bytes=N)``) or in the query string, which
    is how the command line sets it.
    """
    given = {LIMIT_OPTION: options.pop(LIMIT_OPTION)} if LIMIT_OPTION in options else {}
    url, found = take_options(url, given, names={LIMIT_OPTION})
    value = found.get(LIMIT_OPTION)
    if isinstance(value, str) and not given:  # from the query; a keyword must be an int
        value = int(value) if value.isascii() and value.isdigit() else value
    if value is None:
        return url, MAX_SAVEPOINT_BYTES
    if type(value) is not int or value < 1:
        raise ConfigError(f"{LIMIT_OPTION} must be a whole number of bytes >= 1, not {value!r}")
    return url, value


def missing_store(url: str) -> str | None:
    """Where the local store ``url`` names would be, when nothing is there yet, else None.

    A mistyped path to a store that should exist then reads as "no store at ..." and not
    as a new, empty store (see :meth:`Storage.missing_location`). A URL that is not well
    formed is None here: opening it says what is wrong.
    """
    if not isinstance(url, str) or "://" not in url:
        return None
    try:
        url, _ = _take_savepoint_limit(url, {})
        backend = _load_backend(url.split("://", 1)[0].lower(), url)
    except ConfigError:
        return None
    return backend.missing_location(url)


def _load_backend(scheme: str, url: str) -> type[Storage]:
    if scheme in _BACKENDS:
        module_name, class_name, extra = _BACKENDS[scheme]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            hint = f"; install it with: pip install 'statestore[{extra}]'" if extra else ""
            raise ConfigError(
                f"the {scheme}:// backend is not available ({exc.name} missing){hint}"
            ) from None
        backend: type[Storage] = getattr(module, class_name)
        return backend
    for entry in entry_points(group="statestore.backends"):
        if entry.name == scheme:
            found = entry.load()
            if not (isinstance(found, type) and issubclass(found, Storage)):
                raise ConfigError(
                    f"the entry point {entry.value!r} for {scheme}:// is not a Storage subclass"
                )
            return found
    known = ", ".join(f"{name}://" for name in sorted(_BACKENDS))
    raise ConfigError(f"unknown storage scheme in {redact_url(url)!r}; known: {known}")
