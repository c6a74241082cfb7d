"""The write API's idempotency records (``api_idempotency``)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import NamedTuple

from bastionary.storage.client import Client, insert_rows

# How long a key answers for its first request: as long as a client may retry, which for one
# that replays billing writes from an outbox is as long as its usage events are deduplicated
# (BASTIONARY_DEDUPE_HORIZON's default). Stripe keeps keys 24 hours. The table's TTL
# (0019_api_idempotency_ttl.sql) is the same: change both or neither.
RETENTION = timedelta(days=35)


class IdempotencyRecord(NamedTuple):
    key_name: str
    path: str
    idempotency_key: str
    body_digest: str
    event_id: str
    value: str
    created_at: datetime


class ClickHouseIdempotency:
    def __init__(self, client: Client) -> None:
        self.client = client

    def first(self, key_name: str, path: str, idempotency_key: str) -> IdempotencyRecord | None:
        """The first request recorded under the key, if any: two first requests racing on two
        workers both record (one worker lets them take turns), and the earlier one is the one
        every later retry gets. A key recorded more than :data:`RETENTION` ago has none."""
        rows = self.client.query(
            f"SELECT {', '.join(IdempotencyRecord._fields)} FROM api_idempotency"
            " WHERE key_name = {k:String} AND path = {p:String} AND idempotency_key = {i:String}"
            # The TTL drops a row only when its part is merged: one past it is not read either,
            # or a key reused after the retention would be refused until some merge ran.
            f" AND created_at > now64(3) - INTERVAL {RETENTION.days} DAY"
            " ORDER BY created_at, event_id LIMIT 1",
            parameters={"k": key_name, "p": path, "i": idempotency_key},
        ).result_rows
        return IdempotencyRecord(*rows[0]) if rows else None

    def record(self, record: IdempotencyRecord) -> None:
        insert_rows(self.client, "api_idempotency", [record], IdempotencyRecord._fields)
