"""Every user error of the CLI is one line saying what was wrong and what to do, with a
non-zero exit: no traceback. Run as a user runs it, in a child process, on an empty data
directory (no tables yet) or one with the tables and nothing else in them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.unit.test_invoice_page import document as invoice_document

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).with_name("bastionary")
INVOICE = invoice_document()


def bastionary(data_dir: Path, *args: str, stdin: bytes = b"", **env: str) -> subprocess.CompletedProcess[bytes]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BASTIONARY_")}
    environment |= {"BASTIONARY_DATA_DIR": str(data_dir), "BASTIONARY_LOG_FORMAT": "json", **env}
    return subprocess.run([str(BIN), *args], input=stdin, env=environment, capture_output=True, timeout=120)


def one_line_error(result: subprocess.CompletedProcess[bytes], *expected: str, code: int = 1) -> str:
    """The message, after checking it is the whole of stderr, a click error, and the exit code."""
    text = result.stderr.decode()
    assert "Traceback" not in text, text
    error = [line for line in text.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1, text
    assert result.returncode == code, (result.returncode, text)
    for part in expected:
        assert part in error[0], (part, error[0])
    return error[0]


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory whose ClickHouse has Bastionary's tables and one invoice, ``INVOICE``."""
    data_dir = tmp_path_factory.mktemp("migrated")
    code = (
        "import sys, orjson; from datetime import datetime;"
        "from bastionary.runtime import connect_clickhouse; from bastionary.settings import load_settings;"
        "from bastionary.storage.migrations import apply_migrations;"
        "from bastionary.storage.billing import INVOICE_COLUMNS, ClickHouseBillingStore as Store;"
        "client = connect_clickhouse(load_settings()).client; apply_migrations(client);"
        "data = orjson.loads(sys.stdin.buffer.read()); issued = datetime.fromisoformat(data['issued_at']);"
        "client.insert('invoices', [Store._invoice_row(data, issued, 1)], column_names=INVOICE_COLUMNS)"
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BASTIONARY_")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=orjson.dumps(INVOICE),
        env=environment | {"BASTIONARY_DATA_DIR": str(data_dir)},
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return data_dir


@pytest.mark.parametrize(
    "args",
    [("usage", "llm_tokens"), ("invoices",), ("credits", "balance", "cust-1"), ("invoice", "show", "inv-1")],
    ids=lambda a: " ".join(a),
)
def test_a_read_before_the_first_run_says_to_start_it(tmp_path, args):
    one_line_error(bastionary(tmp_path, *args), "tables do not exist", "bastionary run")


def test_an_unreachable_broker_is_named_with_the_setting_to_check(tmp_path):
    result = bastionary(tmp_path, "produce", stdin=b"{}\n", BASTIONARY_KAFKA_BOOTSTRAP="127.0.0.1:1")
    one_line_error(result, "cannot reach Kafka", "BASTIONARY_KAFKA_BOOTSTRAP")
    assert result.stderr.decode().count("\n") == 1  # not even aiokafka's log line


def test_a_port_in_use_stops_run_before_anything_starts(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = str(holder.getsockname()[1])
        one_line_error(bastionary(tmp_path, "run", BASTIONARY_WEB_PORT=port), "cannot listen on", "BASTIONARY_WEB_PORT")
        one_line_error(bastionary(tmp_path, "worker", BASTIONARY_WEB_PORT=port), "another process holds it")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("dunning", "report", "--within", "-3"), "'--within'"),
        (("produce", "--topic", "usage.event"), "not a Bastionary topic"),
        (("produce", "--events-per-record", "0"), "'--events-per-record'"),
        (("usage", "llm_tokens", "--from", "2026-12-02", "--to", "2026-12-01"), "is not before --to"),
        (("usage", "llm_tokens", "--from", "yesterday"), "not an ISO 8601 time"),
    ],
    ids=lambda a: " ".join(a) if isinstance(a, tuple) else "",
)
def test_a_bad_option_is_refused_before_anything_runs(tmp_path, args, expected):
    one_line_error(bastionary(tmp_path, *args), expected, code=2)


def test_an_unknown_customer_is_an_error_not_an_empty_answer(migrated):
    for args in (
        ("credits", "balance", "nobody"),
        ("credits", "ledger", "nobody"),
        ("invoices", "--customer", "x"),
        ("credit-notes", "--customer", "x"),
        ("dunning", "status", "--customer", "x"),
        ("usage", "llm_tokens", "--customer", "x"),
    ):
        one_line_error(bastionary(migrated, *args), "unknown customer")


def test_a_query_clickhouse_cannot_parse_is_reported_as_such(migrated):
    message = one_line_error(bastionary(migrated, "sql", "SELEC 1"), "Syntax error")
    assert "read-only" not in message


def test_an_invoice_page_to_an_unwritable_path_says_which_path(migrated, tmp_path):
    missing = one_line_error(bastionary(migrated, "invoice", "show", "inv-1", "--html", str(tmp_path / "x.html")))
    assert "no invoice inv-1" in missing
    unwritable = tmp_path / "no" / "such" / "dir" / "page.html"
    for flag in ("--html", "--pdf"):
        result = bastionary(migrated, "invoice", "show", INVOICE["invoice_id"], flag, str(unwritable))
        one_line_error(result, f"cannot write {unwritable}")


def test_every_command_reads_a_time_without_an_offset_as_utc(tmp_path):
    clock = tmp_path / "clock"
    done = bastionary(tmp_path, "clock", "set", "2026-12-01", BASTIONARY_CLOCK=f"file:{clock}")
    assert (done.returncode, done.stdout.decode().strip()) == (0, "2026-12-01T00:00:00+00:00")
