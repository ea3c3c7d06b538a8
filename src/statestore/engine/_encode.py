"""Encoding states as the engine saves them: in bulk, marked as the codec's own bytes."""

from __future__ import annotations

from typing import Any

from ..errors import EncodeError
from ..storage import MAX_STATE_BYTES, Storage
from ..storage.layout import EncodedState
from ._entity import Entity

__all__ = ["encode_all", "encode_one"]


def encode_one(storage: Storage, run_id: str, entity_id: str, state: Any) -> bytes:
    """One state encoded as ``storage.encode_state`` does it, without checking the run id
    again on every acknowledgement."""
    try:
        data = storage.codec.encode(state)
    except EncodeError:
        data = b""
    if not data or len(data) > MAX_STATE_BYTES:  # no codec encodes a value to nothing
        return storage.encode_state(run_id, entity_id, state)  # the error that names it
    return EncodedState(data)


def encode_all(storage: Storage, run_id: str, entities: list[Entity]) -> list[EncodedState]:
    """Every entity's state encoded, in bulk; nothing changes on a refusal."""
    codec = storage.codec
    encode_many = getattr(codec, "encode_many", None)  # the codec's bulk path, if any
    states = [entity.state for entity in entities]
    try:
        plain = encode_many(states) if encode_many else list(map(codec.encode, states))
    except EncodeError:
        plain = []
    if len(plain) != len(entities) or max(map(len, plain), default=0) > MAX_STATE_BYTES:
        # The slow path, only to raise the error that names the entity.
        for entity in entities:
            storage.encode_state(run_id, entity.id, entity.state)
    # Marked as the codec's own bytes (what encode_state returns), so the storage need
    # not decode them again to check them.
    return list(map(EncodedState, plain))
