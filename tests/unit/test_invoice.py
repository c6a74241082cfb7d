"""Invoices (``rating/invoice.py``, ``rating/adjustments.py``) built from small subscriptions
and a fake usage lookup: proration, plan changes, the minimum commitment, late-usage
adjustments, and ``finalize`` (rounding per line, credits, totals, ids)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from bastionary.credits.ledger import Grant
from bastionary.money import round_money
from bastionary.rating.adjustments import adjustment_lines
from bastionary.rating.billed import add_billed
from bastionary.rating.invoice import (
    Line,
    Period,
    Segment,
    Subscription,
    finalize,
    invoice_id,
    minimum_true_up,
    period_lines,
)
from bastionary.rating.plans import Plan
from bastionary.rating.pricing import Usage

D = Decimal
UTC = UTC


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


JAN, FEB, MAR = at(2024, 1, 1), at(2024, 2, 1), at(2024, 3, 1)
JANUARY = Period(0, JAN, FEB, FEB)
CUTOFF = FEB + timedelta(hours=1)  # period end + grace

STARTER = Plan.model_validate(
    {
        "key": "starter",
        "currency": "USD",
        "prices": [
            {"key": "base", "model": "flat", "amount": 30, "description": "Platform fee"},
            {"key": "tokens", "model": "per_unit", "meter": "llm_tokens", "unit_amount": "0.002"},
        ],
    }
)
PRO = Plan.model_validate(
    {
        "key": "pro",
        "currency": "USD",
        "minimum_commitment": 100,
        "payment_terms": "P30D",
        "prices": [
            {"key": "base", "model": "flat", "amount": 90},
            {
                "key": "tokens",
                "model": "graduated",
                "meter": "llm_tokens",
                "description": "LLM tokens",
                "tiers": [{"up_to": 1000, "unit_amount": 0}, {"up_to": None, "unit_amount": "0.001"}],
            },
        ],
    }
)


@dataclass(frozen=True)
class Event:
    meter: str
    time: datetime  # when it happened: decides the period
    ingested: datetime  # when it reached us: decides which cutoff sees it
    value: Decimal


class FakeUsage:
    """``usage(price, customer_id, start, end, as_of) -> Usage`` over a list of events."""

    def __init__(self, *events: Event):
        self.events = list(events)
        self.calls: list[tuple] = []

    def __call__(self, price, customer_id: str, start: datetime, end: datetime, as_of: datetime) -> Usage:
        self.calls.append((price.key, customer_id, start, end, as_of))
        seen = [e for e in self.events if e.meter == price.meter and start <= e.time < end and e.ingested <= as_of]
        return Usage(sum((e.value for e in seen), D(0)), len(seen))


def tokens(value, time: datetime, ingested: datetime | None = None) -> Event:
    return Event("llm_tokens", time, ingested or time, D(str(value)))


def subscription(*segments: Segment, canceled_at: datetime | None = None, sub_id: str = "sub-1") -> Subscription:
    return Subscription(sub_id, "cust-1", segments[0].start, tuple(segments), canceled_at)


def amounts(lines: list[Line], currency: str = "USD") -> list[tuple[str, str, str]]:
    return [(line.description, str(line.quantity), line.as_dict(currency)["amount"]) for line in lines]


def billed_from(period: Period, lines: list[Line], currency: str = "USD", billed: dict | None = None) -> dict:
    """What the invoice store reports as billed: per (period start, line key), the summed
    quantity and rounded amount of every stored line (storage/billing.py ``billed``)."""
    billed = dict(billed or {})
    add_billed(billed, lines, period.start, currency)
    return billed


# --- period lines ----------------------------------------------------------------------


def test_full_period_lines():
    usage = FakeUsage(tokens(1000, at(2024, 1, 5)), tokens(500, at(2024, 1, 31, 23, 59)), tokens(7, FEB))
    lines = period_lines(subscription(Segment(STARTER, JAN)), JANUARY, CUTOFF, usage)
    assert amounts(lines) == [("Platform fee", "1", "30.00"), ("tokens", "1500", "3.00")]
    assert [line.line_key for line in lines] == ["starter:base", "starter:tokens"]
    assert [line.meter for line in lines] == [None, "llm_tokens"]
    assert usage.calls == [("tokens", "cust-1", JAN, FEB, CUTOFF)]


def test_usage_is_read_as_of_the_cutoff():
    usage = FakeUsage(tokens(100, at(2024, 1, 31), ingested=at(2024, 2, 3)))
    (_, line) = period_lines(subscription(Segment(STARTER, JAN)), JANUARY, CUTOFF, usage)
    assert line.quantity == 0
    (_, line) = period_lines(subscription(Segment(STARTER, JAN)), JANUARY, at(2024, 2, 4), usage)
    assert line.quantity == 100


def test_canceled_period_prorates_the_flat_fee():
    """Canceled on 11 January: 10 of January's 31 days, so 30 x 10/31 = 9.677... -> 9.68."""
    sub = subscription(Segment(STARTER, JAN), canceled_at=at(2024, 1, 11))
    period = Period(0, JAN, at(2024, 1, 11), FEB)
    usage = FakeUsage(tokens(1000, at(2024, 1, 10)), tokens(1000, at(2024, 1, 12)))
    base, used = period_lines(sub, period, at(2024, 1, 11, 1), usage)
    assert base.quantity == D(10) / D(31) and base.amount == D(30) * D(10) / D(31)
    assert base.description == "Platform fee, prorated 0.3226"
    assert base.as_dict("USD")["amount"] == "9.68"
    assert (used.quantity, used.amount) == (D(1000), D(2))  # only usage before the cancellation
    assert usage.calls == [("tokens", "cust-1", JAN, at(2024, 1, 11), at(2024, 1, 11, 1))]


def test_proration_is_by_seconds_of_the_full_period():
    """Half of a 30-day April, cut at noon on the 16th: exactly half the fee."""
    april = Period(3, at(2024, 4, 1), at(2024, 4, 16, 0), at(2024, 5, 1))
    (base, _) = period_lines(subscription(Segment(STARTER, at(2024, 1, 1))), april, at(2024, 5, 1), FakeUsage())
    assert base.amount == 15 and base.description == "Platform fee, prorated 0.5000"


def test_plan_change_mid_period_bills_both_plans():
    """Starter until 16 January (15 days), then Pro (16 days); usage split at the change."""
    sub = subscription(Segment(STARTER, JAN, at(2024, 1, 16)), Segment(PRO, at(2024, 1, 16)))
    usage = FakeUsage(tokens(1000, at(2024, 1, 10)), tokens(1500, at(2024, 1, 20)))
    lines = period_lines(sub, JANUARY, CUTOFF, usage)
    assert amounts(lines) == [
        ("Platform fee (starter), prorated 0.4839", str(D(15) / D(31)), "14.52"),  # 30 x 15/31
        ("tokens (starter)", "1000", "2.00"),  # 1000 x 0.002
        ("base (pro), prorated 0.5161", str(D(16) / D(31)), "46.45"),  # 90 x 16/31
        ("LLM tokens (pro)", "1500", "0.50"),  # first 1000 included, 500 x 0.001
    ]
    assert [line.line_key for line in lines] == ["starter:base", "starter:tokens", "pro:base", "pro:tokens"]
    assert [c[2:4] for c in usage.calls] == [(JAN, at(2024, 1, 16)), (at(2024, 1, 16), FEB)]


def test_tiers_restart_with_each_plan_segment():
    """Graduated tiers count the usage of the segment, not of the whole period."""
    sub = subscription(Segment(PRO, JAN, at(2024, 1, 16)), Segment(STARTER, at(2024, 1, 16), at(2024, 1, 20)),
                       Segment(PRO.model_copy(update={"key": "pro2"}), at(2024, 1, 20)))  # fmt: skip
    usage = FakeUsage(tokens(900, at(2024, 1, 2)), tokens(900, at(2024, 1, 25)))
    tiered = [line for line in period_lines(sub, JANUARY, CUTOFF, usage) if line.price_key == "tokens" and line.tiers]
    assert [(line.quantity, line.amount) for line in tiered] == [(900, 0), (900, 0)]  # never past the 1000 included


def test_segments_outside_the_period_give_no_lines():
    sub = subscription(Segment(STARTER, at(2023, 12, 1), JAN), Segment(PRO, JAN, FEB), Segment(STARTER, FEB))
    lines = period_lines(sub, JANUARY, CUTOFF, FakeUsage())
    assert [line.line_key for line in lines] == ["pro:base", "pro:tokens"]
    assert lines[0].description == "base"  # one plan in the period: no plan suffix, not prorated


# --- minimum commitment ------------------------------------------------------------------


def test_minimum_commitment_true_up():
    lines = period_lines(subscription(Segment(PRO, JAN)), JANUARY, CUTOFF, FakeUsage(tokens(1500, at(2024, 1, 3))))
    true_up = minimum_true_up(PRO, lines, "USD", JANUARY)
    assert true_up is not None
    assert (true_up.price_key, true_up.meter, true_up.quantity, true_up.amount) == (
        "minimum_commitment",
        None,
        1,
        D("9.50"),
    )
    assert true_up.description == "Minimum commitment true-up"


@pytest.mark.parametrize("used", [11_000, 20_000])  # 90 + 10 = 100 exactly; 90 + 19 = 109
def test_no_true_up_at_or_above_the_minimum(used):
    lines = period_lines(subscription(Segment(PRO, JAN)), JANUARY, CUTOFF, FakeUsage(tokens(used, at(2024, 1, 3))))
    assert minimum_true_up(PRO, lines, "USD", JANUARY) is None


def test_no_minimum_no_true_up():
    assert minimum_true_up(STARTER, [], "USD", JANUARY) is None


def test_true_up_compares_rounded_lines():
    plan = Plan(key="tiny", currency="USD", minimum_commitment=D(1))
    lines = [Line("a", None, "a", D(1), D("0.005")), Line("b", None, "b", D(1), D("0.994"))]  # 0.01 + 0.99
    assert minimum_true_up(plan, lines, "USD", JANUARY) is None
    lines = [Line("a", None, "a", D(1), D("0.004")), Line("b", None, "b", D(1), D("0.994"))]  # 0.00 + 0.99
    assert minimum_true_up(plan, lines, "USD", JANUARY).amount == D("0.01")


def test_a_period_cut_short_commits_to_its_share_of_the_minimum():
    """Canceled on January 11th: 10 of 31 days, so 100 x 10/31 = 32.26 committed; the flat
    fee already charged 90 x 10/31 = 29.03, so the true-up is 3.23."""
    sub = subscription(Segment(PRO, JAN), canceled_at=at(2024, 1, 11))
    period = Period(0, JAN, at(2024, 1, 11), FEB)
    lines = period_lines(sub, period, at(2024, 1, 12), FakeUsage())
    true_up = minimum_true_up(PRO, lines, "USD", period)
    assert true_up is not None and true_up.amount == D("32.26") - D("29.03")
    assert true_up.quantity == D(10) / D(31) and true_up.description == "Minimum commitment true-up, prorated 0.3226"


# --- late usage: adjustments ------------------------------------------------------------

PRO_SUB = subscription(Segment(PRO, JAN))


def test_late_usage_is_adjusted_by_price_difference_not_price_of_the_late_units():
    """900 tokens by the cutoff (all included: 0.00); 600 more arrive late. The adjustment is
    price(1500) - price(900) = 0.50, not price(600) = 0.00."""
    usage = FakeUsage(tokens(900, at(2024, 1, 15)), tokens(600, at(2024, 1, 31, 23), ingested=at(2024, 2, 3)))
    original = period_lines(PRO_SUB, JANUARY, CUTOFF, usage)
    assert amounts(original)[1] == ("LLM tokens", "900", "0.00")
    later = adjustment_lines(PRO_SUB, [JANUARY], MAR + timedelta(hours=1), usage, billed_from(JANUARY, original), "USD")
    (line,) = later
    assert (line.price_key, line.meter, line.line_key) == ("tokens", "llm_tokens", "pro:tokens")
    assert (line.quantity, line.amount) == (D(600), D("0.50"))
    assert line.period_start == JAN
    assert line.description == "Adjustment: late usage for 2024-01-01 00:00–2024-02-01 00:00 (LLM tokens)"
    assert line.as_dict("USD")["adjusts_period_start"] == JAN.isoformat()
    assert "adjusts_period_start" not in original[1].as_dict("USD")


def test_no_late_usage_no_adjustment():
    usage = FakeUsage(tokens(5000, at(2024, 1, 15)))
    original = period_lines(PRO_SUB, JANUARY, CUTOFF, usage)
    assert adjustment_lines(PRO_SUB, [JANUARY], MAR, usage, billed_from(JANUARY, original), "USD") == []


def test_flat_fees_are_never_adjusted():
    usage = FakeUsage(tokens(2000, at(2024, 1, 15), ingested=at(2024, 2, 10)))
    original = period_lines(PRO_SUB, JANUARY, CUTOFF, usage)
    lines = adjustment_lines(PRO_SUB, [JANUARY], MAR, usage, billed_from(JANUARY, original), "USD")
    assert [(line.line_key, line.amount) for line in lines] == [("pro:tokens", D("1.00"))]


def test_repeated_late_usage_is_billed_once_and_adds_up_to_the_final_price():
    """Per-unit at 0.001: 5 units billed as 0.01 (0.005 rounded up); 4 more arrive late (9 units,
    0.009, still 0.01); then 3 more (12 units, 0.012). What the period has been billed for in
    total always equals its price now, rounded: nothing billed twice, nothing lost."""
    plan = Plan.model_validate(
        {
            "key": "milli",
            "currency": "USD",
            "prices": [{"key": "u", "model": "per_unit", "meter": "llm_tokens", "unit_amount": "0.001"}],
        }
    )
    sub = subscription(Segment(plan, JAN))
    usage = FakeUsage(
        tokens(5, at(2024, 1, 2)),
        tokens(4, at(2024, 1, 3), ingested=at(2024, 2, 5)),
        tokens(3, at(2024, 1, 4), ingested=at(2024, 3, 5)),
    )
    original = period_lines(sub, JANUARY, CUTOFF, usage)
    billed = billed_from(JANUARY, original)
    first = adjustment_lines(sub, [JANUARY], MAR, usage, billed, "USD")
    assert [(line.quantity, line.amount) for line in first] == [(D(4), D("0.00"))]  # quantity changed: shown
    billed = billed_from(JANUARY, first, billed=billed)
    second = adjustment_lines(sub, [JANUARY], at(2024, 4, 1), usage, billed, "USD")
    assert [(line.quantity, line.amount) for line in second] == [(D(3), D("0.00"))]  # 0.012 -> 0.01
    billed = billed_from(JANUARY, second, billed=billed)
    assert billed[(JAN, "milli:u")][:2] == (D(12), round_money(D("0.012"), "USD"))
    assert adjustment_lines(sub, [JANUARY], at(2024, 5, 1), usage, billed, "USD") == []


def test_adjustments_cover_each_earlier_period():
    usage = FakeUsage(
        tokens(2000, at(2024, 1, 20), ingested=at(2024, 3, 2)),
        tokens(3000, at(2024, 2, 20), ingested=at(2024, 3, 2)),
    )
    february = Period(1, FEB, MAR, MAR)
    billed = billed_from(JANUARY, period_lines(PRO_SUB, JANUARY, CUTOFF, usage))
    billed = billed_from(february, period_lines(PRO_SUB, february, MAR + timedelta(hours=1), usage), billed=billed)
    lines = adjustment_lines(PRO_SUB, [JANUARY, february], at(2024, 4, 1), usage, billed, "USD")
    assert [(line.period_start, line.quantity, line.amount) for line in lines] == [
        (JAN, D(2000), D("1.00")),
        (FEB, D(3000), D("2.00")),
    ]


def test_same_plan_twice_in_a_period_is_not_adjusted_without_late_usage():
    sub = subscription(
        Segment(STARTER, JAN, at(2024, 1, 10)),
        Segment(PRO, at(2024, 1, 10), at(2024, 1, 20)),
        Segment(STARTER, at(2024, 1, 20)),
    )
    usage = FakeUsage(tokens(1000, at(2024, 1, 5)), tokens(2000, at(2024, 1, 25)))
    original = period_lines(sub, JANUARY, CUTOFF, usage)
    assert [line.line_key for line in original].count("starter:tokens") == 2
    assert adjustment_lines(sub, [JANUARY], MAR, usage, billed_from(JANUARY, original), "USD") == []


# --- finalize --------------------------------------------------------------------------

ISSUED = CUTOFF


def line(amount, key: str = "x") -> Line:
    return Line(key, None, key, D(1), D(str(amount)), line_key=f"p:{key}")


def grant(grant_id: str, amount, currency: str = "USD", **kwargs) -> Grant:
    fields = {"priority": 0, "effective_at": JAN, "expires_at": None, "voided_at": None} | kwargs
    return Grant(grant_id, "cust-1", D(str(amount)), currency, fields["priority"], fields["effective_at"],
                 fields["expires_at"], fields["voided_at"])  # fmt: skip


def plan_in(currency: str, **fields) -> Plan:
    return Plan(key="p", currency=currency, **fields)


def final(lines, currency="USD", grants=(), drawn=None, sub=PRO_SUB, period=JANUARY, kind="period", **plan_fields):
    """The invoice as its JSON document (what is stored and published), and the allocations."""
    invoice, allocations = finalize(
        sub, plan_in(currency, **plan_fields), period, list(lines), ISSUED, list(grants), dict(drawn or {}), kind
    )
    return invoice.document(), allocations


def test_finalized_invoice_adds_up():
    lines = [line("30"), line("14.516129"), line("0.005"), line("2.494")]  # 30.00 + 14.52 + 0.01 + 2.49
    data, allocations = final(lines, grants=[grant("g", 20)])
    assert [entry["amount"] for entry in data["lines"]] == ["30.00", "14.52", "0.01", "2.49"]
    assert data["subtotal"] == "47.02"
    assert data["credits_applied"] == "20.00"
    assert data["total"] == "27.02"
    assert data["credit_allocations"] == [{"grant_id": "g", "amount": "20.00", "funding": "promotional"}]
    assert [(a.grant_id, a.amount) for a in allocations] == [("g", D(20))]
    assert (data["currency"], data["kind"], data["status"], data["plan"]) == ("USD", "period", "finalized", "p")
    assert (data["subscription_id"], data["customer_id"]) == ("sub-1", "cust-1")
    assert (data["period_start"], data["period_end"]) == (JAN.isoformat(), FEB.isoformat())


def test_subtotal_is_the_sum_of_rounded_lines_not_the_rounded_sum():
    data, _ = final([line("0.005"), line("0.005")])
    assert data["subtotal"] == "0.02"  # rounding the sum (0.010) would say 0.01
    data, _ = final([line("0.004")] * 3)
    assert data["subtotal"] == "0.00"  # rounding the sum (0.012) would say 0.01


def test_credits_never_exceed_the_subtotal_and_total_is_never_negative():
    data, allocations = final([line("12.345")], grants=[grant("a", 10), grant("b", 10)])
    assert (data["subtotal"], data["credits_applied"], data["total"]) == ("12.35", "12.35", "0.00")
    assert [(a.grant_id, a.amount) for a in allocations] == [("a", D(10)), ("b", D("2.35"))]


def test_credits_respect_what_was_drawn_before():
    data, _ = final([line(50)], grants=[grant("a", 30)], drawn={"a": D(25)})
    assert (data["credits_applied"], data["total"]) == ("5.00", "45.00")


def test_credits_usable_at_the_period_end_in_the_invoice_currency_only():
    grants = [
        grant("eur", 100, currency="EUR"),
        grant("lapsed", 100, expires_at=FEB),  # expires at the period end
        grant("future", 100, effective_at=FEB + timedelta(seconds=1)),
        grant("voided", 100, voided_at=at(2024, 1, 20)),
        grant("ok", 7),
    ]
    data, _ = final([line(10)], grants=grants)
    assert data["credit_allocations"] == [{"grant_id": "ok", "amount": "7.00", "funding": "promotional"}]
    assert data["total"] == "3.00"


def test_canceled_period_applies_credits_at_its_cut_end():
    period = Period(0, JAN, at(2024, 1, 11), FEB)
    data, _ = final([line(10)], grants=[grant("g", 5, expires_at=at(2024, 1, 20))], period=period)
    assert data["credits_applied"] == "5.00" and data["period_end"] == at(2024, 1, 11).isoformat()


def test_negative_subtotal_draws_no_credit_and_totals_zero():
    data, allocations = final([line("-3.50")], grants=[grant("g", 10)])
    assert (data["subtotal"], data["credits_applied"], data["total"], allocations) == ("-3.50", "0.00", "0.00", [])


@pytest.mark.parametrize(
    ("currency", "amount", "expected"),
    [
        ("USD", "0.005", "0.01"),  # half up
        ("USD", "0.0049999", "0.00"),
        ("USD", "2.675", "2.68"),  # (a float would make this 2.67)
        ("USD", "-0.005", "-0.01"),  # half away from zero
        ("EUR", "10.125", "10.13"),
        ("JPY", "100.5", "101"),  # no minor unit
        ("JPY", "100.49", "100"),
        ("KRW", "0.5", "1"),
        ("BHD", "1.0005", "1.001"),  # three decimals
        ("BHD", "1.00049", "1.000"),
        ("KWD", "0.0125", "0.013"),
    ],
)
def test_lines_round_half_up_to_the_currency_minor_unit(currency, amount, expected):
    data, _ = final([line(amount)], currency=currency)
    assert data["lines"][0]["amount"] == expected
    assert data["subtotal"] == expected
    assert round_money(D(amount), currency) == D(expected)


def test_invoice_id_is_deterministic_per_subscription_period_and_kind():
    first, _ = final([line(1)])
    again, _ = final([line(2)], grants=[grant("g", 1)])
    assert first["invoice_id"] == again["invoice_id"] == invoice_id("sub-1", JAN)
    assert uuid.UUID(first["invoice_id"]).version == 5
    others = {
        invoice_id("sub-2", JAN),
        invoice_id("sub-1", FEB),
        invoice_id("sub-1", JAN, "adjustment"),
        final([line(1)], kind="adjustment")[0]["invoice_id"],
    }
    assert first["invoice_id"] not in others and len(others) == 3


def test_due_date_from_payment_terms():
    assert final([line(1)])[0]["due_at"] == (ISSUED + timedelta(days=14)).isoformat()  # default P14D
    data, _ = final([line(1)], payment_terms="P30D")
    assert (data["issued_at"], data["due_at"]) == (ISSUED.isoformat(), (ISSUED + timedelta(days=30)).isoformat())


def test_line_dicts():
    usage = FakeUsage(tokens(20, at(2024, 1, 2)))
    lines = period_lines(subscription(Segment(PRO, JAN)), JANUARY, CUTOFF, usage)
    data, _ = final(lines)
    january = {"start": JAN.isoformat(), "end": FEB.isoformat()}
    assert data["lines"][0] == {
        "price_key": "base", "meter": None, "description": "base", "quantity": "1", "amount": "90.00", "tiers": [],
        "unit_price": "90", "service_spans": [{**january, "quantity": "1", "amount": "90.00"}],
    }  # fmt: skip
    assert data["lines"][1]["quantity"] == "20" and data["lines"][1]["tiers"][0]["tier"] == 1
    assert data["lines"][1]["service_spans"] == [{**january, "quantity": "20", "amount": data["lines"][1]["amount"]}]


def test_amounts_always_carry_the_currency_minor_unit():
    data, _ = final([])
    assert (data["subtotal"], data["credits_applied"], data["total"]) == ("0.00", "0.00", "0.00")


def test_invoice_adds_up_with_a_grant_in_fractions_of_a_cent():
    data, _ = final([line(20)], grants=[grant("g", "10.005")])
    assert D(data["subtotal"]) == D(data["credits_applied"]) + D(data["total"])


def test_the_readme_s_id_recipes_recompute_the_ids():
    import re
    from pathlib import Path

    from bastionary.credits.ledger import movement_id
    from bastionary.rating.credit_notes import credit_note_id

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    invoice_ns, note_ns, movement_ns = re.findall(r"uuid5\(([0-9a-f-]{36}),", readme)[:3]
    start = datetime(2026, 11, 1, tzinfo=UTC)
    assert invoice_id("sub-1", start) == str(uuid.uuid5(uuid.UUID(invoice_ns), f"sub-1|period|{start.isoformat()}"))
    assert credit_note_id("c1", "cn-1") == str(uuid.uuid5(uuid.UUID(note_ns), "c1|cn-1"))
    assert movement_id("applied", "g", "inv") == str(uuid.uuid5(uuid.UUID(movement_ns), "applied|g|inv"))


def test_a_lines_tiers_are_written_at_the_plans_currency():
    """README (Rating): amounts at the currency's precision, quantities and rates exact."""
    sub = subscription(Segment(PRO, JAN, FEB))
    usage = FakeUsage(tokens(1500, at(2024, 1, 2)))
    (line,) = [line for line in period_lines(sub, JANUARY, CUTOFF, usage) if line.tiers]
    assert line.as_dict("USD")["tiers"] == [
        {"tier": 1, "up_to": "1000", "units": "1000", "unit_amount": "0", "flat_amount": "0.00", "amount": "0.00"},
        {"tier": 2, "up_to": None, "units": "500", "unit_amount": "0.001", "flat_amount": "0.00", "amount": "0.50"},
    ]  # fmt: skip
