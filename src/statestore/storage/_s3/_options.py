"""Settings of the S3 backend: the URL, the ``AWS_*`` environment and query options.

``s3://BUCKET[/PREFIX]`` names a bucket and a key prefix. Everything else comes from
the standard AWS environment variables, each overridable by an option (in the URL query,
which is how the command line sets it, or as a keyword of ``open_storage``):

=====================  ==========================================  ============================
option                 environment                                 meaning
=====================  ==========================================  ============================
``endpoint``           ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``  a non-AWS server (MinIO, R2,
                                                                   SeaweedFS, Ceph)
``region``             ``AWS_REGION``, ``AWS_DEFAULT_REGION``     the bucket's region
``access_key_id``      ``AWS_ACCESS_KEY_ID``                       credentials
``secret_access_key``  ``AWS_SECRET_ACCESS_KEY``                   (a secret: never shown)
``session_token``      ``AWS_SESSION_TOKEN``                       (a secret: never shown)
``allow_http``         ``AWS_ALLOW_HTTP``                          plain HTTP; implied by an
                                                                   ``http://`` endpoint
``virtual_hosted_style``  ``AWS_VIRTUAL_HOSTED_STYLE_REQUEST``     ``BUCKET.host`` instead of
                                                                   ``host/BUCKET`` (path style,
                                                                   the default)
``timeout``                                                        seconds per request (30)
``retry_timeout``                                                  seconds to keep retrying a
                                                                   failed request (30)
``conditional_writes``                                             ``require`` (default) or
                                                                   ``warn``: see the check at
                                                                   open in ``_storage.py``
=====================  ==========================================  ============================

The secrets live only in :attr:`Settings.config` (left out of ``repr``); every message
the backend shows passes through :meth:`Settings.scrub`.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from ...errors import ConfigError
from ..url import redact_url, split_store_url, take_options

__all__ = ["OPTION_NAMES", "SECRET_OPTIONS", "Settings", "settings_from_url"]

#: Options whose value is a secret: hidden by :func:`statestore.storage.redact_url` too.
SECRET_OPTIONS = frozenset({"secret_access_key", "session_token"})
#: Every option the backend reads, from the URL query or as a keyword.
OPTION_NAMES = (
    "endpoint",
    "region",
    "access_key_id",
    "secret_access_key",
    "session_token",
    "allow_http",
    "virtual_hosted_style",
    "timeout",
    "retry_timeout",
    "conditional_writes",
)
#: Where an option's default comes from, first found wins.
_ENVIRONMENT = {
    "endpoint": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    "region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
    "access_key_id": ("AWS_ACCESS_KEY_ID",),
    "secret_access_key": ("AWS_SECRET_ACCESS_KEY",),
    "session_token": ("AWS_SESSION_TOKEN",),
    "allow_http": ("AWS_ALLOW_HTTP",),
    "virtual_hosted_style": ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST",),
}
CONDITIONAL_WRITES = ("require", "warn")
DEFAULT_TIMEOUT = 30.0
DEFAULT_REGION = "us-east-1"
# S3's rules for new bucket names, loosened to what other servers accept (R2, MinIO:
# underscores and capitals in old buckets); anything that could change the URL is refused.
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Settings:
    """Where the store lives and how to reach it; ``repr`` shows no secret."""

    bucket: str
    prefix: str  # the key prefix inside the bucket, without slashes at either end
    endpoint: str | None  # None: AWS itself
    conditional_writes: str
    #: obstore's ``S3Store`` config (credentials included), client and retry options.
    config: dict[str, Any] = field(repr=False)
    client_options: dict[str, Any] = field(repr=False)
    retry_config: dict[str, Any] = field(repr=False)
    secrets: tuple[str, ...] = field(repr=False)  # strings no message may contain

    @property
    def target(self) -> str:
        """``s3://bucket/prefix at endpoint``: how messages name the store."""
        where = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"{where} at {redact_url(self.endpoint)}" if self.endpoint else where

    def scrub(self, text: str) -> str:
        """``text`` with every secret (in every form a message may quote it) replaced."""
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return redact_url(text)


def settings_from_url(
    url: str, options: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> Settings:
    """The settings an ``s3://`` URL, keyword ``options`` and the environment describe."""
    environ = os.environ if environ is None else environ
    parts = split_store_url(url)
    if parts.scheme.lower() != "s3":
        raise ConfigError(f"not an S3 URL: {redact_url(url)!r}")
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise ConfigError(f"unknown S3 storage options {unknown}; known: {list(OPTION_NAMES)}")
    rest, given = take_options(url, options)
    unknown = sorted(set(given) - set(OPTION_NAMES))
    if unknown:
        raise ConfigError(
            f"unknown S3 storage options {unknown} in {redact_url(url)!r}; "
            f"known: {list(OPTION_NAMES)}"
        )
    bucket, prefix = _location(rest)
    values: dict[str, Any] = {}
    for name in OPTION_NAMES:
        if name in given:
            values[name] = given[name]
            continue
        for variable in _ENVIRONMENT.get(name, ()):
            if environ.get(variable):
                values[name] = environ[variable]
                break
    for name, value in values.items():
        if not isinstance(value, str | bool | int | float):
            raise ConfigError(f"S3 option {name} must be a str, not {type(value).__name__}")
    endpoint = _endpoint(values.get("endpoint"))
    allow_http = _flag(values, "allow_http", default=False)
    if endpoint is not None and endpoint.startswith("http://"):
        if "allow_http" in values and not allow_http:
            raise ConfigError(
                f"S3 endpoint {redact_url(endpoint)!r} is plain HTTP but allow_http is false"
            )
        allow_http = True  # an http:// endpoint is the user's explicit choice
    mode = str(values.get("conditional_writes", "require"))
    if mode not in CONDITIONAL_WRITES:
        raise ConfigError(
            f"S3 option conditional_writes must be one of {list(CONDITIONAL_WRITES)}, not {mode!r}"
        )
    config: dict[str, Any] = {
        "region": str(values.get("region") or DEFAULT_REGION),
        "virtual_hosted_style_request": _flag(values, "virtual_hosted_style", default=False),
    }
    if endpoint is not None:
        config["endpoint"] = endpoint
    for name in ("access_key_id", "secret_access_key", "session_token"):
        if values.get(name):
            config[name] = str(values[name])
    timeout = _seconds("timeout", values.get("timeout", DEFAULT_TIMEOUT))
    retry_timeout = _seconds("retry_timeout", values.get("retry_timeout", DEFAULT_TIMEOUT))
    return Settings(
        bucket=bucket,
        prefix=prefix,
        endpoint=endpoint,
        conditional_writes=mode,
        config=config,
        client_options={"allow_http": allow_http, "timeout": timedelta(seconds=timeout)},
        # Exponential back-off capped at 2 s, so a restarted server is used again within
        # seconds; retry_timeout, not a count, ends it (obstore's default of 3 minutes
        # would hide an unreachable server that long).
        retry_config={
            "max_retries": 1000,
            "retry_timeout": timedelta(seconds=retry_timeout),
            "backoff": {
                "init_backoff": timedelta(milliseconds=100),
                "max_backoff": timedelta(seconds=2),
                "base": 2,
            },
        },
        secrets=_secret_forms([str(values[name]) for name in SECRET_OPTIONS if values.get(name)]),
    )


def _location(url: str) -> tuple[str, str]:
    """The bucket and the key prefix of ``s3://BUCKET[/PREFIX]``."""
    parts = split_store_url(url)
    if "@" in parts.netloc:
        raise ConfigError(
            f"S3 URL {redact_url(url)!r}: credentials do not go before the bucket; "
            "use the AWS_* environment variables or the access_key_id and "
            "secret_access_key options"
        )
    if parts.fragment:
        raise ConfigError(f"S3 URL {redact_url(url)!r}: a fragment (#...) means nothing here")
    bucket = urllib.parse.unquote(parts.netloc)
    if not _BUCKET.fullmatch(bucket):
        raise ConfigError(
            f"S3 URL {redact_url(url)!r}: expected s3://BUCKET[/PREFIX] with a bucket name "
            "of letters, digits, '.', '-' and '_'"
        )
    prefix = urllib.parse.unquote(parts.path).strip("/")
    segments = prefix.split("/") if prefix else []
    if any(segment in ("", ".", "..") or "\0" in segment for segment in segments):
        raise ConfigError(
            f"S3 URL {redact_url(url)!r}: the key prefix must be names separated by single "
            "'/', none of them '.' or '..'"
        )
    return bucket, prefix


def _endpoint(value: Any) -> str | None:
    if value is None or value == "":
        return None
    endpoint = str(value).rstrip("/")
    parts = urllib.parse.urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"S3 endpoint {redact_url(endpoint)!r} must be an http:// or https:// URL"
        )
    if parts.username or parts.password:
        raise ConfigError(
            f"S3 endpoint {redact_url(endpoint)!r}: give credentials as options, not in the URL"
        )
    return endpoint


def _flag(values: Mapping[str, Any], name: str, *, default: bool) -> bool:
    value = values.get(name, default)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"S3 option {name} must be true or false, not {value!r}")


def _seconds(name: str, value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if isinstance(value, bool) or not 0 < seconds < 86400:
        raise ConfigError(f"S3 option {name} must be a number of seconds > 0, not {value!r}")
    return seconds


def _secret_forms(secrets: list[str]) -> tuple[str, ...]:
    """Each secret as a message may quote it: as is and percent-escaped."""
    forms: set[str] = set()
    for secret in secrets:
        forms.update((secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote(secret)))
    forms.discard("")
    return tuple(sorted(forms, key=len, reverse=True))  # longest first: no partial leftovers
