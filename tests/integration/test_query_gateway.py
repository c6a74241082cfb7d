"""The query gateway speaks enough ClickHouse HTTP for clickhouse-connect and curl.

chdb hosts one data path per process, so every test shares one session-scoped chdb client
and gets its own database instead. clickhouse-connect's HTTP client blocks, and the gateway
runs on the test's event loop, so client calls go through ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import stat
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from datetime import UTC, datetime

import clickhouse_connect
import lz4.frame
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from bastionary.devstack.discovery import gateway_dsn, read_gateway_file
from bastionary.devstack.gateway import GatewayCredentials, QueryGateway, write_gateway_file

pytestmark = pytest.mark.integration

CREDS = GatewayCredentials("reader", "r-secret", "writer", "w-secret")


@pytest.fixture(scope="session")
def chdb_client(tmp_path_factory):
    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path_factory.mktemp('gateway-chdb')}")
    yield client
    client.close()


@pytest.fixture
def database(chdb_client):
    name = f"test_{uuid.uuid4().hex}"
    chdb_client.command(f"CREATE DATABASE {name}")
    chdb_client.command(
        f"CREATE TABLE {name}.events (id UInt64, name String, at DateTime64(3, 'UTC'))"
        " ENGINE = MergeTree ORDER BY id SETTINGS non_replicated_deduplication_window = 100"
    )
    yield name
    chdb_client.command(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture
async def gateway(chdb_client, database):
    gw = QueryGateway(chdb_client, CREDS, database=database)
    port = await gw.start()
    yield port
    await gw.stop()


def connect(port: int, database: str, role: str = "reader", **kwargs):
    password = CREDS.reader_password if role == "reader" else CREDS.writer_password
    return clickhouse_connect.get_client(
        host="127.0.0.1", port=port, username=role, password=password, database=database, **kwargs
    )


def http(port: int, params: dict | None = None, body: bytes | None = None, headers: dict | None = None):
    """One raw request, the way curl would send it: returns (status, headers, body)."""
    url = f"http://127.0.0.1:{port}/?{urllib.parse.urlencode(params or {})}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers or {})) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


ROWS = [(i, f"n{i}", datetime(2024, 1, 1, 0, i, tzinfo=UTC)) for i in range(5)]
COLUMNS = ["id", "name", "at"]


async def test_reader_queries_a_table(chdb_client, database, gateway):
    chdb_client.insert(f"{database}.events", ROWS, column_names=COLUMNS)

    def read():
        reader = connect(gateway, database)
        result = reader.query("SELECT id, name FROM events WHERE id >= {low:UInt64} ORDER BY id", parameters={"low": 3})
        return reader.server_version, result

    version, result = await asyncio.to_thread(read)
    assert version  # the connect handshake (version, timezone, settings) went through
    assert result.column_names == ("id", "name")
    assert result.result_rows == [(3, "n3"), (4, "n4")]
    assert int(result.summary["read_rows"]) >= 2 and result.summary["query_id"]


@pytest.mark.parametrize("compress", [True, "zstd", "gzip", False])
async def test_writer_insert_is_visible_to_reader(database, gateway, compress):
    def write_then_read():
        summary = connect(gateway, database, "writer", compress=compress).insert("events", ROWS, column_names=COLUMNS)
        return summary, connect(gateway, database).query("SELECT id, name, at FROM events ORDER BY id").result_rows

    summary, rows = await asyncio.to_thread(write_then_read)
    assert summary.written_rows == 5
    assert [(i, name, at.replace(tzinfo=UTC)) for i, name, at in rows] == ROWS


async def test_raw_insert_with_compressed_bodies(database, gateway):
    def write_then_read():
        writer = connect(gateway, database, "writer")
        writer.raw_insert("events", COLUMNS, b'{"id":1,"name":"a","at":"2024-01-01 00:00:00"}\n', fmt="JSONEachRow")
        writer.raw_insert("events", COLUMNS, gzip.compress(b"2,b,2024-01-01 00:00:00\n"), fmt="CSV", compression="gzip")
        block = lz4.frame.compress(b"3\tc\t2024-01-01 00:00:00\n")
        writer.raw_insert("events", COLUMNS, block, fmt="TabSeparated", compression="lz4")
        return connect(gateway, database).command("SELECT groupArray(name) FROM (SELECT name FROM events ORDER BY id)")

    assert await asyncio.to_thread(write_then_read) == "['a','b','c']"


async def test_insert_deduplication_token_is_honoured(database, gateway):
    def insert_twice_then_count():
        writer = connect(gateway, database, "writer")
        for _ in range(2):
            writer.insert("events", ROWS, column_names=COLUMNS, settings={"insert_deduplication_token": "batch-1"})
        writer.insert("events", ROWS[:1], column_names=COLUMNS, settings={"insert_deduplication_token": "batch-2"})
        return connect(gateway, database).command("SELECT count() FROM events")

    assert await asyncio.to_thread(insert_twice_then_count) == 6


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO events (id, name) VALUES (9, 'x')",
        "CREATE TABLE other (x UInt8) ENGINE = Memory",
        "DROP TABLE events",
        "SELECT * FROM file('/etc/hostname', 'LineAsString')",
        "SELECT 1 INTO OUTFILE '/tmp/bastionary-gateway-test.txt'",
        "SELECT 1 SETTINGS readonly = 0",
    ],
)
async def test_reader_cannot_modify(chdb_client, database, gateway, statement):
    def attempt():
        with pytest.raises(DatabaseError) as err:
            connect(gateway, database).command(statement)
        return err.value

    err = await asyncio.to_thread(attempt)
    assert err.code == 164 and "readonly" in str(err)
    assert chdb_client.command(f"EXISTS TABLE {database}.events") == 1


async def test_reader_cannot_insert_with_client(database, gateway):
    def attempt():
        with pytest.raises(DatabaseError, match="readonly"):
            connect(gateway, database).insert("events", ROWS, column_names=COLUMNS)

    await asyncio.to_thread(attempt)


async def test_get_implies_readonly_even_for_writer(database, gateway):
    params = {"query": "CREATE TABLE other (x UInt8) ENGINE = Memory", "database": database}
    status, headers, body = await asyncio.to_thread(http, gateway, params, None, basic("writer", "w-secret"))
    assert status == 403 and headers["X-ClickHouse-Exception-Code"] == "164"
    assert b"POST" in body


async def test_missing_credentials_is_401(gateway):
    status, headers, body = await asyncio.to_thread(http, gateway, {"query": "SELECT 1"})
    assert status == 401
    assert headers["X-ClickHouse-Exception-Code"] == "516"
    assert body.startswith(b"Code: 516. DB::Exception: ")


async def test_wrong_password_is_rejected(database, gateway):
    status, headers, _ = await asyncio.to_thread(
        http, gateway, {"query": "SELECT 1", "user": "reader", "password": "nope"}
    )
    assert status == 401 and headers["X-ClickHouse-Exception-Code"] == "516"

    def connect_with_wrong_password():
        with pytest.raises(DatabaseError) as err:
            clickhouse_connect.get_client(host="127.0.0.1", port=gateway, username="writer", password="r-secret")
        return err.value

    assert (await asyncio.to_thread(connect_with_wrong_password)).code == 516


async def test_query_error_surfaces_as_database_error(database, gateway):
    def bad_query():
        with pytest.raises(DatabaseError) as err:
            connect(gateway, database, "writer").query("SELECT nope FROM events")
        return err.value

    err = await asyncio.to_thread(bad_query)
    assert err.code == 47 and "nope" in str(err)


async def test_curl_style_access(chdb_client, database, gateway):
    chdb_client.insert(f"{database}.events", ROWS, column_names=COLUMNS)
    query = "SELECT id FROM events WHERE id < 2 ORDER BY id FORMAT JSONEachRow"

    status, headers, body = await asyncio.to_thread(
        http, gateway, {"query": query, "database": database}, None, basic("reader", "r-secret")
    )
    assert status == 200 and headers["X-ClickHouse-Format"] == "JSONEachRow"
    assert [json.loads(line) for line in body.splitlines()] == [{"id": 0}, {"id": 1}]
    assert int(json.loads(headers["X-ClickHouse-Summary"])["read_rows"]) >= 2

    key_headers = {"X-ClickHouse-User": "reader", "X-ClickHouse-Key": "r-secret"}
    status, _, body = await asyncio.to_thread(http, gateway, {"database": database}, query.encode(), key_headers)
    assert status == 200 and json.loads(body.splitlines()[0]) == {"id": 0}

    params = {"user": "reader", "password": "r-secret", "param_n": "3", "default_format": "CSV"}
    status, headers, body = await asyncio.to_thread(
        http, gateway, {**params, "query": f"SELECT count() FROM {database}.events WHERE id < {{n:UInt8}}"}
    )
    assert (status, headers["X-ClickHouse-Format"], body) == (200, "CSV", b"3\n")


async def test_curl_style_insert(database, gateway):
    creds = basic("writer", "w-secret")
    params = {"database": database, "query": "INSERT INTO events (id, name, at) FORMAT CSV"}
    status, headers, _ = await asyncio.to_thread(http, gateway, params, b"1,a,2024-01-01 00:00:00\n", creds)
    assert status == 200 and json.loads(headers["X-ClickHouse-Summary"])["written_rows"] == "1"
    body = b'INSERT INTO events FORMAT JSONEachRow\n{"id": 2, "name": "b", "at": "2024-01-01 00:00:00"}\n'
    assert (await asyncio.to_thread(http, gateway, {"database": database}, body, creds))[0] == 200
    status, _, body = await asyncio.to_thread(
        http, gateway, {"database": database}, b"SELECT count() FROM events", creds
    )
    assert body == b"2\n"


async def test_form_encoded_query_parameters(chdb_client, database, gateway):
    chdb_client.insert(f"{database}.events", ROWS, column_names=COLUMNS)

    def read():
        reader = connect(gateway, database, form_encode_query_params=True)
        return reader.query("SELECT name FROM events WHERE id = {id:UInt64}", parameters={"id": 2}).result_rows

    assert await asyncio.to_thread(read) == [("n2",)]


async def test_ping_needs_no_credentials(gateway):
    def ping():
        with urllib.request.urlopen(f"http://127.0.0.1:{gateway}/ping") as resp:
            return resp.read()

    assert await asyncio.to_thread(ping) == b"Ok.\n"


async def test_event_loop_stays_responsive_during_a_query(database, gateway):
    def slow_query():
        connect(gateway, database).command("SELECT sleepEachRow(0.25) FROM numbers(8) FORMAT Null")

    slow = asyncio.create_task(asyncio.to_thread(slow_query))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await asyncio.sleep(0.01)
    # A loop blocked by the query would wake only when it ends, ~1.8 s later; 1 s leaves room
    # for a loaded machine without letting a blocked loop pass.
    assert time.monotonic() - started < 1.0
    assert not slow.done()
    await slow


async def test_gateway_file_round_trip(tmp_path, database, gateway):
    path = tmp_path / "run" / "query-gateway.json"
    assert read_gateway_file(path) is None
    write_gateway_file(path, "127.0.0.1", gateway, CREDS, database)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind

    info = read_gateway_file(path)
    assert info["port"] == gateway and info["reader"] == {"user": "reader", "password": "r-secret"}
    assert gateway_dsn(info, "writer") == f"http://writer:w-secret@127.0.0.1:{gateway}/{database}"

    def over_dsn():
        writer = clickhouse_connect.get_client(dsn=gateway_dsn(info, "writer"))
        writer.insert("events", ROWS, column_names=COLUMNS)
        return clickhouse_connect.get_client(dsn=gateway_dsn(info, "reader")).command("SELECT count() FROM events")

    assert await asyncio.to_thread(over_dsn) == 5


def test_credentials_repr_hides_passwords():
    assert "secret" not in repr(CREDS)
    generated = GatewayCredentials.generate()
    assert generated.reader_user == "reader" and len(generated.writer_password) >= 24


# --- the reader is read-only whatever it sends (decided by the engine's parser) ----------


def _refused(port: int, database: str, statement: str, **params: str) -> bytes:
    """Refused before anything runs: as not a read (164), or as several statements (62)."""
    status, headers, body = http(
        port, {"query": statement, "database": database, **params}, None, basic("reader", "r-secret")
    )
    several = status == 400 and headers["X-ClickHouse-Exception-Code"] == "62" and b"Multi-statements" in body
    assert several or (status == 403 and headers["X-ClickHouse-Exception-Code"] == "164"), (statement, status, body)
    return body


@pytest.mark.parametrize(
    "template",
    [
        "SELECT 'x' INTO OUTFILE '{path}'",
        "SELECT 'x' INTO/**/OUTFILE '{path}' TRUNCATE FORMAT RawBLOB",
        "SELECT 'x' INTO -- a comment\n OUTFILE '{path}' APPEND",
        "SELECT 'x' into outfile '{path}' AND STDOUT",
        "SELECT 'x' INTO OUTFILE '{path}' COMPRESSION 'gzip' LEVEL 3",
        "WITH 1 AS a SELECT a INTO OUTFILE '{path}' FORMAT CSV",
        "(SELECT 'x') UNION ALL (SELECT 'y') INTO OUTFILE '{path}'",
        "SHOW TABLES INTO OUTFILE '{path}'",
        "DESCRIBE events INTO OUTFILE '{path}'",
        "EXPLAIN SELECT 1 INTO OUTFILE '{path}'",
        "SELECT 1; SELECT 'x' INTO OUTFILE '{path}'",
        "SELECT 'INTO OUTFILE' ; SELECT 1 INTO OUTFILE '{path}'",
    ],
)
async def test_no_form_of_into_outfile_writes_a_file(tmp_path, database, gateway, template):
    path = tmp_path / "v.txt"
    path.write_text("untouched")
    await asyncio.to_thread(_refused, gateway, database, template.format(path=path))
    assert path.read_text() == "untouched"  # neither created, truncated nor appended to
    missing = tmp_path / "never.txt"
    await asyncio.to_thread(_refused, gateway, database, template.format(path=missing))
    assert not missing.exists()


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT * FROM file('/etc/hostname', 'LineAsString')",
        "SELECT file('/etc/hostname')",  # the scalar one: readonly = 1 alone lets it read any file
        "SELECT length(FILE('/etc/hostname'))",
        "SELECT * FROM url('http://127.0.0.1:9/x', 'CSV', 'a String')",
        "SELECT * FROM s3('http://127.0.0.1:9/b/k.csv', 'CSV', 'a String')",
        "SELECT * FROM remote('127.0.0.1:9', 'db', 't')",
        "SELECT * FROM executable('cat /etc/hostname', 'TSV', 'a String')",
        "SELECT * FROM input('a String')",
        "SELECT * FROM events JOIN url('http://127.0.0.1:9/x', 'CSV', 'a String') AS u ON 1",
        "SELECT (SELECT count() FROM file('/etc/hostname', 'LineAsString'))",
        "SELECT * FROM system.users",
        "SELECT * FROM system.processes",
        "SELECT * FROM `system`.`query_log`",
        "SELECT * FROM other_database.events",
        "SHOW CREATE TABLE system.users",
        "EXISTS TABLE system.users",
        "SET readonly = 0",
        "SYSTEM FLUSH LOGS",
        "KILL QUERY WHERE 1",
        "OPTIMIZE TABLE events FINAL",
        "TRUNCATE TABLE events",
        "ALTER TABLE events DELETE WHERE 1",
        "/* SELECT */ INSERT INTO events (id) VALUES (1)",
        "-- SELECT\nDROP TABLE events",
        "SELECT 1; DROP TABLE events",
        "SELECT 1 SETTINGS readonly = 0",
        "SELECT 1 SETTINGS max_execution_time = 100000",
        "SELECT 1 SETTINGS function_sleep_max_microseconds_per_block = 60000000",
    ],
)
async def test_the_reader_cannot_reach_outside_or_change_anything(chdb_client, database, gateway, statement):
    body = await asyncio.to_thread(_refused, gateway, database, statement)
    assert b"readonly" in body or b"Multi-statements" in body
    assert chdb_client.command(f"EXISTS TABLE {database}.events") == 1


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT 'INTO OUTFILE /tmp/x' AS text",
        "SELECT 1 /* INTO OUTFILE 'x' */",
        "SELECT 'file(\\'/etc/hostname\\')'",
        "-- DROP TABLE events\nSELECT count() FROM events",
        "WITH (SELECT 1) AS one SELECT one",
        "SELECT * FROM numbers(3)",
        "SHOW TABLES",
        "DESCRIBE TABLE events",
        "EXISTS TABLE events",
        "EXPLAIN SELECT count() FROM events",
        "SELECT name FROM system.tables WHERE database = currentDatabase()",
        "SELECT count() FROM events AS e WHERE e.id IN (SELECT number FROM numbers(2))",
    ],
)
async def test_reads_that_only_look_dangerous_are_answered(database, gateway, statement):
    status, _, body = await asyncio.to_thread(
        http, gateway, {"query": statement, "database": database}, None, basic("reader", "r-secret")
    )
    assert status == 200, body


@pytest.fixture
def other_database(chdb_client):
    """Another database on the same engine, with a secret in a table, a Join table and a dictionary."""
    name = f"other_{uuid.uuid4().hex}"
    chdb_client.command(f"CREATE DATABASE {name}")
    chdb_client.command(f"CREATE TABLE {name}.secret (s String) ENGINE = MergeTree ORDER BY s")
    chdb_client.command(f"INSERT INTO {name}.secret VALUES ('TOPSECRET')")
    chdb_client.command(f"CREATE TABLE {name}.j (k UInt64, v String) ENGINE = Join(ANY, LEFT, k)")
    chdb_client.command(f"INSERT INTO {name}.j VALUES (1, 'TOPSECRET')")
    chdb_client.command(
        f"CREATE DICTIONARY {name}.d (k UInt64, v String) PRIMARY KEY k"
        f" SOURCE(CLICKHOUSE(DB '{name}' TABLE 'secret_source')) LAYOUT(FLAT()) LIFETIME(0)"
    )
    chdb_client.command(f"CREATE TABLE {name}.secret_source (k UInt64, v String) ENGINE = MergeTree ORDER BY k")
    chdb_client.command(f"INSERT INTO {name}.secret_source VALUES (1, 'TOPSECRET')")
    yield name
    chdb_client.command(f"DROP DATABASE IF EXISTS {name}")


@pytest.mark.parametrize("chosen", ["system", "INFORMATION_SCHEMA"])
@pytest.mark.parametrize("how", ["parameter", "header", "clickhouse-connect"])
async def test_the_reader_cannot_choose_a_system_database(database, gateway, chosen, how):
    """A reader names the database it reads (one served chdb may hold several: the test suite's
    databases share one), and its tables are checked against that one: a system database
    would make every system table inside, system.processes (other sessions' statements)
    among them."""
    target, statement = {
        "system": ("system", "SELECT query FROM processes"),
        "INFORMATION_SCHEMA": ("INFORMATION_SCHEMA", "SELECT * FROM tables"),
    }[chosen]

    def attempt() -> tuple[int, str, bytes]:
        if how == "clickhouse-connect":
            with pytest.raises(DatabaseError) as err:
                connect(gateway, target).command(statement)
            return 403, str(err.value.code), str(err.value).encode()
        params, headers = {"query": statement}, basic("reader", "r-secret")
        if how == "parameter":
            params["database"] = target
        else:
            headers["X-ClickHouse-Database"] = target
        status, response_headers, body = http(gateway, params, None, headers)
        return status, response_headers["X-ClickHouse-Exception-Code"], body

    status, code, body = await asyncio.to_thread(attempt)
    assert (status, code) == (403, "164")
    assert f"database {target} is not readable".encode() in body


@pytest.mark.parametrize("how", ["parameter", "header"])
async def test_the_reader_may_name_the_gateways_own_database(chdb_client, database, gateway, how):
    chdb_client.insert(f"{database}.events", ROWS, column_names=COLUMNS)
    params, headers = {"query": "SELECT count() FROM events"}, basic("reader", "r-secret")
    if how == "parameter":
        params["database"] = database
    else:
        headers["X-ClickHouse-Database"] = database
    status, _, body = await asyncio.to_thread(http, gateway, params, None, headers)
    assert (status, body) == (200, b"5\n")


async def test_a_writers_get_still_chooses_its_database(other_database, gateway):
    """Only the reader is held to the gateway's database: the writer may read anything by POST."""
    params = {"query": "SELECT s FROM secret", "database": other_database}
    status, _, body = await asyncio.to_thread(http, gateway, params, None, basic("writer", "w-secret"))
    assert (status, body) == (200, b"TOPSECRET\n")


@pytest.mark.parametrize(
    "template",
    [
        "SELECT 'TOPSECRET' IN {db}.secret",
        "SELECT 'TOPSECRET' IN (`{db}`.`secret`)",
        "SELECT 'TOPSECRET' NOT IN {db}.secret",
        "SELECT 'TOPSECRET' GLOBAL IN {db}.secret",
        "SELECT 'TOPSECRET' GLOBAL NOT IN {db}.secret",
        "SELECT nullIn('TOPSECRET', {db}.secret)",
        "SELECT notNullIn('TOPSECRET', {db}.secret)",
        "SELECT globalNullIn('TOPSECRET', {db}.secret)",
        "SELECT count() FROM numbers(1) WHERE 'TOPSECRET' IN {db}.secret",
        "SELECT joinGet('{db}.j', 'v', toUInt64(1))",
        "SELECT joinGetOrNull({db}.j, 'v', toUInt64(1))",
        "WITH '{db}.j' AS n SELECT joinGet(n, 'v', toUInt64(1))",
        "SELECT joinGet(concat('{db}', '.j'), 'v', toUInt64(1))",
        "SELECT dictGet('{db}.d', 'v', toUInt64(1))",
        "SELECT dictGetString('{db}.d', 'v', toUInt64(1))",
        "SELECT dictGetOrNull({db}.d, 'v', toUInt64(1))",
        "SELECT dictHas('{db}.d', toUInt64(1))",
    ],
)
async def test_the_reader_cannot_read_another_database_by_name(
    chdb_client, database, other_database, gateway, template
):
    statement = template.format(db=other_database)
    # Not a vacuous refusal: run as it is, the statement reads the other database's secret.
    assert chdb_client.command(statement) in (0, 1, "TOPSECRET")
    body = await asyncio.to_thread(_refused, gateway, database, statement)
    assert b"readonly" in body and b"TOPSECRET" not in body
    assert f"is outside the database {database}".encode() in body or b"with a string literal" in body


@pytest.mark.parametrize(
    "setting",
    ["function_sleep_max_microseconds_per_block", "max_execution_time", "max_result_bytes", "readonly_x",
     "format_schema", "format_template_resultset", "allow_introspection_functions", "max_memory_usage"],
)  # fmt: skip
async def test_settings_in_the_url_cannot_raise_a_readers_limits(database, gateway, setting):
    await asyncio.to_thread(_refused, gateway, database, "SELECT 1", **{setting: "100000000"})


async def test_output_settings_in_the_url_are_allowed(database, gateway):
    params = {
        "query": "SELECT toUInt64(1) AS x FORMAT JSONEachRow",
        "database": database,
        "output_format_json_quote_64bit_integers": "1",
    }
    status, _, body = await asyncio.to_thread(http, gateway, params, None, basic("reader", "r-secret"))
    assert status == 200 and body.strip() == b'{"x":"1"}'


@pytest.fixture
async def tight_gateway(chdb_client, database):
    from bastionary.devstack.gateway import reader_limits

    gw = QueryGateway(chdb_client, CREDS, database=database, reader_limits=reader_limits(1, 10_000))
    port = await gw.start()
    yield port
    await gw.stop()


async def test_reader_queries_have_a_time_limit(database, tight_gateway):
    body = await asyncio.to_thread(
        _http_error, tight_gateway, database, "SELECT count() FROM numbers(100000000000) WHERE sleepEachRow(0) = 0"
    )
    assert b"TIMEOUT_EXCEEDED" in body


async def test_reader_results_have_a_size_limit(database, tight_gateway):
    body = await asyncio.to_thread(_http_error, tight_gateway, database, "SELECT * FROM numbers(1000000)")
    assert b"TOO_MANY_ROWS_OR_BYTES" in body or b"Limit for result exceeded" in body


def _http_error(port: int, database: str, statement: str) -> bytes:
    status, _, body = http(port, {"query": statement, "database": database}, None, basic("reader", "r-secret"))
    assert status >= 400, body[:200]
    return body


async def test_a_slow_read_never_holds_up_a_writer(database, gateway):
    """Readers and writers queue apart: an insert lands while a long read still runs."""
    finished: list[str] = []

    def slow_read():
        connect(gateway, database).command("SELECT sleepEachRow(1) FROM numbers(3) FORMAT Null")
        finished.append("read")

    def insert():
        connect(gateway, database, "writer").insert("events", ROWS, column_names=COLUMNS)
        finished.append("insert")

    reading = asyncio.create_task(asyncio.to_thread(slow_read))
    await asyncio.sleep(0.3)
    await asyncio.to_thread(insert)
    await reading
    assert finished == ["insert", "read"]


async def test_inserts_run_at_once_while_other_writes_go_one_at_a_time(chdb_client, database, monkeypatch):
    """Two inserts pass a barrier that only lets them through together; two CREATE TABLEs,
    each held a moment inside the engine's call, never overlap."""
    gw = QueryGateway(chdb_client, CREDS, database=database, max_concurrent_inserts=2)
    both_inserting = threading.Barrier(2, timeout=20)
    lock, running, most = threading.Lock(), [0], [0]
    execute = gw._execute

    def watched(plan):
        if plan.insert_head:
            both_inserting.wait()  # one insert at a time would break the barrier: a failed insert
        elif plan.sql.startswith("CREATE TABLE"):
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.3)  # time for the other to come in, were it let
            with lock:
                running[0] -= 1
        return execute(plan)

    monkeypatch.setattr(gw, "_execute", watched)
    port = await gw.start()
    try:

        def insert(first_id: int) -> None:
            row = f'{{"id":{first_id},"name":"x","at":"2024-01-01 00:00:00"}}\n'.encode()
            connect(port, database, "writer").raw_insert("events", COLUMNS, row, fmt="JSONEachRow")

        def create(name: str) -> None:
            connect(port, database, "writer").command(f"CREATE TABLE {name} (x UInt8) ENGINE = Memory")

        await asyncio.gather(asyncio.to_thread(insert, 1), asyncio.to_thread(insert, 2))
        await asyncio.gather(asyncio.to_thread(create, "one"), asyncio.to_thread(create, "two"))
        count = await asyncio.to_thread(lambda: connect(port, database).command("SELECT count() FROM events"))
    finally:
        await gw.stop()
    assert count == 2
    assert most == [1]
