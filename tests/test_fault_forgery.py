"""Forged pickle blobs in a store read with a signing key: refused, never unpickled.

Someone who can write to the store (not knowing the key) plants a savepoint whose
states unpickle into ``open(MARKER, "w")``: had ``pickle.loads`` ever seen them, the
marker file would exist. Each forgery goes through a backend's real storage (the
attacker uses the library with a codec of the same name, so the manifest names the
signed codec and the checksums are right: only the signature can stop it). Reading it
with the key raises an error of statestore, the marker never appears, and the engine
resumes from the newest honest savepoint.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
from fault_helpers import backend_params, store_url

from statestore import ConfigError, CorruptSavepointError, StateStore, Storage, open_storage
from statestore.codecs import PickleCodec
from statestore.testing.faults import ENTITIES, SCHEDULE

RUN = "signed-run"
KEY = b"the key the job was configured with"
HONEST = {"counts": [1, 2, 3]}


class Exploit:
    """Unpickles into ``open(marker, "w")``: creating the marker proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (self.marker, "w")


@pytest.fixture(params=backend_params())
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return store_url(request.param, request, tmp_path)


def test_the_exploit_would_run_if_unpickled(tmp_path: Path) -> None:
    """The control: the planted bytes really are dangerous."""
    marker = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(Exploit(marker)))
    assert marker.exists()


# Each forgery: the codec the attacker opens the store with, and the blob of a state,
# made from the exploit and the honest blob of a state (signature and all).
Forgery = Callable[[Exploit, bytes], tuple[PickleCodec, bytes]]
ATTACKER = PickleCodec(key=b"attacker key")
FORGERIES: dict[str, Forgery] = {
    # Signed, but with a key of the attacker's own.
    "signed with another key": lambda evil, honest: (ATTACKER, ATTACKER.encode(evil)),
    # A genuine signature (of an honest state) in front of the attacker's pickle.
    "honest signature, swapped payload": lambda evil, honest: (
        ATTACKER,
        honest[:32] + pickle.dumps(evil),
    ),
    # Plain pickle bytes with no signature in front.
    "no signature": lambda evil, honest: (ATTACKER, pickle.dumps(evil)),
    # A blob shorter than a signature.
    "truncated signature": lambda evil, honest: (ATTACKER, honest[:16]),
    # Signature bits flipped: the payload is honest, but nothing unsigned is unpickled.
    "flipped signature bit": lambda evil, honest: (
        ATTACKER,
        bytes([honest[0] ^ 1]) + honest[1:],
    ),
}


def _plant(url: str, marker: Path, forgery: str, victim: Storage) -> None:
    """Savepoint 2000 of the run, every state forged, written through the library."""
    honest = victim.encode_state(RUN, ENTITIES[0], HONEST)
    # Pickling the exploit only records the call; it does not run it.
    codec, blob = FORGERIES[forgery](Exploit(marker), honest)
    with open_storage(url, codec=codec) as attacker:
        attacker.save_encoded_savepoint(RUN, 2000, [(e, blob) for e in ENTITIES])


def _honest_run(victim: Storage) -> None:
    store = StateStore(RUN, SCHEDULE, storage=victim)
    entities = store.init_run_state(0, [(e, HONEST) for e in ENTITIES])
    for entity in entities:
        entity.ack_processed_time(1000)
    assert [row.timestamp for row in victim.list_savepoints(RUN)] == [1000]


@pytest.mark.parametrize("forgery", FORGERIES)
def test_a_forged_blob_is_refused_and_never_unpickled(
    url: str, forgery: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "marker"
    with open_storage(url, codec=PickleCodec(key=KEY)) as victim:
        _honest_run(victim)
        _plant(url, marker, forgery, victim)
        reads: list[Callable[[], object]] = [
            lambda: victim.get_latest_savepoint(RUN),
            lambda: victim.get_savepoint(RUN, 2000),
        ]
        for read in reads:
            with pytest.raises(CorruptSavepointError, match="2000") as refused:
                read()
            assert "signature does not verify" in str(refused.value)
        assert not marker.exists()
        # The engine skips the forged savepoint and resumes from the honest one.
        caplog.set_level(logging.WARNING, logger="statestore")
        store = StateStore(RUN, SCHEDULE, storage=victim)
        resumed, timestamp, entities = store.start(0, [(e, None) for e in ENTITIES])
        assert (resumed, timestamp) == (True, 1000)
        assert [(e.id, e.state) for e in entities] == [(e, HONEST) for e in ENTITIES]
        assert "skipped corrupt savepoint 2000" in caplog.text
    assert not marker.exists()


def test_an_unsigned_pickle_savepoint_is_refused_by_a_signed_store(
    url: str, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    with open_storage(url, codec=PickleCodec(key=KEY)) as victim:
        _honest_run(victim)
        with open_storage(url, codec=PickleCodec()) as attacker:  # no key at all
            attacker.save_savepoint(RUN, 2000, [(e, Exploit(marker)) for e in ENTITIES])
        with pytest.raises(ConfigError, match="pickle"):
            victim.get_latest_savepoint(RUN)
        with open_storage(url) as safe, pytest.raises(ConfigError):  # the default codec
            safe.get_savepoint(RUN, 2000)
    assert not marker.exists()
