"""One URL parser, one policy: an option given twice is refused, for every backend alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from statestore import ConfigError, open_storage
from statestore.storage import missing_store
from statestore.storage.url import take_options


def test_options_come_out_of_the_query_and_the_rest_stays_as_written() -> None:
    rest, found = take_options(
        "postgresql://u@h/db?sslmode=require&schema=s&x=%2B#frag", {"pool_max_size": 2}, {"schema"}
    )
    assert rest == "postgresql://u@h/db?sslmode=require&x=%2B#frag"
    assert found == {"schema": "s", "pool_max_size": 2}
    assert take_options("sqlite:///a.db?timeout=1%2B", {}) == ("sqlite:///a.db", {"timeout": "1+"})
    assert take_options("memory://", {}) == ("memory://", {})


@pytest.mark.parametrize(
    ("url", "keywords"),
    [
        ("sqlite:///{tmp}/a.db?timeout=1", {"timeout": 2}),
        ("sqlite:///{tmp}/a.db?timeout=1&timeout=2", {}),
        ("memory://?max_savepoint_bytes=5", {"max_savepoint_bytes": 5}),
        ("sqlite:///{tmp}/a.db?max_savepoint_bytes=5&max_savepoint_bytes=5", {}),
        ("postgresql://h/db?schema=a", {"schema": "b"}),
        ("postgresql://h/db?pool_max_size=2&pool_max_size=3", {}),
        ("postgresql://h/db?sslmode=require&sslmode=disable", {}),
    ],
)
def test_an_option_given_twice_is_refused_with_one_message(
    tmp_path: Path, url: str, keywords: dict[str, Any]
) -> None:
    with pytest.raises(ConfigError, match=r"option '\w+' is given twice") as refused:
        open_storage(url.format(tmp=tmp_path), **keywords)
    assert "give it once" in str(refused.value)
    assert list(tmp_path.iterdir()) == []  # refused before anything was created


@pytest.mark.parametrize("query", ["?timeout", "?=1", "?timeout=1&&=2"])
def test_a_malformed_query_is_refused(tmp_path: Path, query: str) -> None:
    with pytest.raises(ConfigError, match="malformed query"):
        open_storage(f"sqlite:///{tmp_path}/a.db{query}")


def test_the_message_hides_secrets() -> None:
    with pytest.raises(ConfigError, match="given twice") as refused:
        open_storage("postgresql://me:hunter2@h/db?schema=a&password=s3cret", schema="b")
    assert "hunter2" not in str(refused.value)
    assert "s3cret" not in str(refused.value)


def test_missing_store_names_a_local_store_that_is_not_there(tmp_path: Path) -> None:
    assert missing_store(f"sqlite:///{tmp_path}/no.db") == f"{tmp_path}/no.db"
    assert missing_store(f"sqlite:///{tmp_path}/no.db?timeout=2") == f"{tmp_path}/no.db"
    assert missing_store(f"file://{tmp_path}/nothing") == f"{tmp_path}/nothing"
    with open_storage(f"sqlite:///{tmp_path}/yes.db") as storage:
        storage.init_storage("run")
    assert missing_store(f"sqlite:///{tmp_path}/yes.db?max_savepoint_bytes=9") is None
    assert missing_store(f"file://{tmp_path}") is None
    # Not local, or not well formed: nothing to say here; opening explains a bad URL.
    for url in ["memory://x", "postgresql://h/db", "sqlite://host/a.db", "nonsense", "x://"]:
        assert missing_store(url) is None, url
