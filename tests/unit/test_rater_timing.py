"""When the rater bills: flat fees in advance (``billing_timing: advance``), proration off per
plan, and progressive invoices at usage thresholds, over the in-memory store of
``test_rater``. Whatever the timing, what a period is billed in the end is what it owes:
the tests sum every invoice's lines per period."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastionary.dunning.dunner import Dunner
from bastionary.dunning.policy import DunningConfig
from bastionary.rating.invoice import ADVANCE, invoice_id
from bastionary.rating.plans import Plan
from bastionary.rating.rater import EMPTY, Rater
from bastionary.rating.schedule import PROGRESSIVE, progressive_key
from bastionary.rating.subscriptions import SubscriptionEvent

from .test_dunning_engine import POLICY, case
from .test_minimum_adjustments import per_period
from .test_rater import GRACE, TOKENS, FakeBillingStore, FakePublisher, at

D = Decimal
JAN, FEB, MAR = at(2024, 1, 1), at(2024, 2, 1), at(2024, 3, 1)
AFTER_JAN, AFTER_FEB = FEB + timedelta(hours=2), MAR + timedelta(hours=2)


def plan(key: str, fee: str, **more: Any) -> Plan:
    return Plan.model_validate(
        {
            "key": key,
            "currency": "USD",
            "prices": [
                {"key": "seat", "model": "flat", "amount": fee, "billing_timing": "advance", "description": "Seats"},
                {"key": "tokens", "model": "per_unit", "meter": "llm_tokens", "unit_amount": "0.01"},
            ],
            **more,
        }
    )


ADV = plan("adv", "31")
BIG = plan("big", "62")
FIXED = plan("fixed", "31", prorate=False)
STEPS = Plan.model_validate(
    {
        "key": "steps",
        "currency": "USD",
        "usage_thresholds": ["50", "100"],
        "minimum_commitment": "10",
        "prices": [
            {"key": "base", "model": "flat", "amount": "5"},
            {"key": "tokens", "model": "per_unit", "meter": "llm_tokens", "unit_amount": "0.01"},
        ],
    }
)


def store_on(plan_key: str, start: datetime = JAN, anchor: datetime | None = None) -> FakeBillingStore:
    store = FakeBillingStore()
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "created", plan_key, start, anchor, start))
    return store


def rater(store: FakeBillingStore, publish: FakePublisher) -> Rater:
    return Rater(store, [ADV, BIG, FIXED, STEPS], [TOKENS], GRACE, publish)


def billed_per_period(store: FakeBillingStore) -> dict[tuple[datetime, str], Decimal]:
    """Every stored line's amount, per (period it bills, line key)."""
    out: dict[tuple[datetime, str], Decimal] = defaultdict(Decimal)
    for (invoice, _), line in store.lines.items():
        if invoice in store.invoices:
            out[(line.period_start, line.line_key)] += line.amount
    return dict(out)


def line_amounts(document: dict[str, Any]) -> list[tuple[str, str]]:
    return [(line["description"], line["amount"]) for line in document["lines"]]


# --- fees in advance ---------------------------------------------------------------------


async def test_the_first_fee_is_billed_at_the_start_and_each_next_one_on_the_period_s_invoice():
    store, publish = store_on("adv"), FakePublisher()
    store.use("cust-1", 1000, at(2024, 1, 10))
    rate = rater(store, publish)
    (opening,) = (await rate.run_once(JAN + timedelta(minutes=1))).invoices
    assert (opening["kind"], opening["invoice_id"]) == (ADVANCE, invoice_id("sub-1", JAN, ADVANCE))
    (fee,) = opening["lines"]
    assert (fee["amount"], fee["billing_timing"], fee["service_period_start"], fee["service_period_end"]) == (
        "31.00",
        "advance",
        JAN.isoformat(),
        FEB.isoformat(),
    )
    assert opening["total"] == "31.00"
    assert (await rate.run_once(at(2024, 1, 20))).invoices == []
    (january,) = (await rate.run_once(AFTER_JAN)).invoices
    assert line_amounts(january) == [("tokens", "10.00"), ("Seats", "31.00")]
    assert january["lines"][1]["service_period_start"] == FEB.isoformat()
    assert billed_per_period(store) == {(JAN, "adv:seat"): D(31), (JAN, "adv:tokens"): D(10), (FEB, "adv:seat"): D(31)}


async def test_the_first_fee_is_prorated_from_the_start_to_the_anchor_s_next_boundary():
    store, publish = store_on("adv", start=at(2024, 1, 17), anchor=JAN), FakePublisher()
    (opening,) = (await rater(store, publish).run_once(at(2024, 1, 17, 0, 1))).invoices
    (fee,) = opening["lines"]
    assert (fee["amount"], fee["description"]) == ("15.00", "Seats, prorated 0.4839")  # 15 of 31 days
    assert opening["period_start"] == at(2024, 1, 17).isoformat()


async def test_a_plan_without_proration_bills_the_whole_fee_for_a_partial_period():
    store, publish = store_on("fixed", start=at(2024, 1, 17), anchor=JAN), FakePublisher()
    (opening,) = (await rater(store, publish).run_once(at(2024, 1, 17, 0, 1))).invoices
    assert line_amounts(opening) == [("Seats", "31.00")]


async def test_an_upgrade_mid_period_credits_the_old_fee_s_rest_and_bills_the_new_one_s_at_once():
    store, publish = store_on("adv"), FakePublisher()
    rate = rater(store, publish)
    await rate.run_once(at(2024, 1, 2))  # January's whole fee on adv
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "big", None, None, at(2024, 1, 17)))
    (change,) = (await rate.run_once(at(2024, 1, 17, 0, 1))).invoices
    assert change["kind"] == ADVANCE and change["plans"] == ["big"]
    assert line_amounts(change) == [
        ("Adjustment: Seats (adv), billed in advance", "-15.00"),
        ("Seats (big), prorated 0.4839", "30.00"),
    ]
    (january,) = (await rate.run_once(AFTER_JAN)).invoices
    assert line_amounts(january) == [("tokens (adv)", "0.00"), ("tokens (big)", "0.00"), ("Seats", "62.00")]
    billed = billed_per_period(store)
    assert billed[(JAN, "adv:seat")] + billed[(JAN, "big:seat")] == D(16) + D(30)  # 16 days of 31, 15 of 62
    assert billed[(FEB, "big:seat")] == D(62)


async def test_a_cancellation_credits_the_unused_part_of_the_fee_billed_in_advance():
    store, publish = store_on("adv"), FakePublisher()
    rate = rater(store, publish)
    await rate.run_once(AFTER_JAN)  # the opening invoice, then January's with February's fee
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "canceled", "", None, None, at(2024, 2, 15)))
    (february,) = (await rate.run_once(at(2024, 2, 15, 2))).invoices
    (refund,) = february["lines"][1:]
    assert (refund["description"], refund["quantity"], refund["amount"]) == (
        "Adjustment: Seats, billed in advance",
        "-0.51724138",  # 1 less 14/29 at the stored scale (9 decimals, truncated): 0.482758620
        "-16.03",  # 14 of February's 29 days used: 31 * 14/29 = 14.97 owed of the 31.00 billed
    )
    assert (february["subtotal"], february["total"], february["carried_forward"]) == ("-16.03", "0.00", "16.03")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changed_at=st.integers(1, 31 * 24 * 60 - 1).map(lambda minutes: JAN + timedelta(minutes=minutes)))
def test_a_prorated_fee_billed_in_advance_is_not_adjusted_by_its_stored_rounding(changed_at):
    """A prorated share has 28 digits and ``invoice_lines`` keeps 9: January's invoice, rated in
    a later run than the fees the change billed, compares what is owed with what is stored at
    that scale, and adjusts nothing (it published an adjustment of no amount for each fee)."""
    store, publish = store_on("adv"), FakePublisher()
    rate = rater(store, publish)
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "big", None, None, changed_at))
    asyncio.run(rate.run_once(changed_at + timedelta(minutes=1)))  # the opening fees, and the change's
    (january,) = asyncio.run(rate.run_once(AFTER_JAN)).invoices
    assert [line["description"] for line in january["lines"] if D(line["amount"]) == 0 and not line["meter"]] == []
    assert [line["description"] for line in january["lines"] if not line["meter"]] == ["Seats"]  # February's


async def test_a_backdated_cancellation_refunds_a_fee_billed_for_a_period_that_never_came():
    store, publish = store_on("adv"), FakePublisher()
    rate = rater(store, publish)
    await rate.run_once(AFTER_JAN)  # February's fee is billed on January's invoice
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "canceled", "", None, None, FEB))
    (final,) = (await rate.run_once(FEB + 2 * GRACE + timedelta(hours=2))).invoices
    assert final["kind"] == "final_adjustment"
    assert line_amounts(final) == [("Refund: seat, billed in advance for a period after the cancellation", "-31.00")]
    assert final["carried_forward"] == "31.00"
    assert sum(amount for (start, _), amount in billed_per_period(store).items() if start == FEB) == 0


async def test_a_plan_without_fees_in_advance_has_no_opening_invoice():
    store, publish = store_on("steps"), FakePublisher()
    assert (await rater(store, publish).run_once(at(2024, 1, 2))).invoices == []
    assert store.invoices == {}


async def test_an_advance_invoice_with_nothing_owed_is_stored_empty_and_never_published():
    store, publish = store_on("adv"), FakePublisher()
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "steps", None, None, FEB))
    rate = rater(store, publish)
    await rate.run_once(AFTER_JAN)  # January's invoice billed no fee for February: it is on steps then
    await rate.run_once(FEB + timedelta(hours=3))
    change = store.document(invoice_id("sub-1", FEB, ADVANCE))
    assert (change["status"], change["lines"]) == (EMPTY, [])
    assert all(event["kind"] != ADVANCE or event["period_start"] != FEB.isoformat() for event in publish.invoices())


async def test_the_minimum_commitment_counts_the_fee_billed_in_advance():
    committed = plan("committed", "31", minimum_commitment="40")
    store, publish = store_on("committed"), FakePublisher()
    store.use("cust-1", 500, at(2024, 1, 10))  # 5.00
    rate = Rater(store, [committed], [TOKENS], GRACE, publish)
    await rate.run_once(JAN + timedelta(minutes=1))
    (january,) = (await rate.run_once(AFTER_JAN)).invoices
    assert ("Minimum commitment true-up", "4.00") in line_amounts(january)  # 40 - 31 - 5


# --- progressive billing -----------------------------------------------------------------


async def test_a_usage_threshold_bills_the_period_so_far_once_and_the_period_s_invoice_deducts_it():
    store, publish = store_on("steps"), FakePublisher()
    store.use("cust-1", 6000, at(2024, 1, 5))  # 60.00 of usage: past 50
    rate = rater(store, publish)
    (early,) = (await rate.run_once(at(2024, 1, 6))).invoices
    assert early["invoice_id"] == invoice_id("sub-1", JAN, progressive_key(D(50)))
    assert (early["kind"], early["period_end"]) == (PROGRESSIVE, at(2024, 1, 5, 23, 59).isoformat())
    assert (line_amounts(early), early["total"]) == ([("tokens", "60.00")], "60.00")
    assert (await rate.run_once(at(2024, 1, 7))).invoices == []
    store.use("cust-1", 5000, at(2024, 1, 8))  # 110.00: past 100
    (second,) = (await rate.run_once(at(2024, 1, 9))).invoices
    assert line_amounts(second) == [("tokens", "110.00"), ("Billed on earlier invoices this period (tokens)", "-60.00")]
    store.use("cust-1", 1000, at(2024, 1, 20))
    (january,) = (await rate.run_once(AFTER_JAN)).invoices
    assert line_amounts(january) == [
        ("base", "5.00"),
        ("tokens", "120.00"),
        ("Billed on earlier invoices this period (tokens)", "-110.00"),
    ]
    assert january["total"] == "15.00"
    (february,) = (await rate.run_once(AFTER_FEB)).invoices  # a new period: the thresholds apply again
    assert february["kind"] == "period"


async def test_credit_valid_at_a_period_s_end_pays_it_though_a_later_invoice_was_due_first():
    """100.00 of credit expiring at 00:30 on 1 February, usable at January's end. February's
    usage crosses 50.00 at 00:05, so its progressive invoice is due at 00:40, inside January's
    grace hour. Until 2026-12-07 it was rated then, lapsed the grant, and January's invoice,
    rated after its grace, charged its 15.00 in cash. The progressive invoice now waits for
    January's, which draws the credit at its period's end; the rest lapses after."""
    store, publish = store_on("steps"), FakePublisher()
    store.use("cust-1", 1000, at(2024, 1, 15))  # January: 5.00 + 10.00
    store.grant("g1", "cust-1", "100.00", expires_at=FEB + timedelta(minutes=30))
    store.use("cust-1", 6000, FEB + timedelta(minutes=5))
    rate = rater(store, publish)
    assert (await rate.run_once(FEB + timedelta(minutes=40))).invoices == []
    january, early = (await rate.run_once(FEB + GRACE + timedelta(minutes=10))).invoices
    assert (january["kind"], january["credits_applied"], january["total"]) == ("period", "15.00", "0.00")
    assert (early["kind"], early["credits_applied"], early["total"]) == (PROGRESSIVE, "0.00", "60.00")
    assert early["credits_expired"] == [{"grant_id": "g1", "amount": "85.00", "currency": "USD"}]


async def test_an_advance_invoice_at_a_period_boundary_does_not_wait_for_the_period_s_invoice():
    """A change to big effective 1 February: its advance invoice draws at the boundary, January's
    end, so no grant can lapse between the two and it is issued at its start, not an hour later
    on January's invoice (the first form of the fix held it back), credit or not."""
    store, publish = store_on("adv"), FakePublisher()
    store.grant("g1", "cust-1", "10.00", expires_at=FEB + timedelta(minutes=30))
    rate = rater(store, publish)
    await rate.run_once(JAN + timedelta(minutes=1))
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "big", None, None, FEB, at(2024, 1, 20)))
    (advance,) = (await rate.run_once(FEB + timedelta(minutes=1))).invoices
    assert (advance["kind"], line_amounts(advance)) == (ADVANCE, [("Seats", "62.00")])


async def test_reaching_two_thresholds_at_once_issues_one_invoice_for_the_higher():
    store, publish = store_on("steps"), FakePublisher()
    store.use("cust-1", 15000, at(2024, 1, 5))
    rate = rater(store, publish)
    (early,) = (await rate.run_once(at(2024, 1, 6))).invoices
    assert early["invoice_id"] == invoice_id("sub-1", JAN, progressive_key(D(100)))
    assert (await rate.run_once(at(2024, 1, 7))).invoices == []


async def test_late_usage_after_a_progressive_invoice_is_adjusted_once_against_all_that_was_billed():
    store, publish = store_on("steps"), FakePublisher()
    store.use("cust-1", 6000, at(2024, 1, 5))
    rate = rater(store, publish)
    await rate.run_once(at(2024, 1, 6))
    await rate.run_once(AFTER_JAN)
    store.use("cust-1", 700, at(2024, 1, 30), ingested=FEB + timedelta(hours=3))  # after January's cutoff
    (february,) = (await rate.run_once(AFTER_FEB)).invoices
    assert [a for d, a in line_amounts(february) if d.startswith("Adjustment")] == ["7.00"]
    assert billed_per_period(store)[(JAN, "steps:tokens")] == D(67)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    uses=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 8000), st.integers(0, 3)), max_size=8),
    checks=st.lists(st.integers(1, 30), max_size=6),
)
async def test_whenever_thresholds_are_checked_a_period_is_billed_its_usage_exactly_once(
    uses: list[tuple[int, int, int]], checks: list[int]
) -> None:
    store, publish = store_on("steps"), FakePublisher()
    for day, tokens, delay in uses:
        time = JAN + timedelta(days=day, hours=5)
        store.use("cust-1", tokens, time, ingested=time + timedelta(days=delay))
    rate = rater(store, publish)
    for day in sorted(checks):
        await rate.run_once(JAN + timedelta(days=day, hours=1))
    await rate.run_once(AFTER_JAN)
    await rate.run_once(AFTER_FEB)
    usage = sum(tokens for _, tokens, _ in uses) * D("0.01")
    billed = billed_per_period(store)
    assert billed.get((JAN, "steps:tokens"), D(0)) == usage
    totals = [D(store.document(i)["total"]) for i in store.invoices]
    assert all(total >= 0 for total in totals)


# --- backfill is deliberate ----------------------------------------------------------------


def backfilled(flag: bool = False) -> FakeBillingStore:
    """sub-1 on steps from January 1st, its created event received on March 10th; usage in
    every month."""
    store = FakeBillingStore()
    event = SubscriptionEvent("sub-1", "cust-1", "created", "steps", JAN, None, JAN, at(2024, 3, 10), int(flag))
    store.events.append(event)
    for month in (1, 2, 3):
        store.use("cust-1", 100, at(2024, month, 5), ingested=at(2024, month, 5))
    return store


AFTER_MAR = at(2024, 4, 1, 2)


async def test_periods_that_ended_before_the_subscription_was_received_are_not_rated():
    store, publish = backfilled(), FakePublisher()
    invoices = (await rater(store, publish).run_once(AFTER_MAR)).invoices
    (march,) = invoices  # January and February are left alone, and not billed as adjustments
    assert (march["period_start"], march["backfill"]) == (MAR.isoformat(), False)
    assert line_amounts(march) == [("base", "5.00"), ("tokens", "1.00"), ("Minimum commitment true-up", "4.00")]
    assert (await rater(store, publish).run_once(AFTER_MAR + timedelta(days=1))).invoices == []


async def test_a_backfill_rates_them_when_the_event_or_the_setting_says_so_and_marks_them():
    for store, rate_all in ((backfilled(flag=True), False), (backfilled(), True)):
        publish = FakePublisher()
        rate = Rater(store, [ADV, BIG, FIXED, STEPS], [TOKENS], GRACE, publish, backfill=rate_all)
        invoices = (await rate.run_once(AFTER_MAR)).invoices
        assert [(i["period_start"][:10], i["backfill"]) for i in invoices] == [
            ("2024-01-01", True),
            ("2024-02-01", True),
            ("2024-03-01", False),  # it ended after the subscription was received
        ]


async def test_dunning_leaves_a_backfill_s_invoices_alone_unless_told():
    class Cases:
        def __init__(self, cases: list) -> None:
            self.cases_ = cases
            self.decided: list = []

        def unpublished(self) -> list:
            return []

        def cases(self, customers: set[str] | None = None) -> list:
            return self.cases_

        def store_decisions(self, decided: list, at: datetime, published: int = 0) -> None:
            self.decided.extend(decided)

        def mark_published(self, published: list) -> None:
            pass

    class Clock:
        def now(self) -> datetime:
            return at(2026, 6, 1)

    async def sent(_: str, __: bytes) -> Any:
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    config = DunningConfig(policies=[POLICY])
    for chase, expected in ((False, set()), (True, {"inv-b"})):
        plain, backfill = case(), case()
        plain.invoice = replace(plain.invoice, invoice_id="inv-p")
        backfill.invoice = replace(backfill.invoice, invoice_id="inv-b", backfill=True)
        store = Cases([plain, backfill])
        await Dunner(store, config, sent, Clock(), chase_backfill=chase).run_once()
        decided = {c.invoice.invoice_id for c, _ in store.decided}
        assert decided == {"inv-p"} | expected


def _whole(key: str, timing: str) -> Plan:
    price = {"key": "base", "model": "flat", "amount": "30", "billing_timing": timing}
    return Plan.model_validate({"key": key, "currency": "USD", "prorate": False, "prices": [price]})


async def _a_b_a_in_february(timing: str) -> Decimal:
    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1", plan="a")
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "b", None, None, at(2024, 2, 10)))
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "a", None, None, at(2024, 2, 20)))
    rater = Rater(store, [_whole("a", timing), _whole("b", timing)], [TOKENS], GRACE, FakePublisher())
    invoices = (await rater.run_once(AFTER_JAN)).invoices + (await rater.run_once(AFTER_FEB)).invoices
    return per_period(invoices)[FEB.isoformat()]


async def test_a_plan_without_proration_owes_its_fee_once_in_a_period_it_comes_back_to():
    """prorate: false, a -> b -> a in February: a's fee whole and b's fee whole, 60.00; a's
    second segment owed its fee again (90.00), in arrears and in advance alike."""
    assert await _a_b_a_in_february("arrears") == D("60.00")
    assert await _a_b_a_in_february("advance") == D("60.00")


async def test_a_period_that_owed_a_fee_twice_before_the_fix_is_credited_the_second(monkeypatch):
    """Invoices written before 2026-12-05 billed a's fee twice (90.00) for a -> b -> a in February,
    in arrears; the next invoice rates February again and credits the second (60.00)."""
    import bastionary.rating.invoice as invoice_module

    store = FakeBillingStore()
    store.subscribe("sub-1", "cust-1", plan="a")
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "b", None, None, at(2024, 2, 10)))
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "changed", "a", None, None, at(2024, 2, 20)))
    rater = Rater(store, [_whole("a", "arrears"), _whole("b", "arrears")], [TOKENS], GRACE, FakePublisher())
    monkeypatch.setattr(invoice_module, "owes_fees_again", lambda *_: True)  # the code before the fix
    invoices = (await rater.run_once(AFTER_JAN)).invoices + (await rater.run_once(AFTER_FEB)).invoices
    assert per_period(invoices)[FEB.isoformat()] == D("90.00")
    monkeypatch.undo()
    invoices += (await rater.run_once(MAR + timedelta(days=31, hours=2))).invoices
    assert per_period(invoices)[FEB.isoformat()] == D("60.00")
