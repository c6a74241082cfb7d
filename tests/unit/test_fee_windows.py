"""A fee's share given back is credited at what was paid for that span of the period, and a
share added is charged at today's fee (rating/service_windows.py, ``invoice_lines.windows``).

Until 2026-12-06 what a key billed was kept as sums, so a share given back was credited at the
average of what its parts were paid (the second of the README's known bugs until then)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from itertools import pairwise

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bastionary.money import round_money
from bastionary.rating.billed import NOTHING_BILLED
from bastionary.rating.invoice import stored_quantity
from bastionary.rating.plans import Plan
from bastionary.rating.rater import Rater
from bastionary.rating.render import render_html
from bastionary.rating.service_windows import ServiceWindow, fee_unchanged, net_windows, owed_windows, spans_moved
from bastionary.rating.subscriptions import SubscriptionEvent
from tests.unit.test_minimum_adjustments import per_period
from tests.unit.test_rater import (
    AFTER_APR,
    AFTER_FEB,
    AFTER_JAN,
    AFTER_MAR,
    FEB,
    GRACE,
    MAR,
    TOKENS,
    FakeBillingStore,
    FakePublisher,
    at,
)

D = Decimal
FEBRUARY = MAR - FEB  # 29 days: 2024


def _plan(key: str, **extra: object) -> Plan:
    return Plan.model_validate({"key": key, "currency": "USD", "billing_interval": "P1M", **extra})


def _adv(key: str, fee: str) -> Plan:
    return _plan(key, prices=[{"key": "base", "model": "flat", "amount": fee, "billing_timing": "advance"}])


def _arrears(key: str, fee: str) -> Plan:
    return _plan(key, prices=[{"key": "base", "model": "flat", "amount": fee}])


def _window(first_day: int, end_day: int, fee: str) -> ServiceWindow:
    """February from ``first_day`` to ``end_day`` (30: 1 March) at ``fee`` per month, as stored."""
    start, end = at(2024, 2, first_day), MAR if end_day == 30 else at(2024, 2, end_day)
    share = stored_quantity(D(str((end - start).total_seconds())) / D(str(FEBRUARY.total_seconds())))
    return ServiceWindow(start, end, share, round_money(D(fee) * share, "USD"))


def _spans_add_up(store: FakeBillingStore) -> int:
    """Every stored fee line that bills something has windows, and bills what they bill, share
    and amount; returns how many there are."""
    fees = [line for line in store.lines.values() if line.line_key.endswith(":base") and (line.quantity or line.amount)]
    for line in fees:
        assert line.windows, line
        assert sum(w.quantity for w in line.windows) == line.quantity, line
        assert sum(w.amount for w in line.windows) == line.amount, line
    return len(fees)


async def test_a_share_added_at_today_s_fee_is_given_back_at_that_fee():
    """February's fee (a, 30.00) billed in advance on January's invoice. The catalog raises a
    to 50.00. On time: a -> b on 10 February (a keeps 9/29: 9.31, b 60 x 20/29), b -> a on
    20 February (a adds 10/29 at today's 50.00: +17.24, b cut to 10/29). A cancellation
    effective 15 February then arrives before February's invoice: a keeps only its first 9/29
    (paid 9.31), b 5/29 (10.34): 19.65. The span given back, 20 February on, is credited at the
    17.24 it was charged; at the average of what a was billed (26.55 x 9/19) a stayed 12.58 and
    February cost 22.92."""
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1", plan="a")
    invoices = (
        await Rater(store, [_adv("a", "30"), _adv("b", "60")], [TOKENS], GRACE, FakePublisher()).run_once(AFTER_JAN)
    ).invoices
    rate = Rater(store, [_adv("a", "50"), _adv("b", "60")], [TOKENS], GRACE, FakePublisher())
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "b", None, None, at(2024, 2, 10)))
    invoices += (await rate.run_once(at(2024, 2, 10) + 4 * GRACE)).invoices
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "a", None, None, at(2024, 2, 20)))
    invoices += (await rate.run_once(at(2024, 2, 20) + 4 * GRACE)).invoices
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "canceled", "a", None, None, at(2024, 2, 15)))
    invoices += (await rate.run_once(AFTER_FEB)).invoices
    assert per_period(invoices)[FEB.isoformat()] == D("19.65")
    billed = store.billed("sub-1")
    assert billed[(FEB, "a:base")].windows == (_window(1, 10, "30"),)
    assert billed[(FEB, "b:base")].windows == (_window(10, 15, "60"),)
    assert _spans_add_up(store) == 8


async def test_a_share_added_at_today_s_fee_is_given_back_at_that_fee_in_arrears():
    """The same in arrears: February billed a 9/29 (9.31 at 30.00) and b 20/29 (41.38). The
    catalog raises a to 50.00; b -> a on 20 February, received in March, adds 10/29 at 17.24;
    a cancellation effective 15 February, received in April, gives it back at that: February
    ends 9.31 + 10.34 = 19.65 (at the average, 22.92)."""
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1", plan="a")
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "b", None, None, at(2024, 2, 10)))
    rate = Rater(store, [_arrears("a", "30"), _arrears("b", "60")], [TOKENS], GRACE, FakePublisher())
    invoices = (await rate.run_once(AFTER_JAN)).invoices + (await rate.run_once(AFTER_FEB)).invoices
    rate = Rater(store, [_arrears("a", "50"), _arrears("b", "60")], [TOKENS], GRACE, FakePublisher())
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "a", None, None, at(2024, 2, 20)))
    invoices += (await rate.run_once(AFTER_MAR)).invoices
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "canceled", "a", None, None, at(2024, 2, 15)))
    invoices += (await rate.run_once(AFTER_APR)).invoices
    assert per_period(invoices)[FEB.isoformat()] == D("19.65")
    assert _spans_add_up(store) > 0


async def test_the_span_given_back_is_the_one_paid_at_the_old_fee_though_a_newer_one_was_added_last():
    """On b (free) since January; a (30.00 in advance) from 10 February: +20.69 for 20/29. The
    catalog raises a to 50.00, then a backdated change moves a's start to 5 February: +8.62 for
    5/29 at 50.00. A cancellation effective 25 February gives back 25 February on, a span
    paid at 30.00, though the last share added was paid at 50.00: a keeps 8.62 + 30 x 15/29
    (15.52) = 24.14. (At the average of what a billed it would keep 23.45; giving back the
    last share added first, at 50.00, 22.41.)"""
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1", plan="b")
    rate = Rater(store, [_adv("a", "30"), _adv("b", "0")], [TOKENS], GRACE, FakePublisher())
    invoices = (await rate.run_once(AFTER_JAN)).invoices
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "a", None, None, at(2024, 2, 10)))
    invoices += (await rate.run_once(at(2024, 2, 10) + 4 * GRACE)).invoices
    assert per_period(invoices)[FEB.isoformat()] == D("20.69")
    rate = Rater(store, [_adv("a", "50"), _adv("b", "0")], [TOKENS], GRACE, FakePublisher())
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "a", None, None, at(2024, 2, 5)))
    invoices += (await rate.run_once(at(2024, 2, 12) + 4 * GRACE)).invoices
    assert per_period(invoices)[FEB.isoformat()] == D("29.31")
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "canceled", "a", None, None, at(2024, 2, 25)))
    invoices += (await rate.run_once(AFTER_FEB)).invoices
    assert per_period(invoices)[FEB.isoformat()] == D("24.14")
    assert _spans_add_up(store) > 0


def assert_spans_add_up_to_their_lines(invoices: list[dict]) -> None:
    """Every invoice line's ``service_spans`` bill what the line bills, share and amount."""
    for invoice in invoices:
        for line in invoice["lines"]:
            spans = line.get("service_spans")
            if spans:
                assert sum(D(span["amount"]) for span in spans) == D(line["amount"]), line
                assert sum(D(span["quantity"]) for span in spans) == stored_quantity(D(line["quantity"])), line


# --- the arithmetic ----------------------------------------------------------------------


def test_an_adjustment_s_windows_replace_what_it_adjusts():
    paid = _window(1, 30, "30")
    kept = _window(1, 10, "30")
    assert net_windows([paid, paid.negated(), kept]) == (kept,)
    assert net_windows([paid, paid.negated()]) == ()
    # A window billed twice (two invoices each billing it) stays twice until both are replaced.
    assert net_windows([paid, paid, paid.negated()]) == (paid,)


def test_a_window_covered_by_what_was_billed_owes_what_was_paid_for_it():
    billed = (_window(1, 10, "30"), _window(20, 30, "50"))  # 9.31 and 17.24
    now = (_window(1, 10, "99"), _window(20, 25, "99"), _window(10, 15, "60"))
    owed = owed_windows(now, D(60), billed, "USD")
    # The first whole, half of the second's span (17.24 / 2), the third new at today's 60.00.
    assert [w.amount for w in owed] == [D("9.31"), D("8.62"), D("10.34")]
    assert not fee_unchanged(D(50), billed, "USD") and fee_unchanged(D(30), billed[:1], "USD")


# Cut points of windows: days of February, 30 standing for 1 March.
_cuts = st.lists(st.integers(min_value=1, max_value=30), min_size=2, max_size=6, unique=True).map(sorted)
_fees = st.decimals(min_value=0, max_value=10_000, places=2, allow_nan=False, allow_infinity=False)


@given(_cuts, _fees, _fees)
def test_windows_owed_as_billed_cost_what_was_paid_and_a_split_moves_each_part_by_under_a_cent(cuts, old, new):
    spans = list(pairwise(cuts))
    billed = tuple(_window(lo, hi, str(old)) for lo, hi in spans)
    # Nothing moved: each window owes exactly what was paid, whatever today's fee.
    assert owed_windows(billed, new, billed, "USD") == billed
    # Each window split at a day inside it: the parts owe what the window was paid, each
    # rounded once, so together within half a cent per part.
    parts = []
    for lo, hi in spans:
        middle = (lo + hi) // 2
        parts += [(lo, middle), (middle, hi)] if lo < middle < hi else [(lo, hi)]
    owed = owed_windows([_window(lo, hi, "0") for lo, hi in parts], new, billed, "USD")
    assert abs(sum(w.amount for w in owed) - sum(w.amount for w in billed)) <= D("0.005") * len(owed)


@given(_cuts, _fees)
def test_a_window_billed_for_the_first_time_owes_today_s_fee(cuts, fee):
    windows = tuple(_window(lo, hi, "0") for lo, hi in pairwise(cuts))
    owed = owed_windows(windows, fee, (), "USD")
    assert [w.amount for w in owed] == [round_money(fee * w.quantity, "USD") for w in windows]


# --- spans that move without moving a share -------------------------------------------------


async def _a_b_a_moved(plans: list[Plan], raised: list[Plan]) -> tuple[FakeBillingStore, list[dict], Rater]:
    """February billed a 1-10 and 20-29 (19/29), b 10-20 (10/29); the catalog then changes to
    ``raised``, and changes effective 5 and 15 February arrive: a 1-5 and 15-29, b 5-15. Every
    plan keeps its share of February; the spans move."""
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1", plan="a")
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "b", None, None, at(2024, 2, 10)))
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "a", None, None, at(2024, 2, 20)))
    rate = Rater(store, plans, [TOKENS], GRACE, FakePublisher())
    invoices = (await rate.run_once(AFTER_JAN)).invoices + (await rate.run_once(AFTER_FEB)).invoices
    rate = Rater(store, raised, [TOKENS], GRACE, FakePublisher())
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "b", None, None, at(2024, 2, 5)))
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "a", None, None, at(2024, 2, 15)))
    invoices += (await rate.run_once(AFTER_MAR)).invoices
    return store, invoices, rate


def _bills_the_moved_spans(store: FakeBillingStore) -> None:
    """After :func:`_a_b_a_moved`: a still bills 1-5 and 15-29 February, b 5-15 (in two spans)."""
    billed = store.billed("sub-1")
    assert [(w.start, w.end) for w in billed[(FEB, "a:base")].windows] == [
        (at(2024, 2, 1), at(2024, 2, 5)),
        (at(2024, 2, 15), at(2024, 2, 20)),
        (at(2024, 2, 20), MAR),
    ]
    assert [(w.start, w.end) for w in billed[(FEB, "b:base")].windows] == [
        (at(2024, 2, 5), at(2024, 2, 10)),
        (at(2024, 2, 10), at(2024, 2, 15)),
    ]


async def test_a_fee_s_spans_follow_a_change_that_moves_them_without_moving_its_share():
    """In arrears, a at 30.00, b at 60.00; the catalog raises a to 50.00 before the changes
    arrive. a gives back 5-10 February (paid at 30.00: 9.31 x 5/9, 5.17) and adds 15-20 at
    50.00 (8.62): +3.45; b keeps its 10/29, now 5-10 and 10-15 (two changes, so two spans) at
    10.34 each: -0.01. What each still bills is its spans as they are now: a later cancellation
    gives back what was paid for the span it cuts."""
    store, invoices, rate = await _a_b_a_moved(
        [_arrears("a", "30"), _arrears("b", "60")], [_arrears("a", "50"), _arrears("b", "60")]
    )
    _bills_the_moved_spans(store)
    assert per_period(invoices)[FEB.isoformat()] == D("9.31") + D("10.34") + D("20.69") + D("3.45") - D("0.01")
    assert _spans_add_up(store) > 0
    # March's invoice shows what a's adjustment gave back and billed (20 February on nets out).
    march = render_html(invoices[-1])
    for note in ("Given back for 1\u20139 Feb 2024: -9.31 USD", "For 1\u20134 Feb 2024: 4.14 USD",
                 "For 15\u201319 Feb 2024: 8.62 USD"):  # fmt: skip
        assert note in march, note
    assert "20\u201329 Feb 2024" not in march
    # The catalog raises a again; a cancellation effective 25 February gives back 25-29 at
    # the 30.00 it was paid, and keeps 15-20 at the 50.00 it was charged, not today's 70.00.
    rate = Rater(store, [_arrears("a", "70"), _arrears("b", "60")], [TOKENS], GRACE, FakePublisher())
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "canceled", "a", None, None, at(2024, 2, 25)))
    invoices += (await rate.run_once(AFTER_APR)).invoices
    assert per_period(invoices)[FEB.isoformat()] == D("4.14") + D("8.62") + D("5.17") + D("20.68")
    assert_spans_add_up_to_their_lines(invoices)


async def test_a_fee_in_advance_follows_its_spans_too():
    """The same with both fees billed in advance, on January's invoice: February moves by
    +3.45 - 0.01 as in arrears."""
    store, invoices, _ = await _a_b_a_moved([_adv("a", "30"), _adv("b", "60")], [_adv("a", "50"), _adv("b", "60")])
    assert per_period(invoices)[FEB.isoformat()] == D("9.31") + D("10.34") + D("20.69") + D("3.45") - D("0.01")
    _bills_the_moved_spans(store)
    assert _spans_add_up(store) > 0


async def test_a_change_to_the_plan_already_held_moves_no_span():
    """A change to a at 20 February, a being held then, cuts a's span in two: no share and no
    span moved, so even with the fee raised since nothing is billed again."""
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1", plan="a")
    rate = Rater(store, [_arrears("a", "30")], [TOKENS], GRACE, FakePublisher())
    invoices = (await rate.run_once(AFTER_JAN)).invoices + (await rate.run_once(AFTER_FEB)).invoices
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "a", None, None, at(2024, 2, 20)))
    rate = Rater(store, [_arrears("a", "50")], [TOKENS], GRACE, FakePublisher())
    invoices += (await rate.run_once(AFTER_MAR)).invoices
    assert per_period(invoices)[FEB.isoformat()] == D("30.00")


@given(_cuts, st.integers(min_value=1, max_value=30))
def test_spans_cut_in_two_did_not_move_and_spans_shifted_did(cuts, extra):
    billed = tuple(_window(lo, hi, "30") for lo, hi in pairwise(cuts))
    inside = {extra} if cuts[0] < extra < cuts[-1] else set()
    split = tuple(_window(lo, hi, "50") for lo, hi in pairwise(sorted({*cuts, *inside})))
    assert not spans_moved(split, billed) and not spans_moved(billed, split)
    assert not spans_moved(billed[:1], None)  # not known span by span: not told
    if len(billed) > 1:
        assert spans_moved(billed[1:], billed) and spans_moved(billed[:-1], billed)
    # The same time, shifted by a day: moved.
    if cuts[-1] < 30:
        shifted = tuple(_window(lo + 1, hi + 1, "30") for lo, hi in pairwise(cuts))
        assert spans_moved(shifted, billed)


_changes = st.lists(st.tuples(st.integers(2, 28), st.sampled_from("ab")), max_size=3, unique_by=lambda c: c[0])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_changes, _changes, st.sampled_from(["arrears", "advance"]), st.sampled_from(["30", "50"]))
@example([(10, "b"), (20, "a")], [(5, "b"), (15, "a")], "arrears", "30")  # spans moved, shares kept
@example([(10, "b"), (20, "a")], [(5, "b"), (15, "a")], "advance", "50")
def test_whatever_changes_arrive_late_a_fee_ends_billing_its_spans_as_they_are(on_time, late, timing, raised):
    """February's plan changes, some rated on time and some arriving in March after the
    catalog changed a's fee: after March's invoice, each fee's spans still billed for
    February are the subscription's spans of its plan, and April's invoice adjusts nothing
    of February (the spans, once billed again, are settled)."""
    late = [(day, plan) for day, plan in late if day not in {d for d, _ in on_time}]

    def plans(fee_a: str) -> list[Plan]:
        return [_adv(k, f) if timing == "advance" else _arrears(k, f) for k, f in (("a", fee_a), ("b", "60"))]

    async def run() -> tuple[FakeBillingStore, list[dict]]:
        store = FakeBillingStore()
        store.subscribe("sub-1", "cust-1", plan="a")
        for day, plan in on_time:
            store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", plan, None, None, at(2024, 2, day)))
        rate = Rater(store, plans("30"), [TOKENS], GRACE, FakePublisher())
        await rate.run_once(AFTER_JAN)
        await rate.run_once(AFTER_FEB)
        for day, plan in late:
            store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", plan, None, None, at(2024, 2, day)))
        rate = Rater(store, plans(raised), [TOKENS], GRACE, FakePublisher())
        await rate.run_once(AFTER_MAR)
        return store, (await rate.run_once(AFTER_APR)).invoices

    store, april = asyncio.run(run())
    assert not [line for invoice in april for line in invoice["lines"] if FEB.isoformat() in str(line)]
    cuts = [(1, "a"), *sorted(on_time + late), (30, "")]
    billed = store.billed("sub-1")
    for plan in "ab":
        expected = [_window(lo, hi, "0") for (lo, held), (hi, _) in pairwise(cuts) if held == plan and lo < hi]
        windows = billed.get((FEB, f"{plan}:base"), NOTHING_BILLED).windows
        assert windows is not None and _time(windows) == _time(expected), (plan, windows)
    _spans_add_up(store)


def _time(windows: Iterable[ServiceWindow]) -> list[tuple[datetime, datetime]]:
    """The time windows bill, adjacent ones joined."""
    out: list[tuple[datetime, datetime]] = []
    for window in sorted(w for w in windows if w.quantity):
        if out and out[-1][1] == window.start:
            out[-1] = (out[-1][0], window.end)
        else:
            out.append((window.start, window.end))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_changes, _changes, st.sampled_from(["arrears", "advance"]), st.none() | st.integers(2, 28))
@example([(10, "b"), (20, "a")], [(5, "b"), (15, "a")], "arrears", None)
@example([(10, "b"), (20, "a")], [(5, "b"), (15, "a")], "advance", 25)
def test_with_the_catalog_unchanged_late_changes_end_where_rating_them_on_time_would(on_time, late, timing, canceled):
    """With no fee changed in the catalog, February's changes received late (and a cancellation,
    received later still) leave February billed what rating the whole history on time gives,
    within a cent per span (each span's amount is rounded once)."""
    late = [(day, plan) for day, plan in late if day not in {d for d, _ in on_time}]
    plans = [_adv(k, f) if timing == "advance" else _arrears(k, f) for k, f in (("a", "30"), ("b", "60"))]

    def changed(store: FakeBillingStore, changes: list[tuple[int, str]]) -> None:
        for day, plan in changes:
            store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", plan, None, None, at(2024, 2, day)))

    def cancel(store: FakeBillingStore) -> None:
        if canceled is not None:
            store.events.append(
                SubscriptionEvent("sub-1", "cust-1", "canceled", "a", None, None, at(2024, 2, canceled))
            )

    async def late_then_canceled() -> list[dict]:
        store = FakeBillingStore()
        store.subscribe("sub-1", "cust-1", plan="a")
        changed(store, on_time)
        rate = Rater(store, plans, [TOKENS], GRACE, FakePublisher())
        invoices = (await rate.run_once(AFTER_JAN)).invoices + (await rate.run_once(AFTER_FEB)).invoices
        changed(store, late)
        invoices += (await rate.run_once(AFTER_MAR)).invoices
        cancel(store)
        return invoices + (await rate.run_once(AFTER_APR)).invoices

    async def on_time_only() -> list[dict]:
        store = FakeBillingStore()
        store.subscribe("sub-1", "cust-1", plan="a")
        changed(store, on_time + late)
        cancel(store)
        rate = Rater(store, plans, [TOKENS], GRACE, FakePublisher())
        return (await rate.run_once(AFTER_JAN)).invoices + (await rate.run_once(AFTER_FEB)).invoices

    invoices = asyncio.run(late_then_canceled())
    assert_spans_add_up_to_their_lines(invoices)
    got = per_period(invoices).get(FEB.isoformat(), D(0))
    want = per_period(asyncio.run(on_time_only())).get(FEB.isoformat(), D(0))
    spans = len(on_time) + len(late) + 2
    assert abs(got - want) <= D("0.01") * spans, (got, want)
