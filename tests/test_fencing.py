"""One writer per run, at the engine level, across processes, on every shared backend.

Each test drives two (or three) child processes, each running a
:class:`statestore.engine.StateStore` on the same run (``tests/fault_helpers.py
engine``). The last process to start the run holds its writer token; the other one's
next call that would persist a savepoint raises ``StaleWriterError`` and stores
nothing, while the new owner goes on. The module functions of ``statestore.storage``
take no token and keep working. (The storage-level token checks are in the
conformance suite; these are the engine's, end to end.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fault_helpers import Child, backend_params, snapshot, store_url

from statestore import Savepoint
from statestore.testing.faults import ENTITIES, engine_savepoint, engine_state

RUN = "fenced-run"


@pytest.fixture(params=backend_params())
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return store_url(request.param, request, tmp_path)


def engine(url: str, writer: str) -> Child:
    return Child("engine", url, RUN, writer).ready()


def stale(answer: str, entity_id: str) -> bool:
    """Whether ``answer`` says ``entity_id``'s call was refused as a stale writer."""
    return answer.startswith(f"ERR {entity_id} StaleWriterError: ") and RUN in answer


def test_a_superseded_engine_stores_nothing_and_the_new_one_goes_on(url: str) -> None:
    with engine(url, "A") as a, engine(url, "B") as b:
        assert a.ask("start 0") == "OK initialized 0"
        assert a.ask("ack 1000") == "OK"
        assert a.ask("ack 2000") == "OK"
        assert b.ask("start 0") == "OK resumed 2000"  # B takes the run's writer token
        before = snapshot(url, RUN)
        assert before == [engine_savepoint("A", 1000), engine_savepoint("A", 2000)]
        # A's first two entities only fill savepoint 3000 in memory; the third completes
        # it, and that call, the one that would persist, is refused.
        assert stale(a.ask("ack 3000"), ENTITIES[-1])
        assert snapshot(url, RUN) == before
        # B goes on from where it resumed.
        assert b.ask("ack 3000") == "OK"
        assert b.ask("ack 4000") == "OK"
        # A stays fenced: every later call is refused, not only persisting ones.
        assert stale(a.ask("ack 5000"), ENTITIES[0])
        assert snapshot(url, RUN) == [
            engine_savepoint("A", 2000),
            engine_savepoint("B", 3000),
            engine_savepoint("B", 4000),
        ]


def test_load_run_state_takes_the_run_back_and_forth(url: str) -> None:
    with engine(url, "A") as a, engine(url, "B") as b:
        assert a.ask("init 0") == "OK initialized 0"
        assert a.ask("ack 1000") == "OK"
        assert b.ask("load") == "OK resumed 1000"
        assert stale(a.ask("ack 2000"), ENTITIES[-1])
        assert a.ask("load") == "OK resumed 1000"  # the last one taken wins: A again
        assert stale(b.ask("ack 2000"), ENTITIES[-1])
        assert a.ask("ack 2000") == "OK"
        assert b.ask("load") == "OK resumed 2000"
        assert b.ask("ack 3000") == "OK"
        assert stale(a.ask("ack 3000"), ENTITIES[-1])
        assert snapshot(url, RUN) == [
            engine_savepoint("A", 1000),
            engine_savepoint("A", 2000),
            engine_savepoint("B", 3000),
        ]


def test_of_two_engines_started_at_once_only_the_later_persists(url: str) -> None:
    # Both find the run without savepoints and initialize it: both take a token, and
    # only the later token may persist, whichever process saves first.
    with engine(url, "A") as a, engine(url, "B") as b:
        a.send("start 0")
        b.send("start 0")
        assert (a.line(), b.line()) == ("OK initialized 0", "OK initialized 0")
        a.send("ack 1000")
        b.send("ack 1000")
        answers = {"A": a.line(), "B": b.line()}
        winners = [writer for writer, answer in answers.items() if answer == "OK"]
        assert len(winners) == 1, answers
        loser = "B" if winners == ["A"] else "A"
        assert stale(answers[loser], ENTITIES[-1]), answers
        assert snapshot(url, RUN) == [engine_savepoint(winners[0], 1000)]


def test_the_module_functions_stay_unfenced(url: str) -> None:
    with engine(url, "A") as a, engine(url, "B") as b, engine(url, "C") as c:
        assert a.ask("start 0") == "OK initialized 0"
        assert a.ask("ack 1000") == "OK"
        assert b.ask("start 0") == "OK resumed 1000"
        # save_run_state takes no token: it stores, from a third process and from the
        # fenced one alike, for callers that manage ownership themselves.
        assert c.ask("plain 1500") == "OK"
        assert a.ask("plain 1700") == "OK"
        assert stale(a.ask("ack 2000"), ENTITIES[-1])  # A's engine is still fenced
        assert b.ask("ack 2000") == "OK"  # and B's token is still the current one
        # B's retention keeps the 3 newest: A's 1000 went when B persisted 2000.
        assert snapshot(url, RUN) == [
            Savepoint(1500, [(e, engine_state("C-plain", e, 1500)) for e in ENTITIES]),
            Savepoint(1700, [(e, engine_state("A-plain", e, 1700)) for e in ENTITIES]),
            engine_savepoint("B", 2000),
        ]
