"""The limits on what one savepoint holds, kept on every write path and every read.

A state encodes to at most ``MAX_STATE_BYTES`` (1 GiB) and a savepoint's states to at
most the storage's ``max_savepoint_bytes`` (2 GiB unless raised). Saving, saving
encoded bytes and importing refuse what is over before anything is written; reading a
store or an archive refuses what *declares* more before allocating it. The backend-wide
cases (crafted manifests, decompression bombs) are in the conformance kit; these are
the option itself, the encoded-bytes path, and archives.
"""

from __future__ import annotations

import hashlib
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zstandard
from cli_support import run_cli

from statestore import open_storage, ops
from statestore.codecs import SafeCodec
from statestore.errors import ConfigError, CorruptSavepointError, EncodeError
from statestore.ops import archive
from statestore.storage import Storage
from statestore.storage.layout import MAX_SAVEPOINT_BYTES, MAX_STATE_BYTES
from statestore.testing.worker import payload

GIB = 1 << 30


def _urls(tmp_path: Path) -> dict[str, str]:
    return {
        "memory": "memory://limits",
        "sqlite": f"sqlite:///{tmp_path}/store.db",
        "file": f"file://{tmp_path}/store",
    }


@pytest.fixture
def memory() -> Iterator[Storage]:
    with open_storage("memory://") as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 60_000, payload(60_000))
        yield storage


# ==================================================================== the option


@pytest.mark.parametrize("backend", ["memory", "sqlite", "file"])
def test_the_limit_is_an_option_of_every_url(tmp_path: Path, backend: str) -> None:
    url = _urls(tmp_path)[backend]
    with open_storage(url) as storage:
        assert storage.max_savepoint_bytes == MAX_SAVEPOINT_BYTES == 2 * GIB
    joiner = "&" if "?" in url else "?"
    with open_storage(f"{url}{joiner}max_savepoint_bytes=5000") as storage:
        assert storage.max_savepoint_bytes == 5000
        storage.init_storage("run")  # the backend got its URL without the option
        storage.save_savepoint("run", 1, [("a", 1)])
    with open_storage(url, max_savepoint_bytes=4 * GIB) as storage:
        assert storage.max_savepoint_bytes == 4 * GIB
        assert storage.get_latest_savepoint("run") == (1, [("a", 1)])


def test_the_limit_option_keeps_the_backends_own_options(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    with open_storage(f"{url}?timeout=7&max_savepoint_bytes=5000") as first:
        assert (first.max_savepoint_bytes, first.timeout) == (5000, 7)  # type: ignore[attr-defined]
    with open_storage(f"{url}?max_savepoint_bytes=6000&timeout=8") as second:
        assert (second.max_savepoint_bytes, second.timeout) == (6000, 8)  # type: ignore[attr-defined]


@pytest.mark.parametrize("bad", ["0", "-1", "x", "1.5", "", "1e9", "²"])
def test_a_bad_limit_in_the_url_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="max_savepoint_bytes must be a whole number"):
        open_storage(f"memory://?max_savepoint_bytes={bad}")


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, "5"])
def test_a_bad_limit_keyword_is_refused(bad: object) -> None:
    with pytest.raises(ConfigError, match="max_savepoint_bytes must be a whole number"):
        open_storage("memory://", max_savepoint_bytes=bad)


def test_a_limit_given_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="given twice"):
        open_storage("memory://?max_savepoint_bytes=5", max_savepoint_bytes=5)


def test_the_cli_reads_with_the_limit_of_its_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    with open_storage(url) as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 60_000, payload(60_000))
    low = run_cli("show", "run", "--url", f"{url}?max_savepoint_bytes=100")
    assert low.returncode == 3, low.stderr
    assert "max_savepoint_bytes=100" in low.stderr
    assert "a bug" not in low.stderr
    shown = run_cli("show", "run", "--url", f"{url}?max_savepoint_bytes=100000")
    assert shown.returncode == 0, shown.stderr


# ==================================================================== encoded states


def test_save_encoded_savepoint_refuses_a_state_over_the_limit(memory: Storage) -> None:
    over = bytes(MAX_STATE_BYTES + 16)  # 1 GiB + 16 B, as a caller could hand it over
    with pytest.raises(EncodeError, match=r"entity 'big'.*nothing was stored"):
        memory.save_encoded_savepoint("run", 60_000, [("big", over)])
    del over
    # The good savepoint at that timestamp is still there, whole.
    assert memory.get_savepoint("run", 60_000) == (60_000, payload(60_000))


# ==================================================================== archives


def _frame(body: object, *, declared: int | None = None) -> bytes:
    """One archive frame as the writer lays it out; ``declared`` overrides its length."""
    raw: bytes = msgpack.packb(body, use_bin_type=True)
    stored = zstandard.ZstdCompressor(write_content_size=True).compress(raw)
    length = len(raw) if declared is None else declared
    return archive._FRAME.pack(1, len(stored), length, hashlib.sha256(raw).digest()) + stored


def _header(run_id: str = "run") -> bytes:
    return (
        archive.MAGIC
        + bytes([archive.VERSION])
        + _frame({"kind": "header", "run_id": run_id, "exported_at": 0})
    )


def test_an_archive_frame_claiming_32_gib_is_corrupt_not_a_memory_error(tmp_path: Path) -> None:
    path = tmp_path / "claim.ssa"
    path.write_bytes(_header() + _frame({"kind": "end"}, declared=32 * GIB))
    assert len(path.read_bytes()) < 200  # the was 110 bytes
    with open_storage(f"sqlite:///{tmp_path}/store.db") as storage:
        with pytest.raises(CorruptSavepointError, match=r"declares 34359738368 bytes"):
            ops.import_run(storage, path)
        assert storage.list_runs() == []
    imported = run_cli("import", str(path), "--url", f"sqlite:///{tmp_path}/store.db")
    assert imported.returncode == 3, imported.stderr
    assert "max_savepoint_bytes" in imported.stderr
    assert "a bug" not in imported.stderr


def _bomb_archive(path: Path, states: int, state_size: int) -> None:
    """A savepoint frame whose states are ``states`` runs of zeros, compressed in a stream
    (a few KiB per GiB: what a hostile archive would hold)."""
    raw_size = state_size * states + 200
    stream = zstandard.ZstdCompressor(level=3, write_content_size=False).compressobj()
    ids = [f"e{i}" for i in range(states)]
    head = msgpack.packb(
        {"kind": "savepoint", "ts": 1, "codec": SafeCodec.name, "ids": ids}, use_bin_type=True
    )
    # Turn the 4-entry map into a 5-entry one and append "states": [bin32 * states].
    parts = [bytes([0x85]), head[1:], msgpack.packb("states"), bytes([0x90 + states])]
    chunk = bytes(1 << 22)
    body = [stream.compress(part) for part in parts]
    for _ in range(states):
        body.append(stream.compress(b"\xc6" + state_size.to_bytes(4, "big")))
        body.extend(stream.compress(chunk) for _ in range(state_size // len(chunk)))
    stored = b"".join(body) + stream.flush()
    frame = archive._FRAME.pack(1, len(stored), raw_size, bytes(32)) + stored
    path.write_bytes(_header() + frame)


def _capped(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_an_archive_bomb_is_refused_before_it_inflates(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.ssa"
    _bomb_archive(bomb, states=3, state_size=GIB)  # 3 GiB of states
    assert bomb.stat().st_size < 512 << 10
    good = tmp_path / "good.ssa"
    with open_storage(f"sqlite:///{tmp_path}/source.db") as source:
        source.init_storage("run")
        source.save_savepoint("run", 60_000, payload(60_000))
        ops.export_run(source, "run", good)
    for path, expected in ((good, 0), (bomb, 3)):
        command = [sys.executable, "-m", "statestore", "import", str(path)]
        command += ["--url", f"sqlite:///{tmp_path}/{path.stem}.db"]
        child = subprocess.run(
            command, capture_output=True, text=True, preexec_fn=lambda: _capped(GIB), check=False
        )
        assert child.returncode == expected, child.stderr
    assert "over what max_savepoint_bytes=2147483648 allows" in child.stderr


def test_import_refuses_a_savepoint_over_the_destination_limit(tmp_path: Path) -> None:
    path = tmp_path / "run.ssa"
    with open_storage(f"sqlite:///{tmp_path}/source.db") as source:
        source.init_storage("run")
        for ts in (60_000, 120_000):
            source.save_savepoint("run", ts, [("a", "x" * 3000)])
        ops.export_run(source, "run", path)
    destination = f"sqlite:///{tmp_path}/destination.db"
    refused = run_cli("import", str(path), "--url", f"{destination}?max_savepoint_bytes=2000")
    assert refused.returncode == 3, refused.stderr
    assert "savepoint 60000: its states hold" in refused.stderr
    assert "max_savepoint_bytes=2000" in refused.stderr
    with open_storage(destination) as storage:
        assert storage.list_runs() == []  # checked whole before anything was written
    assert run_cli("import", str(path), "--url", destination).returncode == 0


def test_import_refuses_a_state_over_the_state_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real 1 GiB + 16 B state would take gigabytes to build and check; the same check
    # at a lowered limit shows it runs before anything is written.
    path = tmp_path / "run.ssa"
    with open_storage(f"sqlite:///{tmp_path}/source.db") as source:
        source.init_storage("run")
        source.save_savepoint("run", 60_000, [("a", "x" * 100)])
        source.save_savepoint("run", 120_000, [("a", "x" * 3000)])
        ops.export_run(source, "run", path)
    monkeypatch.setattr(archive, "MAX_STATE_BYTES", 2000)
    with open_storage(f"sqlite:///{tmp_path}/destination.db") as storage:
        with pytest.raises(CorruptSavepointError, match="savepoint 120000: a state is over 2000"):
            ops.import_run(storage, path)
        assert storage.list_runs() == []
