"""State versions: the upgrade steps a store is given, checked, and run on load.

Every stored state records the ``state_version`` of the code that wrote it. A store at
version N loads a state written at version v < N by passing it through
``upgrades[v]``, ``upgrades[v + 1]``, ..., ``upgrades[N - 1]``, each
``fn(entity_id, state) -> state``. A state newer than the code cannot be read back
correctly by it: that is a :class:`~statestore.errors.ConfigError` (deploy the newer code).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ConfigError, InvalidArgumentError

__all__ = ["Upgrade", "Versions", "check_upgrades"]

#: One upgrade step: the state of ``entity_id`` at version v, returned at version v + 1.
Upgrade = Callable[[str, Any], Any]


def check_upgrades(state_version: Any, upgrades: Any) -> tuple[int, dict[int, Upgrade]]:
    """``(state_version, upgrades)`` checked; what is wrong is refused, naming it.

    Malformed arguments are :class:`~statestore.errors.InvalidArgumentError`; a set of
    steps that cannot be run in order (a gap between the steps given, or a step at or
    past ``state_version``) is :class:`~statestore.errors.ConfigError` naming the step.
    """
    if type(state_version) is not int or state_version < 1:
        raise InvalidArgumentError(f"state_version must be an int >= 1, not {state_version!r}")
    if upgrades is None:
        return state_version, {}
    if not isinstance(upgrades, Mapping):
        raise InvalidArgumentError(
            f"upgrades must be a dict of version -> fn(entity_id, state), not {upgrades!r}"
        )
    steps: dict[int, Upgrade] = {}
    for version, step in upgrades.items():
        if type(version) is not int or version < 1:
            raise InvalidArgumentError(f"upgrades: a version must be an int >= 1, not {version!r}")
        if not callable(step):
            raise InvalidArgumentError(
                f"upgrades[{version}] must be a function (entity_id, state) -> state, not {step!r}"
            )
        if version >= state_version:
            raise ConfigError(
                f"upgrades[{version}] upgrades version {version} to {version + 1}, past "
                f"state_version={state_version}; raise state_version to {version + 1} or "
                "drop the step"
            )
        steps[version] = step
    if steps:
        missing = sorted(set(range(min(steps), state_version)) - set(steps))
        if missing:
            raise ConfigError(_missing(missing[0], state_version))
    return state_version, steps


class Versions:
    """A store's ``state_version`` and upgrade steps, checked (see :func:`check_upgrades`)."""

    def __init__(self, run_id: str, state_version: Any, upgrades: Any) -> None:
        self.run_id = run_id
        self.state_version, self.upgrades = check_upgrades(state_version, upgrades)

    def upgrade(
        self, timestamp: int, entities: list[tuple[str, Any]], versions: list[int]
    ) -> list[tuple[str, Any]]:
        """The savepoint's states, each upgraded from its stored version to ours."""
        current = self.state_version
        if versions.count(current) == len(versions):
            return entities  # the usual case: all current, nothing to do
        where = f"run {self.run_id!r}: savepoint {timestamp}"
        newest = max(versions)
        if newest > current:
            entity_id = entities[versions.index(newest)][0]
            raise ConfigError(
                f"{where}: entity {entity_id!r} was written with state version {newest}, "
                f"newer than this code's state_version={current}; run the code that wrote "
                "it (or newer)"
            )
        missing = [v for v in range(min(versions), current) if v not in self.upgrades]
        if missing:
            raise ConfigError(f"{where}: {_missing(missing[0], current)}")
        return [
            (entity_id, self._upgraded(where, entity_id, state, version))
            for (entity_id, state), version in zip(entities, versions, strict=True)
        ]

    def _upgraded(self, where: str, entity_id: str, state: Any, version: int) -> Any:
        for step in range(version, self.state_version):
            try:
                state = self.upgrades[step](entity_id, state)
            except Exception as exc:  # the user's code: any failure, named and chained
                raise ConfigError(
                    f"{where}: upgrades[{step}] failed on entity {entity_id!r}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        return state


def _missing(version: int, state_version: int) -> str:
    return (
        f"no upgrade step from state version {version} to {version + 1} (upgrades[{version}]); "
        f"states written at version {version} cannot reach state_version={state_version}"
    )
