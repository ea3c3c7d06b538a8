"""Moving runs: export, import, copy (real console script) and the archive format (library)."""

from __future__ import annotations

import json
import os
import pty
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import (
    RUNS,
    assert_one_line_error,
    damage_pack,
    fill,
    run_cli,
    snapshot,
    store_url,
)

import statestore
from statestore import ops
from statestore.errors import (
    ConfigError,
    CorruptSavepointError,
    InvalidArgumentError,
    NoSavepointError,
)
from statestore.ops._stored import read_stored


def _stored_bytes(url: str) -> dict[str, list[tuple[int, str, list[tuple[str, bytes]]]]]:
    """Every savepoint's encoded states as stored: what an exact copy must reproduce."""
    with statestore.open_storage(url) as storage:
        return {
            run_id: [
                (s.timestamp, s.codec, s.entities)
                for s in (
                    read_stored(storage, run_id, row.timestamp)
                    for row in storage.list_savepoints(run_id)
                )
            ]
            for run_id in storage.list_runs()
        }


# ------------------------------------------------------------------ export and import


@pytest.mark.parametrize(("source", "target"), [("sqlite", "file"), ("file", "sqlite")])
def test_export_then_import_round_trips_a_run_exactly(
    tmp_path: Path, source: str, target: str
) -> None:
    src, dst = store_url(tmp_path, source, "src"), store_url(tmp_path, target, "dst")
    saved = fill(src)
    archive = tmp_path / "fleet.ssa"
    result = run_cli("export", "sensor-fleet", str(archive), "--url", src, "--json")
    assert result.returncode == 0, result.stderr
    exported = json.loads(result.stdout)
    assert exported["savepoints"] == 4
    assert exported["file_bytes"] == archive.stat().st_size

    result = run_cli("import", str(archive), "--url", dst, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "run_id": "sensor-fleet",
        "savepoints": 4,
        "state_bytes": exported["state_bytes"],
    }
    assert snapshot(dst) == {"sensor-fleet": saved["sensor-fleet"]}
    assert _stored_bytes(dst)["sensor-fleet"] == _stored_bytes(src)["sensor-fleet"]
    assert run_cli("verify", "--url", dst).returncode == 0


def test_export_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    url = store_url(tmp_path, "sqlite")
    fill(url)
    archive = tmp_path / "out.ssa"
    archive.write_bytes(b"precious")
    line = assert_one_line_error(run_cli("export", "sensor-fleet", str(archive), "--url", url), 1)
    assert "--force" in line
    assert archive.read_bytes() == b"precious"
    forced = run_cli("export", "sensor-fleet", str(archive), "--url", url, "--force")
    assert forced.returncode == 0, forced.stderr
    assert archive.read_bytes().startswith(ops.archive.MAGIC)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_export_of_a_damaged_run_fails_and_leaves_no_file(tmp_path: Path) -> None:
    url = store_url(tmp_path, "file")
    fill(url)
    damage_pack(url, "sensor-fleet", 180_000)
    archive = tmp_path / "out.ssa"
    line = assert_one_line_error(run_cli("export", "sensor-fleet", str(archive), "--url", url), 3)
    assert "180000" in line
    assert not archive.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_import_refuses_an_existing_run_unless_replace(tmp_path: Path) -> None:
    src, dst = store_url(tmp_path, "sqlite", "src"), store_url(tmp_path, "sqlite", "dst")
    saved = fill(src)
    fill(dst, {"sensor-fleet": [30_000, 999_960_000]})  # other savepoints under the same id
    before = snapshot(dst)
    archive = tmp_path / "fleet.ssa"
    assert run_cli("export", "sensor-fleet", str(archive), "--url", src).returncode == 0
    line = assert_one_line_error(run_cli("import", str(archive), "--url", dst), 1)
    assert "already exists" in line
    assert "--replace" in line
    assert snapshot(dst) == before
    replaced = run_cli("import", str(archive), "--url", dst, "--replace")
    assert replaced.returncode == 0, replaced.stderr
    assert snapshot(dst) == {"sensor-fleet": saved["sensor-fleet"]}  # exactly the archive's run


@pytest.mark.parametrize(
    ("damage", "code"),
    [
        (lambda data: data[: len(data) - 20], 3),  # truncated
        (lambda data: data[:-1] + bytes([data[-1] ^ 1]), 3),  # the end frame
        (lambda data: data[:400] + bytes([data[400] ^ 1]) + data[401:], 3),  # a savepoint
        (lambda data: data + b"\x00", 3),  # trailing bytes
        (lambda data: b"PK\x03\x04" + data[4:], 1),  # not an archive at all
    ],
    ids=["truncated", "end-frame", "savepoint-frame", "trailing", "foreign"],
)
def test_import_of_a_damaged_archive_writes_nothing(
    tmp_path: Path, damage: object, code: int
) -> None:
    src, dst = store_url(tmp_path, "sqlite", "src"), store_url(tmp_path, "file", "dst")
    fill(src)
    archive = tmp_path / "fleet.ssa"
    assert run_cli("export", "sensor-fleet", str(archive), "--url", src).returncode == 0
    assert callable(damage)
    archive.write_bytes(damage(archive.read_bytes()))
    assert_one_line_error(run_cli("import", str(archive), "--url", dst), code)
    assert snapshot(dst) == {}


def test_import_of_a_missing_file(tmp_path: Path) -> None:
    url = store_url(tmp_path, "sqlite")
    line = assert_one_line_error(run_cli("import", str(tmp_path / "nope.ssa"), "--url", url), 1)
    assert "nope.ssa" in line


# ------------------------------------------------------------------ copy


def test_copy_sqlite_to_file_and_back_is_exact(tmp_path: Path) -> None:
    first = store_url(tmp_path, "sqlite", "first")
    files = store_url(tmp_path, "file", "files")
    back = store_url(tmp_path, "sqlite", "back")
    saved = fill(first)
    for src, dst in ((first, files), (files, back)):
        result = run_cli("copy", src, dst, "--json")
        assert result.returncode == 0, result.stderr
        copied = json.loads(result.stdout)
        assert {c["run_id"]: c["savepoints"] for c in copied} == {
            run_id: len(ts) for run_id, ts in RUNS.items()
        }
        assert run_cli("verify", "--url", dst).returncode == 0
    assert snapshot(back) == saved
    assert _stored_bytes(back) == _stored_bytes(first)


def test_copy_one_run_and_refuse_an_existing_one(tmp_path: Path) -> None:
    src, dst = store_url(tmp_path, "file", "src"), store_url(tmp_path, "sqlite", "dst")
    saved = fill(src)
    result = run_cli("copy", src, dst, "--run", "billing/2024")
    assert result.returncode == 0, result.stderr
    assert "copied run 'billing/2024': 2 savepoint(s)" in result.stdout
    assert snapshot(dst) == {"billing/2024": saved["billing/2024"]}

    line = assert_one_line_error(run_cli("copy", src, dst), 1)  # billing/2024 is there
    assert "billing/2024" in line
    assert snapshot(dst) == {"billing/2024": saved["billing/2024"]}  # nothing else written
    assert run_cli("copy", src, dst, "--replace").returncode == 0
    assert snapshot(dst) == saved


def test_copy_failures(tmp_path: Path) -> None:
    src, dst = store_url(tmp_path, "sqlite", "src"), store_url(tmp_path, "sqlite", "dst")
    fill(src)
    assert_one_line_error(run_cli("copy", src, dst, "--run", "ghost"), 4)
    assert_one_line_error(run_cli("copy", src, src), 1)
    assert_one_line_error(run_cli("copy", store_url(tmp_path, "file", "none"), dst), 1)
    assert_one_line_error(run_cli("copy", src, "nosuch://x"), 1)
    damage_pack(src, "sensor-fleet", 60_000)
    line = assert_one_line_error(run_cli("copy", src, dst), 3)
    assert "60000" in line
    assert "sensor-fleet" not in snapshot(dst)  # no half-copied run is left behind


def test_copy_to_postgres_and_back(tmp_path: Path, postgres_store_url: str) -> None:
    src, back = store_url(tmp_path, "sqlite", "src"), store_url(tmp_path, "file", "back")
    saved = fill(src)
    to_pg = run_cli("copy", src, postgres_store_url)
    assert to_pg.returncode == 0, to_pg.stderr
    assert "copied" in to_pg.stdout
    assert run_cli("verify", "--url", postgres_store_url).returncode == 0
    runs = json.loads(run_cli("runs", "--url", postgres_store_url, "--json").stdout)
    assert sorted(r["run_id"] for r in runs) == sorted(RUNS)
    assert run_cli("copy", postgres_store_url, back).returncode == 0
    assert snapshot(back) == saved
    assert _stored_bytes(back) == _stored_bytes(src)


def test_copy_draws_a_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    src, dst = store_url(tmp_path, "sqlite", "src"), store_url(tmp_path, "file", "dst")
    fill(src)
    controller, terminal = pty.openpty()
    try:
        env = {k: v for k, v in os.environ.items() if k != "STATESTORE_URL"}
        env.update(COLUMNS="100", TERM="xterm")
        result = subprocess.run(
            [sys.executable, "-m", "statestore", "copy", src, dst],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=terminal,
            env=env,
            timeout=60,
            check=False,
        )
        os.close(terminal)
        drawn = _read_all(controller)
    finally:
        os.close(controller)
    assert result.returncode == 0
    assert "copying" in drawn
    assert "6/6" in drawn
    assert b"copying" not in result.stdout  # the bar stays off stdout


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


# ------------------------------------------------------------------ the library underneath


def test_library_copy_refuses_a_codec_the_destination_does_not_use(tmp_path: Path) -> None:
    pickle = statestore.codecs.PickleCodec(key=b"secret")
    with (
        statestore.open_storage(store_url(tmp_path, "sqlite", "a"), codec=pickle) as src,
        statestore.open_storage(store_url(tmp_path, "sqlite", "b")) as dst,
    ):
        src.init_storage("r")
        src.save_savepoint("r", 60_000, [("e", {1, 2})])
        with pytest.raises(ConfigError, match="pickle-hmac-sha256"):
            ops.copy_runs(src, dst)
        assert dst.list_runs() == []
    with (
        statestore.open_storage(store_url(tmp_path, "sqlite", "a"), codec=pickle) as src,
        statestore.open_storage(store_url(tmp_path, "file", "c"), codec=pickle) as dst,
    ):
        ops.copy_runs(src, dst)  # with the codec (and key) that wrote it, it moves
        assert dst.get_latest_savepoint("r").entities == [("e", {1, 2})]


def test_library_progress_reports_every_savepoint(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    with (
        statestore.open_storage(store_url(tmp_path, "sqlite")) as src,
        statestore.open_storage("memory://") as dst,
    ):
        for run_id, timestamps in RUNS.items():
            src.init_storage(run_id)
            for ts in timestamps:
                src.save_savepoint(run_id, ts, [("e", ts)])
        ops.copy_runs(src, dst, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 6) for i in range(7)]


def test_every_single_byte_flip_of_an_archive_is_caught(tmp_path: Path) -> None:
    with statestore.open_storage("memory://") as storage:
        storage.init_storage("r")
        storage.save_savepoint("r", 60_000, [("a", {"n": 1}), ("b", "x" * 50)])
        storage.save_savepoint("r", 120_000, [("a", {"n": 2}), ("b", "x" * 50)])
        ops.export_run(storage, "r", tmp_path / "r.ssa")
    data = (tmp_path / "r.ssa").read_bytes()
    damaged = tmp_path / "damaged.ssa"
    for position in range(len(data)):
        for bit in (0x01, 0x80):
            damaged.write_bytes(
                data[:position] + bytes([data[position] ^ bit]) + data[position + 1 :]
            )
            with (
                statestore.open_storage("memory://") as target,
                pytest.raises((CorruptSavepointError, InvalidArgumentError)),
            ):
                ops.import_run(target, damaged)
            assert target.list_runs() == []


def test_archive_refuses_out_of_order_and_unknown_runs(tmp_path: Path) -> None:
    with statestore.open_storage("memory://") as storage:
        with pytest.raises(NoSavepointError):
            ops.export_run(storage, "ghost", tmp_path / "g.ssa")
        assert not (tmp_path / "g.ssa").exists()
        storage.init_storage("empty")
        result = ops.export_run(storage, "empty", tmp_path / "e.ssa")
        assert result.savepoints == 0
    with statestore.open_storage("memory://") as target:
        assert ops.import_run(target, tmp_path / "e.ssa").run_id == "empty"
        assert target.is_initialized("empty")
        assert target.list_savepoints("empty") == []


# ------------------------------------------------------------------ what export may replace


def _not_regular_targets(tmp_path: Path) -> dict[str, Path]:
    """Names that are not regular files: a FIFO, a directory, symlinks (to a file, to a
    device, dangling). Nothing outside tmp_path is changed by making them."""
    targets = {"fifo": tmp_path / "fifo", "directory": tmp_path / "dir"}
    os.mkfifo(targets["fifo"])
    targets["directory"].mkdir()
    (targets["directory"] / "inside").write_bytes(b"kept")
    (tmp_path / "precious").write_bytes(b"precious")
    for name, to in [
        ("link-to-file", tmp_path / "precious"),
        ("link-to-device", Path("/dev/null")),
        ("dangling-link", tmp_path / "nowhere"),
    ]:
        targets[name] = tmp_path / name
        targets[name].symlink_to(to)
    return targets


def test_export_replaces_only_a_regular_file_even_with_force(tmp_path: Path) -> None:
    url = store_url(tmp_path, "sqlite")
    fill(url)
    before = {p.name: os.lstat(p) for p in tmp_path.iterdir()}
    for kind, target in _not_regular_targets(tmp_path).items():
        line = assert_one_line_error(
            run_cli("export", "sensor-fleet", str(target), "--url", url, "--force"), 1
        )
        assert "not a regular file" in line, (kind, line)
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode)
    assert (tmp_path / "dir" / "inside").read_bytes() == b"kept"
    assert (tmp_path / "precious").read_bytes() == b"precious"
    assert not (tmp_path / "nowhere").exists()
    for name in ("link-to-file", "link-to-device", "dangling-link"):
        assert (tmp_path / name).is_symlink()
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left
    assert {p.name for p in tmp_path.iterdir()} - set(before) == {
        "fifo",
        "dir",
        "precious",
        "link-to-file",
        "link-to-device",
        "dangling-link",
    }


def test_export_never_replaces_a_device(tmp_path: Path) -> None:
    """A character device (a /dev/null made inside tmp_path, so that a regression can
    only ever replace a node of its own): refused even with --force, and stays a device.
    Run as root, the old code renamed the archive over the device node."""
    url = store_url(tmp_path, "sqlite")
    fill(url)
    device = tmp_path / "null"
    try:
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("cannot make a device node here (not root)")
    line = assert_one_line_error(
        run_cli("export", "sensor-fleet", str(device), "--url", url, "--force"), 1
    )
    assert "character device" in line
    assert stat.S_ISCHR(os.lstat(device).st_mode)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_export_to_standard_output(tmp_path: Path) -> None:
    src, dst = store_url(tmp_path, "sqlite", "src"), store_url(tmp_path, "file", "dst")
    saved = fill(src)
    archive = tmp_path / "piped.ssa"
    with archive.open("wb") as stdout:
        result = subprocess.run(
            [sys.executable, "-m", "statestore", "export", "sensor-fleet", "-", "--url", src],
            stdout=stdout,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            cwd=tmp_path,  # where a file named '-' would appear
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert "exported run 'sensor-fleet': 4 savepoint(s)" in result.stderr
    assert not (tmp_path / "-").exists()
    assert run_cli("import", str(archive), "--url", dst).returncode == 0
    assert snapshot(dst) == {"sensor-fleet": saved["sensor-fleet"]}
    json_to_stdout = run_cli("export", "sensor-fleet", "-", "--url", src, "--json", cwd=tmp_path)
    assert_one_line_error(json_to_stdout, 2)
