"""The records the phases publish, and their totals checked against the ground truth."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TypedDict

import orjson

from bastionary.storage.client import Client
from bastionary.storage.diagnostics import ingest_totals, meter_totals, stored_event_count
from bastionary.tools.bench.options import BATCH_EVENTS
from bastionary.tools.workload import Event, Record, Workload


class Exactness(TypedDict):
    """A run's ClickHouse totals against the workload's ground truth."""

    exact: bool
    mismatches: dict[str, int]  # meter -> (customer, group) keys wrong or unexpected
    stored_events: int
    expected_events: int
    duplicates_dropped: int
    expected_duplicates: int


# -- workloads -------------------------------------------------------------------------------


def _batched(records: list[Record], size: int) -> list[Record]:
    """The same events as ``records`` (single-event records), packed ``size`` to a record.

    Members of a record share its key (the customer), and every repeat of an event keeps its
    customer's partition: dedupe is per partition. (``workload.generate(batch_size=100)``
    splits each 100-event slice of the stream by customer, so with hundreds of customers its
    records carry ~1.2 events each, not 100.)
    """
    by_key: dict[bytes, list[bytes]] = {}
    for record in records:
        by_key.setdefault(record.key, []).append(record.value)
    chunks = {key: [values[i : i + size] for i in range(0, len(values), size)] for key, values in by_key.items()}
    out: list[Record] = []
    round_ = 0
    while True:  # round-robin over customers, so every partition fills at the same pace
        added = False
        for key, parts in chunks.items():
            if round_ < len(parts):
                out.append(Record(key, b"[" + b",".join(parts[round_]) + b"]", events=len(parts[round_])))
                added = True
        if not added:
            return out
        round_ += 1


def _distinct_id_records(
    count: int, customers: int = 300, size: int = BATCH_EVENTS
) -> tuple[list[Record], list[Event]]:
    """``count`` events with distinct ids in ``size``-event records, and the events themselves."""
    now = datetime.now(UTC).replace(microsecond=0)
    stamps = [(now - timedelta(seconds=s)).isoformat().replace("+00:00", "Z") for s in range(1800)]
    methods = ("GET", "POST", "DELETE")
    events: list[Event] = []
    values: dict[bytes, list[bytes]] = {}
    for i in range(count):
        customer = f"cust-{i % customers:04d}"
        event = {
            "specversion": "1.0",
            "id": f"rss-{i}",
            "source": "bastionary-bench-rss",
            "type": "api.request",
            "subject": customer,
            "time": stamps[i % len(stamps)],
            "data": {"method": methods[i % 3], "path": "/v1/items"},
        }
        events.append(event)
        values.setdefault(customer.encode(), []).append(orjson.dumps(event))
    singles = [Record(key, value, events=1) for key, group in values.items() for value in group]
    return _batched(singles, size), events


# -- exactness -------------------------------------------------------------------------------


def _exactness(client: Client, workload: Workload) -> Exactness:
    from bastionary.catalog import load_catalog

    truth = workload.truth()
    mismatches: dict[str, int] = {}
    for meter in load_catalog(None).meters:
        got = {
            (t.customer_id, tuple(sorted(t.group.items()))): t.value
            for t in meter_totals(client, meter, list(meter.group_by))
        }
        want = truth[meter.key]
        wrong = sum(1 for key, value in want.items() if got.get(key) != value)
        unexpected = sum(1 for key in got if key not in want)
        mismatches[meter.key] = wrong + unexpected
    stored = stored_event_count(client)
    totals = ingest_totals(client)
    expected = len(workload.unique_events)
    exact = (
        not any(mismatches.values())
        and stored == expected
        and totals.accepted == expected
        and totals.duplicates == workload.duplicates
    )
    return {
        "exact": exact,
        "mismatches": mismatches,
        "stored_events": stored,
        "expected_events": expected,
        "duplicates_dropped": totals.duplicates,
        "expected_duplicates": workload.duplicates,
    }
