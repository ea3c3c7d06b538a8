"""Argument checks of the storage contract, run before anything is written.

Public, because every layer checks its arguments with these same rules: the storage
base, the engine and the operations behind the command line. Each check returns the
value it accepted or raises :class:`~statestore.errors.InvalidArgumentError` saying why.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Any

from ..errors import InvalidArgumentError

MAX_RUN_ID_LENGTH = 512
MAX_TIMESTAMP = 2**63 - 1


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def run_id(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArgumentError(f"run_id must be a non-empty str, not {_describe(value)}")
    if len(value) > MAX_RUN_ID_LENGTH:
        raise InvalidArgumentError(
            f"run_id must be at most {MAX_RUN_ID_LENGTH} characters, not {len(value)}"
        )
    if "\x00" in value:
        raise InvalidArgumentError(f"run_id must not contain NUL: {_describe(value)}")
    _check_utf8(value, "run_id")
    return value


def timestamp(value: Any) -> int:
    if type(value) is not int:  # bool is an int subclass and is refused on purpose
        raise InvalidArgumentError(f"timestamp must be an int (epoch ms), not {_describe(value)}")
    if not 0 <= value <= MAX_TIMESTAMP:
        raise InvalidArgumentError(f"timestamp must be in 0 .. 2**63-1, not {value}")
    return value


def writer_token(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_TIMESTAMP:
        raise InvalidArgumentError(f"writer_token must be an int >= 0, not {_describe(value)}")
    return value


def save_target(run: Any, ts: Any, token: Any) -> str:
    """Check the scalar arguments of a save, before any state is encoded."""
    checked = run_id(run)
    timestamp(ts)
    if token is not None:
        writer_token(token)
    return checked


def keep_n(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise InvalidArgumentError(f"keep_n must be an int >= 0, not {_describe(value)}")
    return value


def entities(value: Any, run: str) -> tuple[list[str], list[Any]]:
    """Split ``[(entity_id, state), ...]`` into ids and states, refusing anything else."""
    if isinstance(value, (str, bytes, dict)) or not isinstance(value, Iterable):
        raise InvalidArgumentError(
            f"run {run!r}: entities must be a list of (entity_id, state) pairs, "
            f"not {_describe(value)}"
        )
    items = list(value)
    # The common case, checked in bulk (C loops, not Python ones): pairs with str ids,
    # no duplicates, valid Unicode. Anything else goes to the item-by-item check below,
    # which names the first bad entity.
    if set(map(type, items)) <= {tuple} and set(map(len, items)) <= {2}:
        ids = list(map(_first, items))
        if set(map(type, ids)) <= {str} and len(set(ids)) == len(ids):
            try:
                "".join(ids).encode("utf-8")
            except UnicodeEncodeError:
                pass
            else:
                return ids, list(map(_second, items))
    return _entities_one_by_one(items, run)


_first, _second = operator.itemgetter(0), operator.itemgetter(1)


def _entities_one_by_one(items: list[Any], run: str) -> tuple[list[str], list[Any]]:
    ids: list[str] = []
    states: list[Any] = []
    seen: set[str] = set()
    for position, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise InvalidArgumentError(
                f"run {run!r}: entity #{position} must be an (entity_id, state) pair, "
                f"not {_describe(item)}"
            )
        entity_id, state = item
        if not isinstance(entity_id, str):
            raise InvalidArgumentError(
                f"run {run!r}: entity #{position} id must be a str, not {_describe(entity_id)}"
            )
        _check_utf8(entity_id, f"run {run!r}: entity id")
        if entity_id in seen:
            raise InvalidArgumentError(f"run {run!r}: duplicate entity id {entity_id!r}")
        seen.add(entity_id)
        ids.append(entity_id)
        states.append(state)
    return ids, states


def _check_utf8(value: str, what: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError(
            f"{what} is not valid Unicode text: {_describe(value)}"
        ) from None


def removed_ids(value: Any, run: str, changed: list[str]) -> list[str]:
    """The entity ids a change set removes: an iterable of str, none also changed."""
    if isinstance(value, (str, bytes, dict)) or not isinstance(value, Iterable):
        raise InvalidArgumentError(
            f"run {run!r}: removed must be a list of entity ids, not {_describe(value)}"
        )
    ids = list(value)
    for entity_id in ids:
        if type(entity_id) is not str:
            raise InvalidArgumentError(
                f"run {run!r}: removed entity id must be a str, not {_describe(entity_id)}"
            )
    both = set(ids).intersection(changed)
    if both:
        raise InvalidArgumentError(
            f"run {run!r}: entity {sorted(both)[0]!r} is both changed and removed"
        )
    return ids


def state_version(value: Any) -> int:
    """A state version: an int in 1 .. 2**31-1 (bool is not an int here)."""
    if type(value) is not int or not 1 <= value <= 2**31 - 1:
        raise InvalidArgumentError(
            f"state_version must be an int in 1 .. 2**31-1, not {_describe(value)}"
        )
    return value
