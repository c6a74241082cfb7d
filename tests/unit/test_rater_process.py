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
