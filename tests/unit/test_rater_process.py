"""`bastionary rater` runs billing intake and rating alone, in a consumer group of its own beside
the workers: anything else it ran would run once per group. Dunning there decided every case
twice and delivered every notice twice (two groups each read all of dunning.notices)."""

from __future__ import annotations

from pathlib import Path

from bastionary.catalog import load_catalog
from bastionary.settings import Settings
from bastionary.worker.app import Billing, create_app

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "tests" / "fixtures" / "dunning_catalog.yaml"


def agents(usage: bool, tmp_path: Path) -> set[str]:
    settings = Settings(catalog=CATALOG, data_dir=tmp_path, worker_id="w1", consumer_group="g-rater")
    app = create_app(
        settings, "localhost:9", lambda *a: None, billing=Billing(load_catalog(CATALOG), lambda: None), usage=usage
    )
    return set(app.agents)


def test_the_rater_process_runs_no_dunning(tmp_path: Path):
    rater = agents(False, tmp_path)
    assert {"billing-subscriptions", "billing-credit-grants", "billing-customers", "billing-credit-notes"} <= rater
    assert not {name for name in rater if name.startswith("dunning")}


def test_a_worker_runs_dunning(tmp_path: Path):
    assert {"dunning-invoices", "dunning-payments", "dunning-responses", "dunning-notifier"} <= agents(True, tmp_path)


async def test_a_rebalance_waits_for_the_billing_and_dunning_runs_in_progress(tmp_path: Path):
    """A worker losing a partition finished its run before the one taking it over started:
    the two decided the same invoice (one id, two contents) and the same credit note (credited
    twice) beside each other. Now the revocation is held until the run has stored and published."""
    import asyncio

    import faust

    from bastionary.worker.context import WorkerContext
    from bastionary.worker.services.billing import BillingService
    from bastionary.worker.services.dunning import DunningService

    settings = Settings(catalog=CATALOG, data_dir=tmp_path, worker_id="w1")
    app = faust.App("fence-test", broker="kafka://localhost:9")
    ctx = WorkerContext(app, settings, "w1")
    catalog = load_catalog(CATALOG)
    billing = BillingService(ctx, catalog, lambda: None)  # type: ignore[arg-type,return-value]
    billing.install()
    dunning = DunningService(ctx, catalog, lambda: None, billing.owns)  # type: ignore[arg-type,return-value]
    dunning.install()
    for run in (billing._runs, dunning._deciding):
        async with run:  # a run in progress
            revoking = asyncio.ensure_future(app.on_partitions_revoked.send(set()))
            await asyncio.sleep(0.1)
            assert not revoking.done()
        await asyncio.wait_for(revoking, 5)


def test_a_worker_owns_nothing_while_a_rebalance_is_under_way(tmp_path: Path):
    """From the revocation until the new assignment the consumer still reports the old one: a
    rating tick in that gap rated partitions being handed over, beside their new owner."""
    import faust

    from bastionary.worker.context import WorkerContext

    settings = Settings(catalog=CATALOG, data_dir=tmp_path, worker_id="w1", usage_partitions=1)
    app = faust.App("owns-test", broker="kafka://localhost:9")
    ctx = WorkerContext(app, settings, "w1")

    class Assigned:
        def assignment(self):
            return {faust.types.TP("billing.subscriptions", 0)}

    app._consumer = Assigned()
    assert ctx.owns("cust-1", "billing.subscriptions")
    app.on_rebalance_start()
    assert not ctx.owns("cust-1", "billing.subscriptions")
    app.on_rebalance_end()
    assert ctx.owns("cust-1", "billing.subscriptions")
