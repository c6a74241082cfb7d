"""A realistic synthetic workload with its own ground truth, for the demo, the benchmark and
the exactness tests.

The truth is computed here from the generated events with plain dictionaries, on purpose
sharing no code with the pipeline (parsing, readings, rollups), so that comparing the two
checks the pipeline rather than repeating it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson

MODELS = ("gpt-4", "gpt-4o-mini", "claude-3", "llama-3")
METHODS = ("GET", "POST", "DELETE")

Event = dict[str, Any]  # a CloudEvent in its JSON form
GroupKey = tuple[str, tuple[tuple[str, str], ...]]  # (customer, sorted (dimension, value) pairs)
Truth = dict[str, dict[GroupKey, Decimal]]  # meter -> {(customer, group): total}


@dataclass
class Record:
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    events: int = 0  # events it carries that should be counted (before dedupe)


@dataclass
class Workload:
    records: list[Record]
    unique_events: list[Event]  # every distinct event that must be counted exactly once
    duplicates: int  # repeats that must be dropped
    bad_records: int  # records or members that must reach the DLQ
    late_events: int

    def truth(self) -> Truth:
        return ground_truth(self.unique_events)


def _event(rng: random.Random, index: int, customer: str, when: datetime, source: str) -> Event:
    kind = rng.random()
    data: dict[str, Any]
    if kind < 0.45:
        etype, data = "llm.completion", {"tokens": rng.randint(1, 4000), "model": rng.choice(MODELS)}
    elif kind < 0.75:
        etype, data = "api.request", {"method": rng.choice(METHODS), "path": f"/v1/items/{rng.randint(1, 99)}"}
    elif kind < 0.85:
        etype, data = "storage.sampled", {"gb": round(rng.uniform(0, 500), 3)}
    elif kind < 0.95:
        etype, data = "user.active", {"user_id": f"u{rng.randint(1, 40)}"}
    else:
        etype, data = "seats.updated", {"seats": rng.randint(1, 50)}
    return {
        "specversion": "1.0",
        "id": f"evt-{index}",
        "source": source,
        "type": etype,
        "subject": customer,
        "time": when.isoformat().replace("+00:00", "Z"),
        "data": data,
    }


def generate(
    events: int,
    customers: int = 300,
    duplicate_rate: float = 0.10,
    batch_share: float = 0.3,
    binary_share: float = 0.1,
    late_events: int = 0,
    bad_records: int = 0,
    seed: int = 7,
    now: datetime | None = None,
    source: str = "bastionary-workload",
    single_only: bool = False,
    batch_size: int | None = None,
) -> Workload:
    """``events`` distinct events, plus repeats, bad records and late events as asked."""
    rng = random.Random(seed)
    now = now or datetime.now(UTC)
    customer_ids = [f"cust-{i:04d}" for i in range(customers)]
    # Recent events spread over the last 30 minutes; late ones hours to days back.
    unique = [
        _event(rng, i, rng.choice(customer_ids), now - timedelta(seconds=rng.uniform(0, 1800)), source)
        for i in range(events - late_events)
    ]
    late = [
        _event(rng, i, rng.choice(customer_ids), now - timedelta(hours=rng.uniform(2, 72)), source)
        for i in range(events - late_events, events)
    ]
    dupes = [rng.choice(unique) for _ in range(int(len(unique) * duplicate_rate))] if unique else []
    stream = unique + dupes  # a repeat may even arrive first: same payload, so either copy counts
    rng.shuffle(stream)
    stream.extend(late)
    records = _pack(rng, stream, batch_share, binary_share, single_only, batch_size)
    records.extend(bad_record_examples(rng, customer_ids, now)[:bad_records] if bad_records else [])
    return Workload(records, unique + late, len(dupes), min(bad_records, len(BAD_KINDS)), len(late))


def _pack(
    rng: random.Random,
    stream: list[Event],
    batch_share: float,
    binary_share: float,
    single_only: bool,
    batch_size: int | None,
) -> list[Record]:
    if batch_size:
        return _pack_batches(stream, batch_size)
    records: list[Record] = []
    i = 0
    while i < len(stream):
        roll = rng.random()
        if not single_only and roll < batch_share:
            members = stream[i : i + rng.randint(2, 50)]
            records.extend(_pack_batches(members, len(members)))
            i += len(members)
            continue
        event = stream[i]
        i += 1
        if not single_only and roll < batch_share + binary_share:
            headers = [(f"ce_{k}", str(v).encode()) for k, v in event.items() if k != "data"]
            headers.append(("content-type", b"application/json"))
            records.append(Record(event["subject"].encode(), orjson.dumps(event["data"]), headers, events=1))
        else:
            records.append(Record(event["subject"].encode(), orjson.dumps(event), events=1))
    return records


def _pack_batches(events: list[Event], size: int) -> list[Record]:
    """Batch records of up to ``size`` events; one customer per record, as it is keyed by one."""
    by_customer: dict[str, list[Event]] = {}
    for event in events:
        by_customer.setdefault(event["subject"], []).append(event)
    return [
        Record(customer.encode(), orjson.dumps(group[i : i + size]), events=len(group[i : i + size]))
        for customer, group in by_customer.items()
        for i in range(0, len(group), size)
    ]


BAD_KINDS = (
    "invalid_json",
    "invalid_encoding",
    "not_cloudevent",
    "invalid_time",
    "future_time",
    "invalid_meter_value",
    "empty_batch",
)


def bad_record_examples(rng: random.Random, customers: list[str], now: datetime) -> list[Record]:
    customer = customers[0].encode()
    base = {"specversion": "1.0", "source": "bad-producer", "type": "llm.completion", "subject": customers[0]}
    stamp = now.isoformat()
    return [
        Record(customer, b"{not json"),
        Record(customer, b'{"id": "\xff\xfe"}'),
        Record(customer, orjson.dumps({**base, "id": 42, "time": stamp, "data": {"tokens": 1}})),
        Record(customer, orjson.dumps({**base, "id": "bad-time", "time": "yesterday", "data": {"tokens": 1}})),
        Record(
            customer,
            orjson.dumps(
                {**base, "id": "future", "time": (now + timedelta(days=1)).isoformat(), "data": {"tokens": 1}}
            ),
        ),
        Record(customer, orjson.dumps({**base, "id": "no-tokens", "time": stamp, "data": {"model": "gpt-4"}})),
        Record(customer, b"[]"),
    ]


def ground_truth(events: list[Event]) -> Truth:
    """Per meter of the example catalog: {(customer, group): total over all time}."""
    sums: Truth = {m: {} for m in ("llm_tokens", "llm_requests", "api_requests")}
    peaks: dict[GroupKey, Decimal] = {}
    uniques: dict[GroupKey, set[str]] = {}
    latest: dict[GroupKey, tuple[datetime, Decimal]] = {}
    for e in events:
        customer, data, etype = e["subject"], e["data"], e["type"]
        if etype == "llm.completion":
            key = (customer, (("model", data["model"]),))
            sums["llm_tokens"][key] = sums["llm_tokens"].get(key, Decimal(0)) + Decimal(data["tokens"])
            sums["llm_requests"][(customer, ())] = sums["llm_requests"].get((customer, ()), Decimal(0)) + 1
        elif etype == "api.request":
            key = (customer, (("method", data["method"]),))
            sums["api_requests"][key] = sums["api_requests"].get(key, Decimal(0)) + 1
        elif etype == "storage.sampled":
            value = Decimal(str(data["gb"]))
            peaks[(customer, ())] = max(peaks.get((customer, ()), value), value)
        elif etype == "user.active":
            uniques.setdefault((customer, ()), set()).add(data["user_id"])
        elif etype == "seats.updated":
            candidate = (datetime.fromisoformat(e["time"]), Decimal(data["seats"]))
            latest[(customer, ())] = max(latest.get((customer, ()), candidate), candidate)
    return {
        **sums,
        "storage_peak_gb": peaks,
        "active_users": {k: Decimal(len(v)) for k, v in uniques.items()},
        "seats": {k: v[1] for k, v in latest.items()},
    }
