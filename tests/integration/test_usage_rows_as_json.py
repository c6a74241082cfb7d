"""A flush's rows go to ClickHouse as JSON lines; what is stored must be what the Native
insert stores, value for value, for any row the pipeline can build.

Over HTTP (the production path). Each example inserts the same rows both ways, through
:class:`ClickHouseUsageStore` into the real tables and through clickhouse-connect's Native
insert into copies of them, and reads both back.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import lz4.frame
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastionary.metering.ports import EventRow, RollupRow
from bastionary.storage.client import Client, insert_rows, open_client
from bastionary.storage.usage import _ROWS_AS_JSON, FLUSH_INSERT_SETTINGS, ClickHouseUsageStore

pytestmark = [pytest.mark.integration]

# None: naive datetimes, which both inserts read in the column zone (UTC).
ZONES = st.sampled_from([None, UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-11))])
# Within the range the parser admits (1970 .. 2105 UTC), whatever the offset.
TIMES = st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2105, 12, 30), timezones=ZONES)
MINUTES = TIMES.map(lambda t: t.replace(second=0, microsecond=0))  # windows and ingest minutes are floored
BROKER_TIMES = TIMES.map(lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000))  # Kafka time: ms
# Decimal(38, 9): values at scale as meters read them and sums add them, and the spellings
# Decimal gives them (0E-9, 1E-9, an integer zero for COUNT rows).
DECIMALS = st.one_of(
    st.decimals(min_value=-(10**29) + 1, max_value=10**29 - 1, places=9, allow_nan=False, allow_infinity=False),
    st.sampled_from([Decimal(0), Decimal("0E-9"), Decimal("-0E-9"), Decimal("1E-9"), Decimal("-1.23E-7")]),
)
TEXT = st.text(max_size=40)  # any code point a decoded JSON string can hold (no lone surrogates)


@st.composite
def event_rows(draw: st.DrawFn) -> list[EventRow]:
    count = draw(st.integers(1, 12))
    return [
        EventRow(
            f"{n}-{draw(TEXT)}",  # distinct sort keys: no merge collapses rows in one table only
            draw(TEXT),
            draw(TEXT),
            draw(TEXT),
            draw(TIMES),
            draw(TEXT),
            draw(TEXT),
            draw(BROKER_TIMES),
            draw(TEXT),
            draw(st.integers(0, 2**64 - 1)),
            draw(st.integers(0, 2**32 - 1)),
            draw(st.integers(0, 2**64 - 1)),
            draw(st.integers(0, 2**32 - 1)),
        )
        for n in range(count)
    ]


@st.composite
def rollup_rows(draw: st.DrawFn) -> list[RollupRow]:
    count = draw(st.integers(1, 12))
    return [
        RollupRow(
            draw(TEXT),
            f"{n}-{draw(TEXT)}",
            draw(TEXT),
            draw(st.dictionaries(TEXT, TEXT, max_size=3)),
            draw(MINUTES),
            draw(MINUTES),
            draw(DECIMALS),
            draw(st.integers(0, 2**64 - 1)),
            draw(st.none() | DECIMALS),
            draw(st.lists(TEXT, max_size=3)),
            (draw(TIMES), draw(DECIMALS)),
        )
        for n in range(count)
    ]


@pytest.fixture(scope="module", params=["none", "lz4"])
def client(clickhouse_url: str, request: pytest.FixtureRequest) -> Iterator[Client]:
    """Each test runs with bodies sent as they are and lz4-framed (``CLICKHOUSE_COMPRESSION``)."""
    database = f"rows_as_json_{secrets.token_hex(4)}"
    opened = open_client(clickhouse_url, database, create=True, compression=request.param)
    ClickHouseUsageStore(opened).migrate()
    for table in ("usage_events", "usage_rollup_1m"):
        opened.command(f"CREATE TABLE {table}_native AS {table}")
    yield opened
    opened.command(f"DROP DATABASE IF EXISTS `{database}`")
    opened.close()


def _stored_both_ways(client: Client, table: str, rows: list[tuple[object, ...]], columns: tuple[str, ...]) -> None:
    for name in (table, f"{table}_native"):
        client.command(f"TRUNCATE TABLE {name}")
    store = ClickHouseUsageStore(client)
    token = secrets.token_hex(8)
    if table == "usage_events":
        store.insert_events(rows, token)  # type: ignore[arg-type]
    else:
        store.insert_rollups(rows, token)  # type: ignore[arg-type]
    # Under the flush's settings too (no merge of the inserted block): what is compared is the
    # two encodings.
    insert_rows(client, f"{table}_native", rows, columns, settings=FLUSH_INSERT_SETTINGS)
    as_json = client.query(f"SELECT * FROM {table} ORDER BY ALL").result_rows
    native = client.query(f"SELECT * FROM {table}_native ORDER BY ALL").result_rows
    assert len(as_json) == len(rows)
    assert as_json == native


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=event_rows())
def test_event_rows_are_stored_as_the_native_insert_stores_them(client: Client, rows: list[EventRow]) -> None:
    _stored_both_ways(client, "usage_events", rows, EventRow._fields)  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=rollup_rows())
def test_rollup_rows_are_stored_as_the_native_insert_stores_them(client: Client, rows: list[RollupRow]) -> None:
    _stored_both_ways(client, "usage_rollup_1m", rows, RollupRow._fields)  # type: ignore[arg-type]


def test_a_row_json_cannot_carry_goes_by_the_native_insert(client: Client) -> None:
    """A lone surrogate cannot be written as UTF-8. The parser never lets one through (orjson
    refuses it); should one come, it meets the Native insert, which refuses it as before rows
    went as JSON: the flush fails loudly, nothing is stored half-way."""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    row = EventRow("e\ud800", "s", "t", "c", at, "{}", "00", at, "usage", 1, 0, 0, 0)
    client.command("TRUNCATE TABLE usage_events")
    with pytest.raises(UnicodeEncodeError):
        ClickHouseUsageStore(client).insert_events([row], secrets.token_hex(8))
    assert client.query("SELECT count() FROM usage_events").result_rows == [(0,)]


@pytest.fixture
def host_zone_not_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's local zone at UTC+05:30 (a POSIX TZ string: no zone database needed)."""
    monkeypatch.setenv("TZ", "IST-5:30")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_naive_datetime_is_read_as_utc_by_both_inserts_on_any_host(client: Client, host_zone_not_utc: None) -> None:
    """The pipeline builds aware datetimes, but a naive one must not land at another instant
    by the way it went (or the host it went from): both inserts read it in the column's zone."""
    naive = datetime(2026, 3, 1, 12, 30, 15, 250000)
    instant = naive.replace(tzinfo=UTC)
    event = EventRow("naive", "s", "t", "c", naive, "{}", "00", naive, "usage", 1, 0, 0, 0)
    _stored_both_ways(client, "usage_events", [event], EventRow._fields)  # type: ignore[arg-type]
    minute = naive.replace(second=0, microsecond=0)
    rollup = RollupRow("c", "m", "sum", {}, minute, minute, Decimal(1), 1, None, [], (naive, Decimal(1)))
    _stored_both_ways(client, "usage_rollup_1m", [rollup], RollupRow._fields)  # type: ignore[arg-type]
    for suffix in ("", "_native"):
        events = client.query(
            f"SELECT toUnixTimestamp64Micro(time), toUnixTimestamp64Milli(ingested_at) FROM usage_events{suffix}"
        ).result_rows
        assert events == [(int(instant.timestamp() * 1_000_000), int(instant.timestamp() * 1000))]
        rollups = client.query(
            "SELECT toUnixTimestamp(window_start), toUnixTimestamp(ingested_minute),"
            f" toUnixTimestamp64Micro(latest.1) FROM usage_rollup_1m{suffix}"
        ).result_rows
        assert rollups == [(int(minute.replace(tzinfo=UTC).timestamp()),) * 2 + (int(instant.timestamp() * 1_000_000),)]


def test_rows_go_lz4_framed_when_the_client_compresses(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """The body on the wire is the JSON lines in one lz4 frame, and the server stores the rows."""
    sent: list[tuple[bytes, str | None]] = []
    raw_insert = client.raw_insert

    def spy(table: str, columns: object, body: bytes, **kwargs: object) -> object:
        sent.append((body, kwargs.get("compression")))  # type: ignore[arg-type]
        return raw_insert(table, columns, body, **kwargs)

    monkeypatch.setattr(client, "raw_insert", spy)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [EventRow(f"e{n}", "s", "t", "c", at, "{}", "00", at, "usage", n, 0, 0, 0) for n in range(50)]
    client.command("TRUNCATE TABLE usage_events")
    ClickHouseUsageStore(client).insert_events(rows, secrets.token_hex(8))
    [(body, compression)] = sent
    lines = _ROWS_AS_JSON.encode_lines(rows)
    if client.write_compression == "lz4":
        assert compression == "lz4"
        assert lz4.frame.decompress(body) == lines
        assert len(body) < len(lines)
    else:
        assert (body, compression) == (lines, None)
    assert client.query("SELECT count() FROM usage_events").result_rows == [(50,)]
