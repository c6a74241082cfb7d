"""What `bastionary demo` prints and checks, with the pipeline's answers faked: its tables add up,
its verdict notices miscounted records, and its own money follows the project's rounding."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from rich.console import Console

import bastionary.tools.demo as demo
from bastionary.storage import diagnostics
from bastionary.tools.workload import Workload, generate

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _billable(count: int) -> list[dict[str, object]]:
    event = {"specversion": "1.0", "source": "bastionary-demo", "type": "api.request", "subject": "cust-0001"}
    return [event | {"id": f"bill-{i}", "time": T0.isoformat(), "data": {"method": "GET"}} for i in range(count)]


@pytest.fixture
def workload() -> Workload:
    generated = generate(600, customers=12, late_events=20, bad_records=7, now=T0)
    generated.unique_events.extend(_billable(25))  # as run_demo adds the subscribers' usage
    return generated


def _fake_pipeline(monkeypatch: pytest.MonkeyPatch, workload: Workload, dead: int | None = None) -> None:
    """Meter totals equal to the ground truth; ingest counters as sent unless told otherwise."""
    truth = workload.truth()

    def meter_totals(client: object, meter: object, group_by: object = ()) -> list[diagnostics.MeterTotal]:
        rows = truth[meter.key]  # type: ignore[attr-defined]
        return [diagnostics.MeterTotal(c, T0, T0, dict(group), value) for (c, group), value in rows.items()]

    counters = diagnostics.IngestTotals(
        len(workload.unique_events), workload.duplicates, workload.bad_records if dead is None else dead
    )
    monkeypatch.setattr(diagnostics, "meter_totals", meter_totals)
    monkeypatch.setattr(diagnostics, "ingest_totals", lambda client: counters)


def _summarize(workload: Workload, billable_events: int) -> tuple[bool, str]:
    out = io.StringIO()
    verdict = demo._summarize(Console(file=out, width=160), None, workload, billable_events=billable_events)  # type: ignore[arg-type]
    return verdict, out.getvalue()


def _row(out: str, name: str) -> int:
    match = re.search(rf"{re.escape(name)}\s+│\s+([\d,]+)", out)
    assert match, out
    return int(match.group(1).replace(",", ""))


def test_the_pipeline_table_counts_the_subscribers_usage_it_published(monkeypatch, workload):
    # make demo printed 52,280 records / 54,970 events in while its progress bar landed 53,978
    # records and it counted 51,698 + 4,970 repeats: the 1,698 billable events were left out.
    _fake_pipeline(monkeypatch, workload)
    verdict, out = _summarize(workload, billable_events=25)
    assert verdict, out
    assert _row(out, "records published") == len(workload.records) + 25
    assert _row(out, "events in (incl. repeats)") == _row(out, "events counted") + _row(out, "duplicates dropped")


def test_bad_records_missing_from_the_dlq_fail_the_demo(monkeypatch, workload):
    _fake_pipeline(monkeypatch, workload, dead=0)
    verdict, out = _summarize(workload, billable_events=25)
    assert "exact: every meter total equals the ground truth" in out  # the totals alone cannot tell
    assert verdict is False
    assert "MISMATCH: dead-lettered (usage.dlq) 0, expected 7" in out


def test_the_service_credit_is_rounded_half_up_as_every_amount():
    # 10% of the German customer's 496.45 EUR subtotal is 49.645: the demo asked for 49.64.
    assert demo.service_credit_amount("496.45", "EUR") == "49.65"
    assert demo.service_credit_amount("100.00", "EUR") == "10.00"


def test_a_credited_invoice_line_adds_up_as_printed():
    document = {
        "invoice_id": "inv-1",
        "bill_to": {"name": "Müller & Söhne GmbH"},
        "currency": "EUR",
        "subtotal": "496.45",
        "tax_lines": [{"name": "VAT 19%", "amount": "94.33"}],
        "credits_applied": "100.00",
        "total": "490.78",
    }
    line = demo.invoice_summary("cust-0005", document)
    figures = re.search(r"subtotal ([\d.]+), tax VAT 19% ([\d.]+) EUR, credits -([\d.]+), total ([\d.]+) EUR", line)
    assert figures, line
    subtotal, tax, credits, total = (Decimal(f) for f in figures.groups())
    assert subtotal + tax - credits == total
    uncredited = demo.invoice_summary("cust-0006", document | {"credits_applied": "0", "total": "590.78"})
    assert "credits" not in uncredited
