"""Codecs turn one entity state into bytes and back; framing is not their concern.

A codec is any object with a stable ``name`` (stored with every savepoint), an
``encode(value) -> bytes`` that raises :class:`~statestore.errors.EncodeError` for a
value it cannot write, and a ``decode(data) -> value`` that raises on bad bytes (``data``
is ``bytes`` or a ``memoryview`` into a stored pack, read without copying).
Checksums, compression and headers are added around the codec's bytes by
:mod:`statestore.storage.layout`, once, for every codec.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ._pickle import PickleCodec
from ._safe import SafeCodec

__all__ = ["Codec", "PickleCodec", "SafeCodec"]


@runtime_checkable
class Codec(Protocol):
    """What the storage layer needs of a codec."""

    name: str

    def encode(self, value: object) -> bytes: ...

    def decode(self, data: bytes | memoryview) -> object: ...
