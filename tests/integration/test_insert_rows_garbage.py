"""Inserted rows are freed by reference counting, not left to the cyclic garbage collector.

clickhouse-connect's insert context refers to itself; whatever list it holds lives until a
cyclic collection, which then walks every row of a flush with the GIL held. Checked over
HTTP, the production path (chdb's client builds the same insert context).
"""

from __future__ import annotations

import gc
import secrets
import weakref
from collections.abc import Iterator

import pytest

from bastionary.storage.client import Client, insert_rows, open_client


class Tag(str):
    """A string that can be watched with a weak reference."""


@pytest.fixture
def client(clickhouse_url: str) -> Iterator[Client]:
    database = f"garbage_{secrets.token_hex(4)}"
    opened = open_client(clickhouse_url, database, create=True)
    opened.command("CREATE TABLE tags (n UInt32, tag String) ENGINE = MergeTree ORDER BY n")
    yield opened
    opened.command(f"DROP DATABASE IF EXISTS `{database}`")
    opened.close()


def _rows_outlive_their_owner(client: Client, insert) -> bool:  # type: ignore[no-untyped-def]
    rows = [(n, Tag(f"tag-{n}")) for n in range(3)]
    watched = weakref.ref(rows[1][1])
    gc.disable()
    try:
        insert(client, rows)
        del rows
        return watched() is not None
    finally:
        gc.enable()


def test_rows_are_freed_as_soon_as_their_owner_drops_them(client: Client) -> None:
    assert not _rows_outlive_their_owner(client, lambda c, rows: insert_rows(c, "tags", rows, ["n", "tag"]))
    assert client.query("SELECT groupArray(tag) FROM (SELECT tag FROM tags ORDER BY n)").result_rows == [
        (["tag-0", "tag-1", "tag-2"],)
    ]


def test_the_plain_insert_keeps_them_until_a_cyclic_collection(client: Client) -> None:
    # Why insert_rows exists: if this ever fails, clickhouse-connect no longer needs the copy.
    assert _rows_outlive_their_owner(client, lambda c, rows: c.insert("tags", rows, column_names=["n", "tag"]))
    gc.collect()
