"""Connection settings of the PostgreSQL backend: URL options, checked once, secrets kept apart.

A ``postgresql://`` URL carries libpq's own parameters (``sslmode``, ``application_name``,
``connect_timeout``, ...) and statestore's: ``schema``, ``pool_min_size``,
``pool_max_size`` and ``pool_timeout``. This module takes statestore's options out, checks
every value, and keeps the password only inside the libpq connection string; what the
backend shows to people (:attr:`Settings.target`) never contains it.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ...errors import ConfigError
from ..url import SECRET_PARAMETERS, redact_url, split_store_url, take_options

__all__ = [
    "DEFAULT_SCHEMA",
    "OPTION_NAMES",
    "Settings",
    "scrub",
    "settings",
    "settings_from_url",
    "split_url",
]

DEFAULT_SCHEMA = "statestore"
#: PostgreSQL silently truncates longer identifiers (NAMEDATALEN - 1 bytes).
MAX_IDENTIFIER_BYTES = 63
#: Options statestore reads from the URL query or from keyword arguments.
OPTION_NAMES = ("schema", "pool_min_size", "pool_max_size", "pool_timeout", "connect_timeout")

DEFAULT_POOL_MIN_SIZE = 1
DEFAULT_POOL_MAX_SIZE = 4
DEFAULT_POOL_TIMEOUT = 30.0
#: Seconds; libpq's own default is to wait forever for an unreachable host.
DEFAULT_CONNECT_TIMEOUT = 10


@dataclass(frozen=True)
class Settings:
    """Everything the backend needs to connect; ``repr`` leaves the secrets out."""

    conninfo: str = field(repr=False)  # the libpq connection string, password included
    schema: str
    pool_min_size: int
    pool_max_size: int
    pool_timeout: float
    target: str  # ``postgresql://user@host:port/dbname``: for messages, logs and repr
    secrets: tuple[str, ...] = field(repr=False)  # strings no message may contain


def settings(
    conninfo: str,
    *,
    schema: str = DEFAULT_SCHEMA,
    pool_min_size: int = DEFAULT_POOL_MIN_SIZE,
    pool_max_size: int = DEFAULT_POOL_MAX_SIZE,
    pool_timeout: float = DEFAULT_POOL_TIMEOUT,
    connect_timeout: int | None = None,
) -> Settings:
    """Check a libpq connection string (URL or ``key=value`` form) and statestore's options."""
    if not isinstance(conninfo, str):
        raise ConfigError(f"PostgreSQL connection string must be a str, not {type(conninfo)}")
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.Error as exc:
        # The string itself is not shown: in key=value form it may hold a password.
        guesses = [urllib.parse.unquote(raw) for raw in _raw_url_secrets(conninfo)]
        shown = scrub(" ".join(str(exc).split()), _secret_forms(conninfo, guesses))
        raise ConfigError(f"bad PostgreSQL connection string: {shown}") from None
    passwords = [str(params.get(name) or "") for name in sorted(SECRET_PARAMETERS)]
    _check_pool(pool_min_size, pool_max_size, pool_timeout)
    extra: dict[str, Any] = {}
    if connect_timeout is not None:
        extra["connect_timeout"] = _positive_int("connect_timeout", connect_timeout)
    elif "connect_timeout" not in params:
        extra["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT
    if "application_name" not in params:
        extra["application_name"] = "statestore"  # what a DBA sees in pg_stat_activity
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    user = str(params.get("user") or "")
    target = (
        f"postgresql://{user + '@' if user else ''}{host}"
        f"{':' + str(params['port']) if params.get('port') else ''}"
        f"/{params.get('dbname') or ''}"
    )
    return Settings(
        conninfo=make_conninfo(conninfo, **extra),
        schema=check_schema(schema),
        pool_min_size=pool_min_size,
        pool_max_size=pool_max_size,
        pool_timeout=float(pool_timeout),
        target=redact_url(target),
        secrets=_secret_forms(conninfo, passwords),
    )


def settings_from_url(url: str, options: dict[str, Any]) -> Settings:
    """The settings a ``postgresql://`` URL and keyword ``options`` describe."""
    conninfo, ours = split_url(url, options)
    return settings(conninfo, **ours)


def split_url(url: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The URL without statestore's options, and those options (each given once)."""
    parts = split_store_url(url)
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise ConfigError(f"not a PostgreSQL URL: {redact_url(url)!r}")
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise ConfigError(
            f"unknown PostgreSQL storage options {unknown}; known: {list(OPTION_NAMES)} "
            "(libpq parameters go in the URL query)"
        )
    rest, given = take_options(url, options, names=OPTION_NAMES)
    # A name is in one place only: from the query it is text, to convert.
    ours = {
        name: value if name in options else _from_text(name, value) for name, value in given.items()
    }
    # The fragment means nothing to libpq: dropped.
    return urllib.parse.urlunsplit(split_store_url(rest)._replace(fragment="")), ours


def check_schema(schema: Any) -> str:
    """A schema name PostgreSQL stores exactly as given (it is always quoted)."""
    if not isinstance(schema, str) or not schema or "\x00" in schema:
        raise ConfigError(f"schema must be a non-empty str without NUL, not {schema!r}")
    if len(schema.encode("utf-8", "surrogatepass")) > MAX_IDENTIFIER_BYTES:
        raise ConfigError(
            f"schema name {schema!r} is longer than PostgreSQL's {MAX_IDENTIFIER_BYTES} bytes"
        )
    if "%" in schema:
        # psycopg reads % in a statement as a placeholder, and the schema name is part of
        # every statement: refused here rather than failing at the first query.
        raise ConfigError(f"schema name {schema!r}: '%' is not allowed in a schema name")
    if schema.startswith("pg_"):
        raise ConfigError(f"schema name {schema!r}: the pg_ prefix is reserved by PostgreSQL")
    return schema


def _from_text(name: str, value: str) -> Any:
    """A URL option's value, converted to what the keyword argument takes."""
    if name == "schema":
        return value
    try:
        return float(value) if name == "pool_timeout" else int(value)
    except ValueError:
        raise ConfigError(f"option {name}={value!r} is not a number") from None


def _positive_int(name: str, value: Any) -> int:
    if type(value) is not int or value < 1:
        raise ConfigError(f"{name} must be an int >= 1, not {value!r}")
    return value


def _check_pool(min_size: Any, max_size: Any, timeout: Any) -> None:
    if type(min_size) is not int or min_size < 0:
        raise ConfigError(f"pool_min_size must be an int >= 0, not {min_size!r}")
    if type(max_size) is not int or max_size < max(min_size, 1):
        raise ConfigError(
            f"pool_max_size must be an int >= 1 and >= pool_min_size ({min_size}), not {max_size!r}"
        )
    if type(timeout) not in (int, float) or not timeout > 0:
        raise ConfigError(f"pool_timeout must be a number of seconds > 0, not {timeout!r}")


def _raw_url_secrets(conninfo: str) -> list[str]:
    """The secrets of a URL as written (percent-escaped): the userinfo password, and the
    values of its ``password`` and ``sslpassword`` query parameters."""
    found = []
    head = conninfo.partition("@")[0] if "@" in conninfo else ""
    credentials = head.split("://", 1)[1] if "://" in head else ""
    if ":" in credentials:
        found.append(credentials.split(":", 1)[1])
    if "://" in conninfo and "?" in conninfo:
        for item in conninfo.split("?", 1)[1].split("&"):
            name, _, value = item.partition("=")
            if urllib.parse.unquote(name).lower() in SECRET_PARAMETERS:
                found.append(value)
    return found


def _secret_forms(conninfo: str, secrets: list[str]) -> tuple[str, ...]:
    """Each secret as it may show up in text: decoded, escaped, and as written in the URL."""
    forms = set(_raw_url_secrets(conninfo))
    for secret in secrets:
        forms.update((secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote(secret)))
    forms.discard("")
    return tuple(sorted(forms, key=len, reverse=True))  # longest first: no partial leftovers


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every form of every secret replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return redact_url(text)
