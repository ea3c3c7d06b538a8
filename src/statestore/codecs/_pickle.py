"""The pickle codec: an explicit opt-in, signed with HMAC-SHA256 when given a key.

Unpickling runs code chosen by the bytes, so a store that someone else can write to
must not be read with plain pickle. With a key, every blob carries an HMAC of its
pickle bytes, and a blob whose signature does not verify is refused before
``pickle.loads`` ever sees it.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle

from ..errors import EncodeError

__all__ = ["PickleCodec"]

_DIGEST = hashlib.sha256
_SIGNATURE_SIZE = _DIGEST().digest_size
_PROTOCOL = pickle.HIGHEST_PROTOCOL


class PickleCodec:
    """Pickle any picklable value; with a ``bytes`` key, sign each blob and verify it first."""

    def __init__(self, key: bytes | None = None, protocol: int = _PROTOCOL) -> None:
        if key is not None and (not isinstance(key, bytes) or not key):
            raise TypeError("PickleCodec key must be non-empty bytes (or None for unsigned)")
        self._key = key
        self._protocol = protocol
        # The name is stored with the data: a signed store is never read as unsigned.
        self.name = "pickle-hmac-sha256" if key is not None else "pickle"

    def __repr__(self) -> str:
        return f"PickleCodec(signed={self._key is not None})"  # never show the key

    def encode(self, value: object) -> bytes:
        try:
            data = pickle.dumps(value, protocol=self._protocol)
        except (
            Exception
        ) as exc:  # pickle raises many types: PicklingError, TypeError, AttributeError
            raise EncodeError(f"cannot pickle {type(value).__name__}: {exc}") from None
        if self._key is None:
            return data
        return hmac.new(self._key, data, _DIGEST).digest() + data

    def decode(self, data: bytes | memoryview) -> object:
        if self._key is None:
            return pickle.loads(data)
        signature, payload = data[:_SIGNATURE_SIZE], data[_SIGNATURE_SIZE:]
        expected = hmac.new(self._key, payload, _DIGEST).digest()
        if len(signature) != _SIGNATURE_SIZE or not hmac.compare_digest(signature, expected):
            raise ValueError("pickle blob signature does not verify; refusing to unpickle it")
        return pickle.loads(payload)
