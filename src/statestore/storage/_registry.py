"""Choosing a backend by URL: one table, imported lazily, with install hints.

Each scheme maps to ``module:Class``; the module is imported only when a URL of that
scheme is opened, so ``import statestore`` never pays for (or needs) psycopg.
Third-party backends register under the ``statestore.backends`` entry-point group
with their scheme as the name; their class must offer ``from_url(url, codec, **options)``
like the built-in ones.
"""

from __future__ import annotations

import importlib
import re
import urllib.parse
from importlib.metadata import entry_points
from typing import Any

from ..codecs import Codec
from ..errors import ConfigError
from ._base import Storage
from .layout import LIMIT_OPTION, MAX_SAVEPOINT_BYTES

__all__ = ["open_storage", "redact_url"]

# scheme -> (module, class, extra to install when the import fails)
_BACKENDS: dict[str, tuple[str, str, str | None]] = {
    "memory": ("statestore.storage._memory", "MemoryStorage", None),
    "sqlite": ("statestore.storage._sqlite", "SQLiteStorage", None),
    "file": ("statestore.storage._files", "FileStorage", None),
    "postgresql": ("statestore.storage._postgres", "PostgresStorage", "postgres"),
    "postgres": ("statestore.storage._postgres", "PostgresStorage", "postgres"),
}

# ``scheme://user:password@``, at the start or inside a message (after a blank or quote).
_PASSWORD = re.compile(
    r"(?P<head>(?:^|(?<=[\s'\"(]))[a-zA-Z][a-zA-Z0-9+.-]*://[^/@:\s]*:)(?P<password>[^/@]*)(?=@)"
)
#: The libpq parameters that hold a secret (a ``passfile`` path is not one).
SECRET_PARAMETERS = frozenset({"password", "sslpassword"})
# A query parameter: its value runs to the next ``&`` (libpq takes everything up to it).
_QUERY_PARAMETER = re.compile(r"(?P<head>[?&](?P<name>[^=&?#\s]*)=)(?P<value>[^&]*)")
# ``password=...`` of a libpq key=value connection string (quoted or a bare word).
_KEYWORD_PARAMETER = re.compile(
    r"(?P<head>(?:^|(?<=\s))(?i:sslpassword|password)\s*=\s*)"
    r"(?P<value>'(?:[^'\\]|\\.)*'?|[^\s']\S*)"
)


def redact_url(url: str) -> str:
    """The URL with every secret replaced by ``***``: safe for messages and logs.

    Redacted: the password of ``user:password@``, and the value of every query parameter
    libpq reads as a secret (``password``, ``sslpassword``, their names percent-escaped
    or not, as libpq decodes them), also as ``password=...`` in a key=value string.
    """
    url = _PASSWORD.sub(r"\g<head>***", url)
    url = _QUERY_PARAMETER.sub(_redact_parameter, url)
    return _KEYWORD_PARAMETER.sub(r"\g<head>***", url)


def _redact_parameter(match: re.Match[str]) -> str:
    """A ``name=value`` query parameter, its value hidden when libpq reads it as a secret."""
    # Compared without case: hiding a value libpq would refuse anyway costs nothing.
    if urllib.parse.unquote(match.group("name")).lower() in SECRET_PARAMETERS:
        return match.group("head") + "***"
    return match.group(0)


def open_storage(url: str, codec: Codec | None = None, **options: Any) -> Storage:
    """Open the backend a URL names.

    >>> storage = open_storage("memory://")
    >>> storage.init_storage("run-1")

    ``memory://[NAME]``, ``sqlite:///relative.db`` or ``sqlite:////absolute.db``,
    ``file:///absolute/dir``, ``postgresql://user:pass@host:port/db``. ``codec``
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


# ``?max_savepoint_bytes=N`` or ``&max_savepoint_bytes=N``, up to the next parameter.
_LIMIT_PARAMETER = re.compile(rf"[?&]{LIMIT_OPTION}=(?P<value>[^&#]*)")


def _take_savepoint_limit(url: str, options: dict[str, Any]) -> tuple[str, int]:
    """The URL without the ``max_savepoint_bytes`` option every backend shares, and its value.

    The option is the storage's, not the backend's, so it is taken here, once: as a
    keyword (``open_storage(url, max_savepoint_bytes=N)``) or in the query string, which
    is how the command line sets it.
    """
    value: Any = options.pop(LIMIT_OPTION, None)
    match = _LIMIT_PARAMETER.search(url)
    if match is not None:
        if value is not None:
            raise ConfigError(f"{LIMIT_OPTION} is given twice, in the URL and as an option")
        text = match.group("value")
        value = int(text) if text.isascii() and text.isdigit() else text
        rest = url[match.end() :]
        # Keep the query well-formed: "?a=1&limit=2" -> "?a=1", "?limit=2&b=3" -> "?b=3".
        joiner = match.group(0)[0] if rest.startswith("&") else ""
        url = url[: match.start()] + (joiner + rest[1:] if joiner else rest)
    if value is None:
        return url, MAX_SAVEPOINT_BYTES
    if type(value) is not int or value < 1:
        raise ConfigError(f"{LIMIT_OPTION} must be a whole number of bytes >= 1, not {value!r}")
    return url, value


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
