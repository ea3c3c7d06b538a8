"""The collector pause nests, is shared by threads, and leaves a caller's setting alone."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from statestore import collector, open_storage
from statestore.codecs import SafeCodec


@pytest.fixture(autouse=True)
def _collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_a_pause_switches_the_collector_off_and_back_on() -> None:
    with collector.paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_pauses_nest_and_only_the_outermost_resumes() -> None:
    with collector.paused():
        with collector.paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner end must not switch it back on
    assert gc.isenabled()


def test_a_collector_the_caller_disabled_stays_disabled() -> None:
    gc.disable()
    with collector.paused():
        pass
    assert not gc.isenabled()


def test_a_pause_ends_on_an_exception() -> None:
    with pytest.raises(ValueError, match="boom"), collector.paused():
        raise ValueError("boom")
    assert gc.isenabled()


def test_overlapping_pauses_in_threads_resume_once_the_last_ends() -> None:
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[bool] = []

    def first() -> None:
        with collector.paused():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second() -> None:
        first_in.wait(10)
        with collector.paused():
            second_in.set()
            first_out.wait(10)
            seen.append(gc.isenabled())  # the first thread's pause ended: still paused

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert seen == [False]
    assert gc.isenabled()


def test_a_load_leaves_the_collector_as_it_found_it() -> None:
    with open_storage("memory://") as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 1, [(f"e{i}", {"n": i}) for i in range(100)])
        assert storage.get_latest_savepoint("run") is not None
        assert gc.isenabled()
        gc.disable()
        assert storage.get_latest_savepoint("run") is not None
        assert not gc.isenabled()


class _Watching:
    """The safe codec, recording whether the collector was on at each decode."""

    name = "safe"

    def __init__(self) -> None:
        self.inner = SafeCodec()
        self.collector_on: list[bool] = []

    def encode(self, value: object) -> bytes:
        return self.inner.encode(value)

    def decode(self, data: bytes | memoryview) -> object:
        self.collector_on.append(gc.isenabled())
        return self.inner.decode(data)


def test_the_states_of_a_load_decode_with_the_collector_paused() -> None:
    codec = _Watching()
    with open_storage("memory://", codec=codec) as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 1, [(f"e{i}", {"n": i}) for i in range(50)])
        assert storage.get_latest_savepoint("run") == (1, [(f"e{i}", {"n": i}) for i in range(50)])
    assert codec.collector_on == [False] * 50
    assert gc.isenabled()
