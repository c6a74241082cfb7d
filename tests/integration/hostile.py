"""A producer that sends what well-behaved clients cannot: header names that are not UTF-8,
any timestamp, any bytes; and the catalogue of hostile records with the class each must get.

aiokafka's C record builder only takes ``str`` header names, so for these records its pure
Python builder is used, with a name whose UTF-8 encoding is whatever bytes the test wants.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.producer import message_accumulator
from aiokafka.producer import producer as producer_module
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

NOW = datetime.now(UTC).replace(microsecond=0)


class RawName(str):
    """A header name that encodes to the given bytes, valid UTF-8 or not."""

    raw: bytes

    def __new__(cls, raw: bytes) -> RawName:
        text = super().__new__(cls, raw.decode("utf-8", "backslashreplace"))
        text.raw = raw
        return text

    __hash__ = str.__hash__

    def encode(self, *args: object, **kwargs: object) -> bytes:  # type: ignore[override]
        return self.raw


@dataclass
class Hostile:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    timestamp_ms: int | None = None
    expect: str | None = None  # the dead letter's error.class; None: it lands
    events: int = 0  # events it lands


def event(event_id: str, customer: str = "cust-hostile", **data: object) -> dict:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "hostile",
        "type": "llm.completion",
        "subject": customer,
        "time": NOW.isoformat(),
        "data": {"tokens": 10, "model": "m"} | data,
    }


def _json(payload: object) -> bytes:
    return payload if isinstance(payload, bytes) else orjson.dumps(payload)


def catalogue(tag: str, customer: str = "cust-hostile", max_batch: int = 20) -> list[Hostile]:
    """One record of every hostile class, each followed by a good event that must still count."""
    good = lambda n: Hostile(customer.encode(), _json(event(f"{tag}-good-{n}", customer)), events=1)  # noqa: E731
    deep = b'{"a":' * 300 + b"1" + b"}" * 300
    binary = [
        ("ce_specversion", b"1.0"),
        ("ce_id", f"{tag}-bin".encode()),
        ("ce_source", b"hostile"),
        ("ce_type", b"llm.completion"),
        ("ce_time", NOW.isoformat().encode()),
    ]
    cases = [
        Hostile(
            customer.encode(),
            orjson.dumps(event(f"{tag}-deep", customer)).replace(b'"tokens":10', b'"tokens":10,"d":' + deep),
            expect="nesting_too_deep",
        ),
        Hostile(
            customer.encode(),
            _json(b'{"tokens": 10, "model": "m"}'),
            binary + [("ce_subject", b"cust-\xff\xfe")],
            expect="invalid_encoding",
        ),
        Hostile(b"cust-\xff", _json(event(f"{tag}-badkey", customer)), expect="invalid_encoding"),
        Hostile(customer.encode(), _json(event(f"{tag}-named", customer)), [(RawName(b"x-\xff\xfe"), b"v")], events=1),
        Hostile(
            customer.encode(),
            b'{"tokens": 1}',
            binary + [("ce_subject", customer.encode()), (RawName(b"ce_\xff"), b"v")],
            expect="invalid_encoding",
        ),
        Hostile(
            customer.encode(),
            orjson.dumps(event(f"{tag}-big", customer)).replace(b'"tokens":10', b'"tokens":18446744073709551617'),
            expect="value_out_of_range",
        ),
        Hostile(
            customer.encode(), _json(event(f"{tag}-underscore", customer, tokens="1_000")), expect="invalid_meter_value"
        ),
        Hostile(customer.encode(), _json(event(f"{tag}-negative", customer, tokens=-5)), expect="negative_value"),
        Hostile(
            customer.encode(),
            _json([event(f"{tag}-batch-{i}", customer) for i in range(max_batch + 1)]),
            expect="batch_too_large",
        ),
        Hostile(customer.encode(), None, expect="invalid_json"),
        Hostile(
            customer.encode(),
            _json(event(f"{tag}-far", customer)),
            timestamp_ms=2**50,
            expect="invalid_record_timestamp",
        ),
        Hostile(
            customer.encode(),
            _json({k: v for k, v in event(f"{tag}-nosubject", customer).items() if k != "subject"}),
            expect="not_cloudevent",
        ),
        Hostile(customer.encode(), _json(event(f"{tag}-noon", customer) | {"time": "noon"}), expect="invalid_time"),
        Hostile(
            customer.encode(),
            _json(event(f"{tag}-future", customer) | {"time": (NOW + timedelta(days=1)).isoformat()}),
            expect="future_time",
        ),
        Hostile(customer.encode(), b"[]", expect="empty_batch"),
        Hostile(
            customer.encode(), _json(event(f"{tag}-huge", customer, pad="x" * (1 << 20))), expect="record_too_large"
        ),
        # The first good event again under its id with another payload: the first one counts.
        Hostile(customer.encode(), _json(event(f"{tag}-good-0", customer, tokens=11)), expect="duplicate_conflict"),
    ]
    out: list[Hostile] = []
    for n, case in enumerate(cases):
        out += [case, good(n)]
    return out


async def publish_hostile(bootstrap: str, topic: str, records: list[Hostile], partition: int | None = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=4 << 20)
    await producer.start()
    try:
        for record in records:
            raw_names = any(isinstance(name, RawName) for name, _ in record.headers)
            with _python_builder() if raw_names else contextlib.nullcontext():
                sent = await producer.send(
                    topic,
                    record.value,
                    key=record.key,
                    headers=record.headers or None,
                    timestamp_ms=record.timestamp_ms,
                    partition=partition,
                )
                await sent  # in order, one batch each where the builder differs
    finally:
        await producer.stop()


@contextlib.contextmanager
def _python_builder():
    modules = (message_accumulator, producer_module)
    originals = [module.DefaultRecordBatchBuilder for module in modules]
    for module in modules:
        module.DefaultRecordBatchBuilder = _DefaultRecordBatchBuilderPy
    try:
        yield
    finally:
        for module, original in zip(modules, originals, strict=False):
            module.DefaultRecordBatchBuilder = original


def publish(bootstrap: str, topic: str, records: list[Hostile], partition: int | None = None) -> None:
    asyncio.run(publish_hostile(bootstrap, topic, records, partition))
