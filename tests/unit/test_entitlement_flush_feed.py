"""How landed flushes move the in-memory entitlement counters (no broker, no database)."""

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from bastionary.catalog import parse_catalog
from bastionary.entitlements.evaluate import CustomerState
from bastionary.entitlements.service import Entitlements
from bastionary.entitlements.state import Loaded
from bastionary.metering.ports import RollupRow

CATALOG = parse_catalog(
    {
        "meters": [
            {"key": "api_requests", "event_type": "api.request", "aggregation": "COUNT", "group_by": {"method": "$.m"}},
            {"key": "tokens", "event_type": "llm", "aggregation": "SUM", "value_property": "$.t"},
            {"key": "peak", "event_type": "st", "aggregation": "MAX", "value_property": "$.gb"},
        ],
        "plans": [
            {
                "key": "pro",
                "currency": "USD",
                "entitlements": [
                    {"feature": "calls", "type": "metered", "meter": "api_requests", "limit": 10},
                    {
                        "feature": "gets",
                        "type": "metered",
                        "meter": "api_requests",
                        "limit": 5,
                        "filter": {"method": "GET"},
                    },
                    {"feature": "tokens", "type": "metered", "meter": "tokens", "limit": 1000},
                    {"feature": "peak", "type": "metered", "meter": "peak", "limit": 3},
                ],
            }
        ],
    }
)
START = datetime(2026, 3, 1, tzinfo=UTC)
END = datetime(2026, 4, 1, tzinfo=UTC)


@dataclass
class FakePlan:
    rollup_rows: list = field(default_factory=list)
    replayed: bool = False
    rows_of: frozenset[str] | None = None  # as a LandedFlush from a flush process may be
    customers: frozenset[str] = frozenset()


def row(meter, customer, window, count=0, total=Decimal(0), method="GET"):
    return RollupRow(
        meter,
        customer,
        "",
        {"method": method} if meter == "api_requests" else {},
        window,
        window,
        total,
        count,
        None,
        [],
        (window, Decimal(0)),
    )


def service_with(customer="c1", usage=None) -> Entitlements:
    # The clock inside the held period: a flush past a period that is over reads the customer again.
    service = Entitlements(
        store=None,
        plans=CATALOG.plans,
        meters=CATALOG.meters,
        publish=None,
        lock=asyncio.Lock(),
        now=lambda: START + timedelta(days=10),
    )
    usage = usage or {"calls": Decimal(0), "gets": Decimal(0), "tokens": Decimal(0), "peak": Decimal(0)}
    service._loaded[customer] = Loaded(CustomerState(customer, CATALOG.plans[0], START, END, False, usage, ()))
    return service


def test_additive_meters_move_by_the_flush_deltas_and_filters_apply():
    service = service_with()
    inside = START + timedelta(days=2)
    service.on_flush(
        [
            FakePlan(
                [
                    row("api_requests", "c1", inside, count=4),
                    row("api_requests", "c1", inside, count=3, method="POST"),
                    row("tokens", "c1", inside, total=Decimal("12.5")),
                ]
            )
        ]
    )
    usage = service._loaded["c1"].state.usage
    assert (usage["calls"], usage["gets"], usage["tokens"]) == (7, 4, Decimal("12.5"))
    assert service._dirty == {"c1"}


def test_usage_past_28_digits_moves_by_the_exact_delta_as_its_rollup_total_does():
    # Decimal(38, 9) usage of 29 significant digits: the default context would round the sum.
    loaded = Decimal("12999999999999999999.999999987")
    service = service_with(usage={"calls": Decimal(0), "gets": Decimal(0), "tokens": loaded, "peak": Decimal(0)})
    service.on_flush([FakePlan([row("tokens", "c1", START + timedelta(days=2), total=Decimal("0.000000001"))])])
    assert service._loaded["c1"].state.usage["tokens"] == Decimal("12999999999999999999.999999988")


def test_windows_outside_the_current_period_do_not_count():
    service = service_with()
    service.on_flush(
        [
            FakePlan(
                [
                    row("api_requests", "c1", START - timedelta(minutes=1), count=5),
                    row("api_requests", "c1", END, count=5),
                ]
            )
        ]
    )
    assert service._loaded["c1"].state.usage["calls"] == 0


def test_a_replayed_flush_or_a_non_additive_meter_makes_the_customer_be_read_again():
    service = service_with()
    service.on_flush([FakePlan([row("api_requests", "c1", START, count=1)], replayed=True)])
    assert "c1" not in service._loaded and "c1" in service._dirty
    service = service_with()
    service.on_flush([FakePlan([row("peak", "c1", START, total=Decimal(9))])])
    assert "c1" not in service._loaded


def test_customers_not_loaded_yet_are_read_by_the_reconciler_not_counted_here():
    service = service_with()
    service.on_flush([FakePlan([row("api_requests", "c2", START, count=9)])])
    assert "c2" not in service._loaded and service._dirty == {"c2"}


def test_rows_sent_only_for_the_customers_held_still_name_every_customer():
    """A flush process sends back the rows of the customers held when the flush was planned
    (``usage_rows_wanted``); the flush still names every customer it had rows of."""
    service = service_with("c1")
    service._loaded["c3"] = None  # read, and unknown: nothing to count
    assert service.usage_rows_wanted() == {"c1"}
    held_since = Loaded(CustomerState("c4", CATALOG.plans[0], START, END, False, {"calls": Decimal(0)}, ()))
    service._loaded["c4"] = held_since  # read after the flush was planned: its rows did not come
    inside = START + timedelta(days=2)
    flush = FakePlan(
        [row("api_requests", "c1", inside, count=2)],
        rows_of=frozenset({"c1"}),
        customers=frozenset({"c1", "c2", "c3", "c4"}),
    )
    service.on_flush([flush])
    assert service._loaded["c1"].state.usage["calls"] == 2
    assert "c4" not in service._loaded  # read again, this flush included
    assert service._loaded["c3"] is None and "c2" not in service._loaded
    assert service._dirty == {"c1", "c2", "c4"}
