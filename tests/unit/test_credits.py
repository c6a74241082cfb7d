"""Credit grants (``credits/ledger.py``): which grants pay an invoice, in which order, and never
more than they hold or than the invoice needs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from bastionary.credits.ledger import Allocation, Grant, allocate, remaining, usable_balance

D = Decimal
UTC = UTC
PERIOD_END = datetime(2024, 2, 1, tzinfo=UTC)
JAN = datetime(2024, 1, 1, tzinfo=UTC)


def grant(
    grant_id: str,
    amount,
    *,
    currency="USD",
    priority=0,
    effective_at=JAN,
    expires_at=None,
    voided_at=None,
    funding="promotional",
) -> Grant:
    return Grant(grant_id, "cust-1", D(str(amount)), currency, priority, effective_at, expires_at, voided_at, funding)


def draw(grants, total, drawn=None, currency="USD", at=PERIOD_END) -> list[tuple[str, Decimal]]:
    return [(a.grant_id, a.amount) for a in allocate(grants, drawn or {}, D(str(total)), currency, at)]


# --- order --------------------------------------------------------------------------------


def test_lower_priority_number_first_whatever_the_expiry():
    grants = [
        grant("late-expiry-p0", 10, priority=0, expires_at=datetime(2030, 1, 1, tzinfo=UTC)),
        grant("soon-expiry-p1", 10, priority=1, expires_at=datetime(2024, 3, 1, tzinfo=UTC)),
    ]
    assert draw(grants, 15) == [("late-expiry-p0", D(10)), ("soon-expiry-p1", D(5))]


def test_same_priority_earliest_expiry_first_never_expiring_last():
    grants = [
        grant("never", 10),
        grant("june", 10, expires_at=datetime(2024, 6, 1, tzinfo=UTC)),
        grant("march", 10, expires_at=datetime(2024, 3, 1, tzinfo=UTC)),
    ]
    assert draw(grants, 25) == [("march", D(10)), ("june", D(10)), ("never", D(5))]


def test_same_priority_and_expiry_oldest_grant_first():
    grants = [
        grant("newer", 10, effective_at=datetime(2024, 1, 20, tzinfo=UTC)),
        grant("older", 10, effective_at=datetime(2023, 12, 1, tzinfo=UTC)),
    ]
    assert draw(grants, 12) == [("older", D(10)), ("newer", D(2))]


def test_full_tie_is_broken_by_grant_id_so_the_order_is_deterministic():
    grants = [grant("b", 10), grant("a", 10)]
    assert draw(grants, 5) == [("a", D(5))]
    assert draw(list(reversed(grants)), 5) == [("a", D(5))]


def test_order_key():
    g = grant("g", 1, priority=3, expires_at=None)
    assert g.order[0] == 0 and g.order[1] == 3 and g.order[2].year == 9999 and g.order[3:] == (JAN, "g")


def test_promotional_then_paid_then_carried_whatever_the_priority_and_expiry():
    grants = [
        grant("carried", 10, priority=0, funding="carried"),
        grant("paid", 10, priority=0, expires_at=datetime(2024, 3, 1, tzinfo=UTC), funding="paid"),
        grant("promo", 10, priority=9, funding="promotional"),
    ]
    assert draw(grants, 25) == [("promo", D(10)), ("paid", D(10)), ("carried", D(5))]
    allocations = allocate(grants, {}, D(25), "USD", PERIOD_END)
    assert [a.funding for a in allocations] == ["promotional", "paid", "carried"]


def test_usable_balance_counts_every_funding_usable_at_the_moment_in_the_currency():
    grants = [
        grant("promo", 10),
        grant("paid", 7, funding="paid"),
        grant("eur", 5, currency="EUR"),
        grant("expired", 5, expires_at=PERIOD_END),
        grant("later", 5, effective_at=PERIOD_END + timedelta(days=1)),
    ]
    assert usable_balance(grants, {"promo": D(4)}, "USD", PERIOD_END) == D(13)


# --- which grants are usable at the period end ----------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "usable"),
    [
        ({}, True),
        ({"expires_at": PERIOD_END}, False),  # expiring exactly at the period end: lapsed
        ({"expires_at": PERIOD_END - timedelta(microseconds=1)}, False),
        ({"expires_at": PERIOD_END + timedelta(microseconds=1)}, True),
        ({"effective_at": PERIOD_END}, True),  # effective exactly at the period end: usable
        ({"effective_at": PERIOD_END + timedelta(seconds=1)}, False),  # effective later
        ({"voided_at": PERIOD_END}, False),
        ({"voided_at": datetime(2024, 1, 15, tzinfo=UTC)}, False),
        ({"voided_at": PERIOD_END + timedelta(days=1)}, True),  # voided after the period: still pays it
        ({"currency": "EUR"}, False),
    ],
)
def test_usable_at_period_end(kwargs, usable):
    g = grant("g", 10, **kwargs)
    assert g.usable_at(PERIOD_END, "USD") is usable
    assert draw([g], 5) == ([("g", D(5))] if usable else [])


def test_expired_grant_is_skipped_and_the_next_one_pays():
    grants = [
        grant("expired", 100, priority=0, expires_at=datetime(2024, 1, 31, tzinfo=UTC)),
        grant("valid", 100, priority=5),
    ]
    assert draw(grants, 30) == [("valid", D(30))]


def test_currency_mismatch_is_never_converted():
    grants = [grant("eur", 100, currency="EUR"), grant("jpy", 1000, currency="JPY"), grant("usd", 3)]
    assert draw(grants, 10) == [("usd", D(3))]
    assert draw(grants, 10, currency="EUR") == [("eur", D(10))]


# --- never over-applied --------------------------------------------------------------


def test_never_more_than_the_total():
    assert draw([grant("a", 100), grant("b", 100)], "42.42") == [("a", D("42.42"))]


def test_never_more_than_what_is_left_of_a_grant():
    grants = [grant("a", 100), grant("b", 50)]
    assert draw(grants, 80, drawn={"a": D("90")}) == [("a", D(10)), ("b", D(50))]


def test_used_up_grants_are_skipped():
    grants = [grant("a", 100), grant("b", 50)]
    assert draw(grants, 20, drawn={"a": D(100)}) == [("b", D(20))]
    assert draw(grants, 20, drawn={"a": D(100), "b": D(50)}) == []


def test_not_enough_credit_pays_what_it_can():
    assert draw([grant("a", 5), grant("b", "2.50")], 100) == [("a", D(5)), ("b", D("2.50"))]


@pytest.mark.parametrize("total", ["0", "-10"])
def test_nothing_to_pay_draws_nothing(total):
    assert draw([grant("a", 100)], total) == []


def test_balances_are_never_negative():
    grants = [grant("a", 10), grant("b", 10), grant("c", -5)]
    assert remaining(grants, {"a": D(15), "b": D(4)}) == {"a": D(0), "b": D(6), "c": D(0)}
    assert draw(grants, 100, drawn={"a": D(15)}) == [("b", D(10))]


def test_allocations_are_positive_and_at_most_one_per_grant():
    grants = [grant(f"g{i}", i) for i in range(5)]  # g0 holds nothing
    allocations = allocate(grants, {}, D(7), "USD", PERIOD_END)
    assert all(isinstance(a, Allocation) and a.amount > 0 for a in allocations)
    assert len({a.grant_id for a in allocations}) == len(allocations)
    assert sum(a.amount for a in allocations) == 7


def test_allocate_does_not_change_its_inputs():
    grants = [grant("a", 10)]
    drawn = {"a": D(1)}
    allocate(grants, drawn, D(5), "USD", PERIOD_END)
    assert drawn == {"a": D(1)}
