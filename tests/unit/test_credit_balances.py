"""`credits balance`: each grant's status and what an invoice issued now could still draw."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from bastionary.credits.balances import balances, grant_status
from bastionary.credits.ledger import Grant

NOW = datetime(2026, 3, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def grant(grant_id: str, **fields: object) -> Grant:
    base: dict[str, object] = {
        "grant_id": grant_id,
        "customer_id": "c1",
        "amount": Decimal(100),
        "currency": "USD",
        "priority": 1,
        "effective_at": NOW - DAY,
    }
    return Grant(**(base | fields))  # type: ignore[arg-type]


def test_a_void_wins_over_an_expiry_and_both_over_a_grant_not_yet_started() -> None:
    assert grant_status(grant("g", voided_at=NOW, expires_at=NOW - DAY), NOW) == "voided"
    assert grant_status(grant("g", expires_at=NOW), NOW) == "expired"
    assert grant_status(grant("g", effective_at=NOW + DAY), NOW) == "pending"
    assert grant_status(grant("g", voided_at=NOW + DAY, expires_at=NOW + DAY), NOW) == "active"


def test_only_active_grants_have_a_balance_and_draws_never_make_it_negative() -> None:
    lines = balances(
        [grant("over", priority=2), grant("late", effective_at=NOW + DAY), grant("part", priority=1)],
        {"over": Decimal(150), "part": Decimal("30.25")},
        NOW,
    )
    assert [(line.grant.grant_id, line.status, line.remaining) for line in lines] == [
        ("part", "active", Decimal("69.75")),
        ("late", "pending", Decimal(0)),
        ("over", "used_up", Decimal(0)),
    ]
