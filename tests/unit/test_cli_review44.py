"""The command line under hostile conditions: an invoice page whose write fails half way, times
past what Python or ClickHouse hold, a reader of the output that left (`| head`), and the
rater's look at landed usage while the broker is down."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import ClassVar

import click
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from bastionary.cli.common import required_time
from bastionary.cli.main import cli
from bastionary.metering.landed_clock import Positions
from bastionary.worker import usage_landed
from tests.unit.env_helpers import isolated_cli, one_error_line


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    isolated_cli(monkeypatch, tmp_path / "data")


_PAGE_WRITE_CUT_SHORT = """
import resource, signal, sys
import bastionary.cli.billing as billing
import bastionary.rating.render as render
from bastionary.cli.main import cli

class Reports:
    def __init__(self, client): pass
    def document(self, invoice_id): return {"invoice_id": invoice_id}

billing.InvoiceReports = Reports
billing.reader_client = lambda settings: None
billing._hide_zero_lines = lambda settings: True
render.render_invoice_pdf = lambda document, hide: b"%PDF-1.4 " + b"x" * 200_000 + b" %%EOF"
# A full disk, as a file size limit: the write stops at 64 KiB with an error (EFBIG).
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, resource.RLIM_INFINITY))
cli(["invoice", "show", "inv-1", "--pdf", sys.argv[1]])
"""


def test_an_invoice_page_whose_write_fails_half_way_leaves_the_file_as_it_was(tmp_path: Path):
    """Written in place, a write cut short by a full disk left a truncated PDF, and the good
    copy printed before it was gone."""
    page = tmp_path / "inv-1.pdf"
    page.write_bytes(b"%PDF-1.4 printed yesterday %%EOF")

    done = subprocess.run(
        [sys.executable, "-c", _PAGE_WRITE_CUT_SHORT, str(page)], capture_output=True, text=True, timeout=120
    )

    assert done.returncode == 1, done.stderr
    assert one_error_line(done.stderr) == f"Error: cannot write {page}: File too large"
    assert page.read_bytes() == b"%PDF-1.4 printed yesterday %%EOF"
    assert [p.name for p in tmp_path.iterdir()] == ["inv-1.pdf"]  # no part left behind


def test_an_invoice_page_replaces_the_file_whole_and_writes_through_a_link(monkeypatch, tmp_path: Path):
    class Reports:
        def __init__(self, client: object):
            pass

        def document(self, invoice_id: str) -> dict[str, str]:
            return {"invoice_id": invoice_id}

    monkeypatch.setattr("bastionary.cli.billing.InvoiceReports", Reports)
    monkeypatch.setattr("bastionary.cli.billing.reader_client", lambda settings: None)
    monkeypatch.setattr("bastionary.cli.billing._hide_zero_lines", lambda settings: True)
    monkeypatch.setattr("bastionary.rating.render.render_html", lambda document, hide: "<p>new</p>")
    page = tmp_path / "pages" / "inv-1.html"
    page.parent.mkdir()
    page.write_text("<p>old, and longer than the new page</p>")
    page.chmod(0o640)
    link = tmp_path / "latest.html"
    link.symlink_to(page)

    result = CliRunner().invoke(cli, ["invoice", "show", "inv-1", "--html", str(link)])

    assert result.exit_code == 0, result.output
    assert result.output == f"wrote {link}\n"
    assert link.is_symlink() and page.read_text() == "<p>new</p>"
    assert page.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in page.parent.iterdir()) == ["inv-1.html"]


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_time_past_what_python_holds_in_utc_is_a_bad_option(moment: str):
    with pytest.raises(click.BadParameter, match="outside the years 1 to 9999"):
        required_time(moment, "--at")


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["credits", "balance", "c1", "--at", "0001-01-01T00:00:00+01:00"], "--at"),
        (["usage", "llm_tokens", "--from", "9999-12-31T23:59:59-01:00"], "--from"),
        (["usage", "llm_tokens", "--to", ""], "--to"),
    ],
)
def test_a_hostile_time_is_one_line_naming_its_option(monkeypatch, args: list[str], option: str):
    def no_query(settings: object) -> None:
        raise AssertionError("queried with a time the command should have refused")

    monkeypatch.setattr("bastionary.cli.billing.reader_client", no_query)
    monkeypatch.setattr("bastionary.cli.usage.reader_client", no_query)

    result = CliRunner().invoke(cli, args)

    assert result.exit_code == 2, result.output
    assert one_error_line(result.output).startswith(f"Error: Invalid value for {option}: ")


class _IssueTimes:
    """The billing store as ClickHouse reads its moment: a DateTime64, 1900 to 2299 (a moment
    before the year 1000 does not parse)."""

    asked: ClassVar[list[datetime]] = []

    def __init__(self, client: object):
        pass

    def grants_as_of(self, moment: datetime) -> tuple[dict[str, list[object]], dict[str, Decimal]]:
        if moment.year < 1000:
            raise RuntimeError(
                f"Code: 457. DB::Exception: Value {moment:%Y-%m-%d} cannot be parsed as DateTime64(3, 'UTC')"
            )
        self.asked.append(moment)
        return {}, {}


@pytest.mark.parametrize(
    ("at", "issued_by"),
    [
        ("0001-01-01", datetime(1900, 1, 1, tzinfo=UTC)),
        ("9999-12-31", datetime(2299, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC)),
        ("2026-12-07", datetime(2026, 12, 7, tzinfo=UTC)),
    ],
)
def test_a_balance_long_before_or_after_any_invoice_is_answered(monkeypatch, at: str, issued_by: datetime):
    """A balance before the year 1000 failed with ClickHouse's parse error: no invoice is
    issued outside what a DateTime64 holds, so the invoices issued by a bound are asked."""
    _IssueTimes.asked = []
    monkeypatch.setattr("bastionary.cli.billing.reader_client", lambda settings: object())
    monkeypatch.setattr("bastionary.cli.billing.require_customer", lambda client, customer: None)
    monkeypatch.setattr("bastionary.storage.billing.ClickHouseBillingStore", _IssueTimes)

    result = CliRunner().invoke(cli, ["credits", "balance", "c1", "--at", at, "--format", "json"])

    assert result.exit_code == 0, result.output
    assert _IssueTimes.asked == [issued_by]
    assert result.output.startswith("[]")


def test_a_reader_that_left_ends_the_command_quietly():
    """`bastionary ... | head` whose reader had gone: the failed write was told as "a bug of
    ours, please report it"."""
    child = subprocess.Popen(
        [sys.executable, "-c", "from bastionary.cli.main import cli; cli()", "config"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdout is not None
    child.stdout.close()  # before anything is written: the reader is gone
    _, errors = child.communicate(timeout=120)

    assert child.returncode == 1
    assert errors.decode() == ""


def test_a_broker_down_is_told_once_and_its_return_once(monkeypatch):
    """Every rating run (every 10 s by default) logged `usage offsets not read` while the
    broker was down: a day's outage was 8,640 warnings."""
    answers: list[Positions | Exception] = [OSError("connection refused")] * 5 + [Positions({0: 0}, {0: 0}, {})] * 2
    answers.append(OSError("connection refused"))

    async def positions(bootstrap: str, group: str, topic: str) -> Positions:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(usage_landed, "usage_positions", positions)
    landed = usage_landed.UsageLanded("127.0.0.1:1", "group", "usage.events")

    async def runs() -> None:
        for _ in range(8):
            await landed.through()

    with capture_logs() as logs:
        asyncio.run(runs())

    told = [entry["event"] for entry in logs if entry["event"].startswith("usage offsets")]
    assert told == [
        "usage offsets not read; rating as of the last moment known landed",
        "usage offsets read again",
        "usage offsets not read; rating as of the last moment known landed",
    ]


@pytest.mark.parametrize(
    ("args", "told"),
    [
        (["usage", "llm_tokens", "--from", "1960-01-01"], "outside 1970-01-01 .. 2106-01-01 UTC"),
        (["usage", "llm_tokens", "--to", "2106-01-01T00:01:00"], "outside 1970-01-01 .. 2106-01-01 UTC"),
        (["usage", "llm_tokens", "--group-by", "colour"], "llm_tokens has no dimension colour"),
        (["usage", "llm_tokens", "--filter", "colour=red"], "llm_tokens has no dimension colour"),
        (["usage", "no_such_meter"], "unknown meter 'no_such_meter'"),
    ],
)
def test_a_usage_question_that_cannot_be_asked_is_a_bad_option_told_before_clickhouse(
    monkeypatch, args: list[str], told: str
):
    """These were exit 1, after ClickHouse was opened (in embedded mode, the data dir taken)."""

    def no_query(settings: object) -> None:
        raise AssertionError("ClickHouse opened for a question that cannot be asked")

    monkeypatch.setattr("bastionary.cli.usage.reader_client", no_query)

    result = CliRunner().invoke(cli, args)

    assert result.exit_code == 2, result.output
    assert told in one_error_line(result.output)


@given(
    st.one_of(
        st.text(max_size=40),
        st.datetimes(timezones=st.timezones()).map(datetime.isoformat),
        st.builds(
            lambda day, offset: f"{day.isoformat()}T00:00:00{offset}",
            st.dates(),
            st.sampled_from(["", "Z", "+14:00", "-14:00", "+23:59", "-23:59"]),
        ),
    )
)
def test_any_time_option_is_a_utc_moment_or_a_bad_parameter(value: str) -> None:
    # Whatever is typed: a moment every command can compare in UTC, or click's usage error,
    # never another exception (an OverflowError was "a bug of ours").
    try:
        moment = required_time(value, "--at")
    except click.BadParameter:
        return
    assert moment.tzinfo is not None
    moment.astimezone(UTC)
