"""Storage URLs: one parser for every backend, and one policy for their options.

An option may come from the URL's query (``sqlite:///a.db?timeout=5``, which is how the
command line sets it) or as a keyword (``open_storage(url, timeout=5)``). The policy,
the same for every backend and for the options the registry keeps for itself
(``max_savepoint_bytes``): an option given twice, twice in the query or once in each,
is a ``ConfigError``; neither place silently wins. Query values arrive as strings
(percent-decoded; ``+`` stays ``+``, as libpq reads it); keyword values as given.

Messages name a URL only through :func:`redact_url`, which hides every secret in it.

A backend calls :func:`split_store_url` for the parts of its URL and
:func:`take_options` for its options, naming the options it owns; parameters it does
not own (libpq's, for ``postgresql://``) stay in the URL verbatim.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Collection, Mapping
from typing import Any

from ..errors import ConfigError

__all__ = [
    "REDACTED_PARAMETERS",
    "SECRET_PARAMETERS",
    "redact_url",
    "split_store_url",
    "take_options",
]

# ``scheme://user:password@``, at the start or inside a message (after a blank or quote).
_PASSWORD = re.compile(
    r"(?P<head>(?:^|(?<=[\s'\"(]))[a-zA-Z][a-zA-Z0-9+.-]*://[^/@:\s]*:)(?P<password>[^/@]*)(?=@)"
)
#: The libpq parameters that hold a secret (a ``passfile`` path is not one).
SECRET_PARAMETERS = frozenset({"password", "sslpassword"})
#: Every query option whose value :func:`redact_url` hides: libpq's, and the S3
#: backend's credentials (``s3://bucket?secret_access_key=...&session_token=...``).
REDACTED_PARAMETERS = SECRET_PARAMETERS | {"secret_access_key", "session_token"}
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
    or not, as libpq decodes them), also as ``password=...`` in a key=value string, and
    the S3 backend's ``secret_access_key`` and ``session_token`` options.
    """
    url = _PASSWORD.sub(r"\g<head>***", url)
    url = _QUERY_PARAMETER.sub(_redact_parameter, url)
    return _KEYWORD_PARAMETER.sub(r"\g<head>***", url)


def _redact_parameter(match: re.Match[str]) -> str:
    """A ``name=value`` query parameter, its value hidden when it is a secret."""
    # Compared without case: hiding a value libpq would refuse anyway costs nothing.
    if urllib.parse.unquote(match.group("name")).lower() in REDACTED_PARAMETERS:
        return match.group("head") + "***"
    return match.group(0)


def split_store_url(url: str) -> urllib.parse.SplitResult:
    """``urlsplit``, with a malformed URL (say, a bad IPv6 host) as a ConfigError."""
    try:
        return urllib.parse.urlsplit(url)
    except ValueError:
        raise ConfigError(f"not a storage URL: {redact_url(url)!r}") from None


def take_options(
    url: str, keywords: Mapping[str, Any], names: Collection[str] | None = None
) -> tuple[str, dict[str, Any]]:
    """The URL without its options, and the options of its query and of ``keywords``.

    ``names`` are the query parameters that are options (``None``: every one); the
    others stay in the returned URL as they were written. Every query parameter must
    read ``name=value``, and no name may be given twice, in the query or in the query
    and ``keywords`` both.
    """
    split_store_url(url)  # a malformed URL is refused whatever options it has
    # Taken apart by hand, as urlsplit does (fragment first, then query), so that the
    # rest is the URL as written: urlunsplit would turn sqlite:///a.db into sqlite:/a.db.
    before_fragment, hash_sign, fragment = url.partition("#")
    base, _, query = before_fragment.partition("?")
    found: dict[str, Any] = {}
    seen: set[str] = set()
    passed_on: list[str] = []
    for item in filter(None, query.split("&")):
        raw_name, equals, raw_value = item.partition("=")
        name = urllib.parse.unquote(raw_name)
        if name in seen:
            raise _twice(url, name)
        seen.add(name)
        if names is not None and name not in names:
            passed_on.append(item)  # verbatim: its reader decodes it its own way
        elif not equals or not name:
            raise ConfigError(
                f"storage URL {redact_url(url)!r}: malformed query {item!r} "
                "(expected ?name=value&...)"
            )
        else:
            found[name] = urllib.parse.unquote(raw_value)
    for name, value in keywords.items():
        if name in found:
            raise _twice(url, name)
        found[name] = value
    kept = "&".join(passed_on)
    return base + ("?" + kept if kept else "") + hash_sign + fragment, found


def _twice(url: str, name: str) -> ConfigError:
    """The one error for an option given twice, wherever the two came from."""
    return ConfigError(
        f"storage URL {redact_url(url)!r}: option {name!r} is given twice "
        "(in the URL query, or in the query and as a keyword): give it once"
    )
