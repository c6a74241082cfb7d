"""Operator metrics that must move back, or exist before their first step: a gauge left at a
revoked partition's or an old run's value fires its alert for good, and a counter that first
appears at 1 never shows its first step on a rate() or increase() panel."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from faust.types import TP

from bastionary import metrics
from bastionary.catalog import load_catalog
from bastionary.rating.rater import RatingResult
from bastionary.settings import Settings
from bastionary.topics import Topics
from bastionary.worker.app import Billing, create_app
from bastionary.worker.services.billing import record_invoices

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "tests" / "fixtures" / "dunning_catalog.yaml"


def sample(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


def test_the_rating_lag_falls_to_zero_when_a_run_has_nothing_due():
    record_invoices(RatingResult([], oldest_due=datetime.now(UTC) - timedelta(days=90)))
    assert (sample("bastionary_rating_lag_seconds") or 0) > 89 * 86400
    record_invoices(RatingResult([]))  # nothing due: not behind
    assert sample("bastionary_rating_lag_seconds") == 0


async def test_a_revoked_partition_s_lag_is_no_longer_reported_and_counters_start_at_zero(tmp_path: Path):
    settings = Settings(catalog=CATALOG, data_dir=tmp_path, worker_id="w1", topic_prefix="lifecycle.")
    app = create_app(settings, "localhost:9", lambda *a: None, billing=Billing(load_catalog(CATALOG), lambda: None))
    topics = Topics(settings.topic_prefix)
    for topic in (topics.subscriptions, topics.payments, topics.entitlement_overrides):
        for error_class in ("invalid_json", "internal_error"):
            labels = {"topic": topic, "error_class": error_class}
            assert sample("bastionary_intake_dead_lettered_total", **labels) == 0
    assert sample("bastionary_usage_log_resets_total", topic=topics.usage_events, partition="0") == 0

    metrics.CONSUMER_LAG.labels(topics.usage_events, "3").set(1234)
    await app.on_partitions_revoked.send({TP(topics.usage_events, 3)})
    assert sample("bastionary_usage_consumer_lag", topic=topics.usage_events, partition="3") is None
