"""A subscription that starts before its billing anchor (docs/pricing.md, "Billing periods"):
periods count back from the anchor, so the stub from the start to the anchor is billed as a
first period that starts late is, prorated from the start, its usage included, over the
in-memory store of ``test_rater``. A subscription whose anchor is at or before its start is
billed as before (its first period is the anchor's)."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastionary.entitlements.state import plan_and_period
from bastionary.money import round_money
from bastionary.rating.invoice import ADVANCE, invoice_id
from bastionary.rating.periods import Interval
from bastionary.rating.plans import Plan
from bastionary.rating.rater import Rater, upcoming_invoices
from bastionary.rating.schedule import (
    FINAL_ADJUSTMENT,
    PROGRESSIVE,
    closed_periods,
    first_index,
    nth_period,
    open_period,
    upcoming_period,
)
from bastionary.rating.subscriptions import SubscriptionEvent

from .test_rater import FEB, GRACE, JAN, MAR, TOKENS, FakeBillingStore, FakePublisher, at

D = Decimal
JAN_17 = at(2024, 1, 17)


def plan(key: str, interval: str = "P1M", fee: str = "31", timing: str = "arrears", **more: Any) -> Plan:
    return Plan.model_validate(
        {
            "key": key,
            "currency": "USD",
            "billing_interval": interval,
            "prices": [
                {"key": "base", "model": "flat", "amount": fee, "billing_timing": timing},
                {"key": "tokens", "model": "per_unit", "meter": "llm_tokens", "unit_amount": "0.01"},
            ],
            **more,
        }
    )


MONTHLY = plan("monthly")
BIGGER = plan("bigger", fee="62")
WEEKLY = plan("weekly", "P7D", fee="7")
ADV = plan("adv", timing="advance")
STEPS = plan("steps", usage_thresholds=["50"])
MINIMUM = plan("minimum", minimum_commitment="62")
PLANS = [MONTHLY, BIGGER, WEEKLY, ADV, STEPS, MINIMUM]


def store_on(
    plan_key: str, start: datetime = JAN_17, anchor: datetime | None = FEB, received: datetime | None = None
) -> FakeBillingStore:
    store = FakeBillingStore()
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "created", plan_key, start, anchor, start, received))
    return store


def rater(store: FakeBillingStore, **more: Any) -> Rater:
    return Rater(store, PLANS, [TOKENS], GRACE, FakePublisher(), **more)


def subscription(store: FakeBillingStore):
    (sub,) = store.subscriptions({p.key: p for p in PLANS})
    return sub


def lines(document: dict[str, Any]) -> list[tuple[str, str]]:
    return [(line["description"], line["amount"]) for line in document["lines"]]


def per_key(invoices: list[dict[str, Any]]) -> dict[str, Decimal]:
    out: dict[str, Decimal] = defaultdict(Decimal)
    for invoice in invoices:
        for line in invoice["lines"]:
            out[line["price_key"]] += D(line["amount"])
    return dict(out)


# --- the stub period ---------------------------------------------------------------------


async def test_usage_and_fee_between_the_start_and_a_later_anchor_are_billed():
    """The known bug's example (it was lost before 2026-12-04): start 17 January, anchor
    1 February. January's usage, and 15/31 of January's fee, are billed on an invoice for
    the period before the anchor, under the id its start gives, as any period's."""
    store = store_on("monthly")
    store.use("cust-1", 1000, at(2024, 1, 20))  # 10.00 of January usage
    store.use("cust-1", 500, at(2024, 1, 10))  # before the start: not the subscription's
    january, february = (await rater(store).run_once(MAR + timedelta(hours=2))).invoices
    assert (january["invoice_id"], january["period_start"], january["period_end"]) == (
        invoice_id("sub-1", JAN),
        JAN.isoformat(),
        FEB.isoformat(),
    )
    assert lines(january) == [("base, prorated 0.4839", "15.00"), ("tokens", "10.00")]
    assert (february["invoice_id"], lines(february)) == (
        invoice_id("sub-1", FEB),
        [("base", "31.00"), ("tokens", "0.00")],
    )
    assert per_key([january, february]) == {"tokens": D("10.00"), "base": D("46.00")}


def test_the_first_period_is_the_one_before_the_anchor_that_holds_the_start():
    sub = subscription(store_on("monthly"))
    assert first_index(sub) == -1
    stub = nth_period(sub, -1)
    assert stub is not None and (stub.start, stub.end, stub.full_end) == (JAN, FEB, FEB)
    assert [(p.index, p.start) for p, _ in closed_periods(sub, MAR + timedelta(hours=2), GRACE)] == [
        (-1, JAN),
        (0, FEB),
    ]
    # The anchor at or before the start: the anchor's period first, as before.
    for anchor in (JAN_17, JAN, None):
        assert first_index(subscription(store_on("monthly", anchor=anchor))) == 0


async def test_every_period_between_the_start_and_the_anchor_counts_back():
    """Weekly from 1 February, started on 1 January: five weeks back, the first holding 1 January
    (28 December to 4 January, 3 of its 7 days billed)."""
    store = store_on("weekly", start=JAN)
    for day in range(1, 32):
        store.use("cust-1", 100, at(2024, 1, day, 12))
    invoices = (await rater(store).run_once(FEB + timedelta(hours=2))).invoices
    starts = [at(2023, 12, 28), at(2024, 1, 4), at(2024, 1, 11), at(2024, 1, 18), at(2024, 1, 25)]
    assert [i["period_start"] for i in invoices] == [s.isoformat() for s in starts]
    assert lines(invoices[0]) == [("base, prorated 0.4286", "3.00"), ("tokens", "3.00")]
    assert per_key(invoices) == {"base": D("31.00"), "tokens": D("31.00")}  # a day's fee, and usage, per day
    assert len({i["invoice_id"] for i in invoices}) == 5
    assert first_index(subscription(store)) == -5


async def test_the_stub_commits_to_its_share_of_the_minimum():
    store = store_on("minimum")
    store.use("cust-1", 500, at(2024, 1, 20))
    january, february = (await rater(store).run_once(MAR + timedelta(hours=2))).invoices
    assert lines(january) == [
        ("base, prorated 0.4839", "15.00"),
        ("tokens", "5.00"),
        ("Minimum commitment true-up, prorated 0.4839", "10.00"),  # 62 x 15/31 = 30.00
    ]
    assert lines(february)[-1] == ("Minimum commitment true-up", "31.00")


async def test_a_cancellation_inside_the_stub_ends_the_subscription_there():
    store = store_on("monthly")
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "canceled", "", None, None, at(2024, 1, 25)))
    store.use("cust-1", 300, at(2024, 1, 20))
    rate = rater(store)
    (january,) = (await rate.run_once(at(2024, 1, 25, 1, 30))).invoices  # its cutoff: 01:00
    assert (january["period_start"], january["period_end"]) == (JAN.isoformat(), at(2024, 1, 25).isoformat())
    assert lines(january) == [("base, prorated 0.2581", "8.00"), ("tokens", "3.00")]  # 8 of 31 days
    assert nth_period(subscription(store), 0) is None  # no period at the anchor
    store.use("cust-1", 200, at(2024, 1, 21), ingested=at(2024, 1, 25, 1, 45))  # late
    (final,) = (await rate.run_once(at(2024, 1, 25, 3))).invoices  # the final cutoff: 02:00
    assert (final["invoice_id"], final["kind"]) == (invoice_id("sub-1", JAN, FINAL_ADJUSTMENT), FINAL_ADJUSTMENT)
    assert [line["amount"] for line in final["lines"]] == ["2.00"]


async def test_a_plan_change_inside_the_stub_prorates_both_plans():
    store = store_on("monthly")
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "bigger", None, None, at(2024, 1, 24)))
    january, _ = (await rater(store).run_once(MAR + timedelta(hours=2))).invoices
    assert january["plans"] == ["monthly", "bigger"]
    fees = [(d, a) for d, a in lines(january) if d.startswith("base")]
    assert fees == [("base (monthly), prorated 0.2258", "7.00"), ("base (bigger), prorated 0.2581", "16.00")]


async def test_late_stub_usage_is_adjusted_on_the_anchor_s_invoice():
    store = store_on("monthly")
    rate = rater(store)
    await rate.run_once(FEB + timedelta(hours=2))
    store.use("cust-1", 400, at(2024, 1, 30), ingested=FEB + timedelta(hours=3))
    (february,) = (await rate.run_once(MAR + timedelta(hours=2))).invoices
    (adjustment,) = [line for line in february["lines"] if line.get("adjusts_period_start")]
    assert (adjustment["adjusts_period_start"], adjustment["amount"]) == (JAN.isoformat(), "4.00")


# --- fees in advance ---------------------------------------------------------------------


async def test_a_fee_in_advance_is_billed_for_the_stub_at_the_start():
    """The first advance invoice is at the start (not the anchor), for the stub's share; the
    stub's own invoice then bills the anchor's period in advance, as any period's does."""
    store = store_on("adv")
    rate = rater(store)
    (opening,) = (await rate.run_once(JAN_17 + timedelta(minutes=1))).invoices
    assert (opening["kind"], opening["invoice_id"]) == (ADVANCE, invoice_id("sub-1", JAN_17, ADVANCE))
    (fee,) = opening["lines"]
    assert (fee["amount"], fee["service_period_start"], fee["service_period_end"]) == (
        "15.00",
        JAN.isoformat(),
        FEB.isoformat(),
    )
    (january,) = (await rate.run_once(FEB + timedelta(hours=2))).invoices
    assert lines(january) == [("tokens", "0.00"), ("base", "31.00")]
    assert january["lines"][1]["service_period_start"] == FEB.isoformat()
    (february,) = (await rate.run_once(MAR + timedelta(hours=2))).invoices
    assert february["lines"][-1]["service_period_start"] == MAR.isoformat()  # no advance invoice at the anchor


async def test_upgrading_bills_a_stub_left_unbilled_once_and_nothing_else_again():
    """A version that did not bill the stub rated the anchor's periods (and its fee in advance
    at the anchor) as for a subscription starting on the anchor: the same invoices. The first
    run after the upgrade bills the stub's fee in advance at the start and the stub's period,
    whose late usage counts, and bills the anchor's period nothing again."""
    store = store_on("adv", start=FEB)
    store.use("cust-1", 900, at(2024, 1, 20))
    rate = rater(store)
    before = (await rate.run_once(MAR + timedelta(hours=2))).invoices
    assert [(i["kind"], i["period_start"]) for i in before] == [(ADVANCE, FEB.isoformat()), ("period", FEB.isoformat())]
    store.events[0] = store.events[0]._replace(start=JAN_17, effective_at=JAN_17)  # as it was received
    opening, january = (await rate.run_once(MAR + timedelta(hours=3))).invoices
    assert (opening["invoice_id"], lines(opening)) == (
        invoice_id("sub-1", JAN_17, ADVANCE),
        [("base, prorated 0.4839", "15.00")],
    )
    assert (january["invoice_id"], lines(january)) == (invoice_id("sub-1", JAN), [("tokens", "9.00")])
    assert (await rate.run_once(MAR + timedelta(hours=4))).invoices == []
    seat = defaultdict(Decimal)
    for line in store.lines.values():
        if line.line_key == "adv:base":
            seat[line.period_start] += line.amount
    assert dict(seat) == {JAN: D("15.00"), FEB: D("31.00"), MAR: D("31.00")}


# --- what reads the open period ----------------------------------------------------------


async def test_the_upcoming_invoice_during_the_stub_is_the_stub_s():
    store = store_on("monthly")
    store.use("cust-1", 700, at(2024, 1, 18))
    sub = subscription(store)
    found = upcoming_period(sub, at(2024, 1, 20), GRACE, set())
    assert found is not None
    earlier, period, cutoff = found
    assert (earlier, period.start, period.end, cutoff) == ([], JAN, FEB, FEB + GRACE)
    rate = rater(store)
    (preview,) = upcoming_invoices(store, rate, "cust-1", at(2024, 1, 20))
    assert (preview["invoice_id"], lines(preview)) == (
        invoice_id("sub-1", JAN),
        [("base, prorated 0.4839", "15.00"), ("tokens", "7.00")],
    )
    (issued,) = (await rate.run_once(FEB + timedelta(hours=2))).invoices
    assert issued == preview | {"status": "finalized"}
    # Rated: February's is next; earlier periods are the stub.
    _, period, _ = upcoming_period(sub, at(2024, 2, 10), GRACE, {issued["invoice_id"]})
    assert period.start == FEB


async def test_a_usage_threshold_reached_in_the_stub_bills_progressively():
    store = store_on("steps")
    store.use("cust-1", 6000, at(2024, 1, 18))  # 60.00, past the 50.00 threshold
    sub = subscription(store)
    assert open_period(sub, at(2024, 1, 20)) == nth_period(sub, -1)
    assert open_period(sub, at(2023, 12, 31)) is None
    (progressive,) = (await rater(store).run_once(at(2024, 1, 20))).invoices
    assert (progressive["kind"], progressive["period_start"]) == (PROGRESSIVE, JAN.isoformat())
    assert lines(progressive) == [("tokens", "60.00")]


def test_entitlements_count_usage_over_the_stub_period_with_a_fixed_interval():
    """A fixed interval before the anchor: the period holding the moment (was the anchor's)."""
    store = store_on("weekly", start=JAN)
    _, start, end = plan_and_period(subscription(store), at(2024, 1, 2))
    assert (start, end) == (at(2023, 12, 28), at(2024, 1, 4))


async def test_a_stub_that_ended_before_the_subscription_was_received_is_a_backfill():
    store = store_on("monthly", received=at(2024, 2, 10))
    (february,) = (await rater(store).run_once(MAR + timedelta(hours=2))).invoices
    assert february["period_start"] == FEB.isoformat()
    backfill = store_on("monthly", received=at(2024, 2, 10))
    invoices = (await rater(backfill, backfill=True).run_once(MAR + timedelta(hours=2))).invoices
    assert [(i["period_start"], i["backfill"]) for i in invoices] == [(JAN.isoformat(), True), (FEB.isoformat(), False)]


# --- any start, anchor and interval ------------------------------------------------------

INTERVALS = {"P1M": 31, "P3M": 92, "P1Y": 366, "P7D": 7, "P1D": 1, "PT6H": 0.25}  # days, roughly


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    interval=st.sampled_from(sorted(INTERVALS)),
    start_minute=st.integers(0, 366 * 24 * 60),
    anchor_at=st.floats(-1.5, 3.2),  # in intervals after the start
    length=st.floats(0.01, 3.5),  # in intervals
    timing=st.sampled_from(["arrears", "advance"]),
    uses=st.lists(st.floats(-0.5, 4.0), max_size=6),  # in intervals from the start
)
async def test_the_periods_billed_tile_the_subscription_and_bill_its_fee_and_usage_once(
    interval: str, start_minute: int, anchor_at: float, length: float, timing: str, uses: list[float]
) -> None:
    """Started anywhere, anchored anywhere before or after the start, canceled after a while:
    the period invoices' periods, cut to the start, tile [start, cancellation) with no gap or
    overlap; their ids are distinct; the fee billed is the fee times the share of each period
    the subscription ran, summed (each period's rounded); and the usage inside [start,
    cancellation) is billed once, none outside it."""
    some = plan("some", interval, fee="100", timing=timing)
    days = timedelta(days=INTERVALS[interval])
    minutes = lambda x: timedelta(minutes=round(x * days / timedelta(minutes=1)))  # noqa: E731
    start = at(2023, 1, 1) + timedelta(minutes=start_minute)
    anchor, end = start + minutes(anchor_at), start + max(minutes(length), timedelta(minutes=1))
    store = FakeBillingStore()
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "created", "some", start, anchor, start))
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "canceled", "", None, None, end))
    inside = 0
    for k, use in enumerate(uses):
        moment = start + minutes(use)
        store.use("cust-1", 100 + k, moment)
        inside += (100 + k) if start <= moment < end else 0
    now = end + 4 * GRACE + timedelta(days=1)
    invoices = (await Rater(store, [some], [TOKENS], GRACE, FakePublisher()).run_once(now)).invoices
    assert len({i["invoice_id"] for i in invoices}) == len(invoices)
    # An anchor more than a period before the start still gives empty invoices for the
    # periods wholly before the start, as it did before the stub was billed: left out here.
    periods = [i for i in invoices if i["kind"] == "period" and datetime.fromisoformat(i["period_end"]) > start]
    windows = [
        (max(datetime.fromisoformat(i["period_start"]), start), datetime.fromisoformat(i["period_end"]))
        for i in periods
    ]
    assert windows[0][0] == start and windows[-1][1] == end
    assert all(lo < hi for lo, hi in windows)
    assert all(a[1] == b[0] for a, b in pairwise(windows))
    # The fee expected, from the interval's boundaries alone.
    parsed, expected = Interval.parse(interval), D(0)
    n_first = n = parsed.period_containing(anchor, start)[0]
    while (lo := parsed.nth_boundary(anchor, n)) < end:
        hi = parsed.nth_boundary(anchor, n + 1)
        ran = (min(hi, end) - max(lo, start)).total_seconds()
        if ran > 0:
            expected += round_money(D(100) * D(str(ran)) / D(str((hi - lo).total_seconds())), "USD")
        n += 1
    billed = per_key(invoices)
    assert billed.get("base", D(0)) == expected
    assert billed.get("tokens", D(0)) == D(inside) / 100
    (sub,) = store.subscriptions({"some": some})
    assert first_index(sub) == (0 if sub.anchor <= sub.segments[0].start else n_first)
