"""Run in a child process (chdb admits one data path per process) by test_rater_crash.py.

Rates 60 subscriptions with a publisher that dies after 25 sends (the rater "crashes"
halfway), then runs a fresh rater. Prints JSON: every (invoice id -> contents) published.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bastionary.catalog import parse_catalog
from bastionary.rating.rater import Rater
from bastionary.storage.billing import ClickHouseBillingStore
from bastionary.storage.client import open_client
from bastionary.storage.usage import ClickHouseUsageStore
from bastionary.tools.bench.rating import CATALOG, _seed


class Crash(Exception):
    pass


async def main(workdir: Path) -> dict:
    client = open_client(f"chdb://{workdir / 'clickhouse'}", "drill", create=True)
    ClickHouseUsageStore(client).migrate()
    now = datetime.now(UTC)
    period_start = (now.replace(day=1, hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)).replace(day=1)
    _seed(client, 60, period_start)
    catalog = parse_catalog(CATALOG)
    published: dict[str, set] = defaultdict(set)
    sends = {"n": 0}

    async def dying_publish(role: str, key: str, value: bytes):
        sends["n"] += 1
        if sends["n"] > 25:
            raise Crash("killed mid-run")
        return _record(role, value)

    async def publish(role: str, key: str, value: bytes):
        return _record(role, value)

    def _record(role: str, value: bytes):
        event = json.loads(value)
        if role == "invoices":
            published[event["data"]["invoice_id"]].add(json.dumps(event, sort_keys=True))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    store = ClickHouseBillingStore(client)
    try:
        await Rater(
            store, catalog.plans, catalog.meters, timedelta(0), dying_publish, settle=timedelta(0), batch_size=20
        ).run_once(now)
    except Crash:
        pass
    second = await Rater(
        store, catalog.plans, catalog.meters, timedelta(0), publish, settle=timedelta(0), batch_size=20
    ).run_once(now)
    third = await Rater(store, catalog.plans, catalog.meters, timedelta(0), publish, settle=timedelta(0)).run_once(now)
    stored = client.query("SELECT count(), countIf(published = 1) FROM invoices FINAL").result_rows[0]
    return {
        "published": {k: len(v) for k, v in published.items()},
        "second_run_new": len(second.invoices),
        "second_run_republished": second.republished,
        "third_run_new": len(third.invoices),
        "stored": int(stored[0]),
        "stored_published": int(stored[1]),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(Path(sys.argv[1])))))
