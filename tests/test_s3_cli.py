"""The S3 backend from outside: its URL options, every operator command, no secret shown."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

if importlib.util.find_spec("obstore") is None and os.environ.get("STATESTORE_REQUIRE_S3") != "1":
    pytest.skip("obstore is not installed: pip install -e '.[s3]'", allow_module_level=True)

from cli_support import RUNS, fill, run_cli, store_url
from s3_server import S3Server

import statestore
from statestore.errors import BackendError, ConfigError
from statestore.storage import S3Storage
from statestore.storage._s3._options import settings_from_url


def _assert_hidden(result: subprocess.CompletedProcess[str], secret: str) -> None:
    assert secret not in result.stdout, (result.args, result.stdout)
    assert secret not in result.stderr, (result.args, result.stderr)


def test_every_command_works_and_none_prints_the_secret(
    s3_server: S3Server, s3_store_url: str, tmp_path: Path
) -> None:
    url, secret = s3_store_url, s3_server.secret_key
    written = fill(url)
    run = "sensor-fleet"
    archive = str(tmp_path / "run.ssa")
    commands: list[tuple[tuple[str, ...], int]] = [
        (("runs", "--url", url), 0),
        (("savepoints", run, "--url", url), 0),
        (("show", run, "--url", url), 0),
        (("stats", run, "--url", url), 0),
        (("verify", "--url", url), 0),
        (("verify", run, "--url", url, "--json"), 0),
        (("prune", run, "--keep", "3", "--dry-run", "--url", url), 0),
        (("export", run, archive, "--url", url), 0),
        (("delete", run, "--yes", "--url", url), 0),
        (("import", archive, "--url", url), 0),
        (("compact", "--url", url), 0),
        (("savepoints", "no-such-run", "--url", url), 4),
    ]
    for args, code in commands:
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == code, (args, result.stdout, result.stderr)
        _assert_hidden(result, secret)
    with statestore.open_storage(url) as storage:
        assert sorted(storage.list_runs()) == sorted(RUNS)
        for run_id, savepoints in written.items():
            for savepoint in savepoints:
                assert storage.get_savepoint(run_id, savepoint.timestamp) == savepoint
    pruned = run_cli("prune", "--all", "--keep", "1", "--url", url, cwd=tmp_path)
    assert pruned.returncode == 0, pruned.stderr
    with statestore.open_storage(url) as storage:
        assert [len(storage.list_savepoints(run_id)) for run_id in sorted(RUNS)] == [1, 1]


def test_copy_from_sqlite_to_s3_and_back_keeps_every_savepoint(
    s3_store_url: str, tmp_path: Path
) -> None:
    source = store_url(tmp_path, "sqlite", "source")
    back = store_url(tmp_path, "sqlite", "back")
    written = fill(source)
    for args in (("copy", source, s3_store_url), ("copy", s3_store_url, back)):
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
    for url in (s3_store_url, back):
        with statestore.open_storage(url) as storage:
            assert sorted(storage.list_runs()) == sorted(RUNS)
            for run_id, savepoints in written.items():
                got = [storage.get_savepoint(run_id, sp.timestamp) for sp in savepoints]
                assert got == savepoints, url
    listed = json.loads(run_cli("runs", "--url", back, "--json").stdout)
    assert sorted(row["run_id"] for row in listed) == sorted(RUNS)


def test_an_unreachable_endpoint_is_a_clear_error_without_the_secret(
    s3_server: S3Server,
) -> None:
    url = s3_server.url("x", endpoint="http://127.0.0.1:1", retry_timeout="0.5")
    with pytest.raises(BackendError) as caught:
        statestore.open_storage(url)
    message = str(caught.value)
    assert "127.0.0.1:1" in message
    assert s3_server.secret_key not in message
    assert "\n" not in message


def test_options_come_from_the_environment_and_the_query_overrides_it() -> None:
    environ = {
        "AWS_ENDPOINT_URL": "https://env.example:9000",
        "AWS_REGION": "eu-west-3",
        "AWS_ACCESS_KEY_ID": "AKENV",
        "AWS_SECRET_ACCESS_KEY": "env-secret",
        "AWS_SESSION_TOKEN": "env-token",
    }
    settings = settings_from_url("s3://bucket/a/b/", {}, environ)
    assert (settings.bucket, settings.prefix) == ("bucket", "a/b")
    assert settings.config["endpoint"] == "https://env.example:9000"
    assert settings.config["region"] == "eu-west-3"
    assert settings.config["secret_access_key"] == "env-secret"  # noqa: S105 - a test value
    assert settings.config["session_token"] == "env-token"  # noqa: S105 - a test value
    assert settings.client_options["allow_http"] is False
    assert settings.config["virtual_hosted_style_request"] is False
    settings = settings_from_url(
        "s3://bucket?endpoint=http%3A%2F%2F127.0.0.1%3A8333&region=r1&virtual_hosted_style=true",
        {"access_key_id": "AKKW"},
        environ,
    )
    assert settings.config["endpoint"] == "http://127.0.0.1:8333"
    assert settings.config["region"] == "r1"
    assert settings.config["access_key_id"] == "AKKW"
    assert settings.config["virtual_hosted_style_request"] is True
    assert settings.client_options["allow_http"] is True  # an http:// endpoint asks for it
    assert "env-secret" not in repr(settings)
    assert settings.scrub("key env-secret, escaped env-secret") == "key ***, escaped ***"


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("s3://", {}, "expected s3://BUCKET"),
        ("s3://bad bucket/x", {}, "expected s3://BUCKET"),
        ("s3://key:s3cr3t@bucket", {}, "credentials do not go before the bucket"),
        ("s3://b/a//c", {}, "names separated by single"),
        ("s3://b/a/../c", {}, "names separated by single"),
        ("s3://b?colour=red", {}, "unknown S3 storage options"),
        ("s3://b", {"colour": "red"}, "unknown S3 storage options"),
        ("s3://b?region=a", {"region": "b"}, "given twice"),
        ("s3://b?endpoint=ftp://h", {}, "must be an http:// or https:// URL"),
        ("s3://b?endpoint=http://h&allow_http=false", {}, "allow_http is false"),
        ("s3://b?allow_http=maybe", {}, "must be true or false"),
        ("s3://b?timeout=0", {}, "timeout must be a number of seconds"),
        ("s3://b?conditional_writes=never", {}, "conditional_writes must be one of"),
    ],
)
def test_bad_urls_and_options_are_refused_clearly(
    url: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        statestore.open_storage(url, **options)
    assert "s3cr3t" not in str(caught.value)


def test_repr_and_errors_name_the_store_not_the_secret(s3_server: S3Server) -> None:
    with statestore.open_storage(s3_server.url("repr")) as storage:
        assert isinstance(storage, S3Storage)
        assert storage.capabilities.multi_host
        assert s3_server.secret_key not in repr(storage)
        assert "s3://statestore-tests/repr" in repr(storage)
        assert storage.disk_usage() is None


def test_credentials_that_may_only_read_open_a_read_only_handle(s3_server: S3Server) -> None:
    url = s3_server.url("read-only")
    with statestore.open_storage(url) as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 1, [("a", 1)])
    reader = s3_server.url(
        "read-only", access_key_id=s3_server.reader_key, secret_access_key=s3_server.reader_secret
    )
    with statestore.open_storage(reader) as storage:
        assert storage.capabilities.read_only
        assert storage.get_latest_savepoint("run") == (1, [("a", 1)])
        assert storage.list_runs() == ["run"]
        with pytest.raises(BackendError, match="PermissionDenied") as caught:
            storage.save_savepoint("run", 2, [("a", 2)])
        assert s3_server.reader_secret not in str(caught.value)
        assert [row.timestamp for row in storage.list_savepoints("run")] == [1]
    result = run_cli("verify", "--url", reader)
    assert result.returncode == 0, result.stderr
    _assert_hidden(result, s3_server.reader_secret)
