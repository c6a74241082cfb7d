"""Every metric the README lists exists under that name (with its ``_total`` suffix for a
counter), and every metric the workers export is listed, with Prometheus naming."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from structlog.testing import capture_logs

from bastionary.metrics import REGISTRY
from bastionary.rating.rater import RatingFailure, RatingResult
from bastionary.worker.services.billing import record_invoices

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def exported() -> dict[str, str]:
    """Sample names a scrape shows for each metric family, by family name."""
    out = {}
    for family in REGISTRY.collect():
        suffix = "_total" if family.type == "counter" else ""
        out[family.name + suffix] = family.type
    return out


def documented() -> set[str]:
    section = README[README.index("- `/metrics`, Prometheus text:") : README.index("- `/healthz`, JSON:")]
    names, family = set(), "bastionary_usage"
    for token in re.findall(r"`((?:bastionary_|\.\.\._)[a-z_]+)", section):
        if token.startswith("..."):
            token = family + token[3:]
        else:
            family = "_".join(token.split("_")[:2])
        names.add(token)
    return names


def test_every_documented_metric_is_exported_and_every_exported_one_documented():
    assert documented() == set(exported())


def test_metric_names_follow_prometheus_conventions():
    for name, kind in exported().items():
        assert re.fullmatch(r"bastionary_[a-z][a-z0-9_]*", name), name
        if kind == "counter":
            assert name.endswith("_total"), name
        if kind == "histogram":
            assert name.endswith("_seconds"), name


def test_a_rating_run_counts_its_invoices_by_kind_and_currency_but_not_an_empty_one():
    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = value("bastionary_rating_invoices_total", kind="progressive", currency="CHF")
    amount = value("bastionary_rating_invoiced_amount_total", currency="CHF")
    issued = {"kind": "progressive", "currency": "CHF", "status": "finalized", "total": "12.50"}
    empty = {"kind": "final_adjustment", "currency": "CHF", "status": "empty", "total": "0.00"}
    record_invoices(RatingResult([issued, issued, empty], oldest_due=datetime.now(UTC) - timedelta(minutes=2)))
    assert value("bastionary_rating_invoices_total", kind="progressive", currency="CHF") == before + 2
    assert value("bastionary_rating_invoiced_amount_total", currency="CHF") == amount + 25.0
    assert value("bastionary_rating_invoices_total", kind="final_adjustment", currency="CHF") == 0
    assert 119 < value("bastionary_rating_lag_seconds") < 180


def test_an_invoice_that_could_not_be_priced_is_counted_and_logged_with_its_customer() -> None:
    def failed() -> float:
        return REGISTRY.get_sample_value("bastionary_rating_failed_invoices_total") or 0.0

    before = failed()
    failure = RatingFailure("cust-9", "sub-9", "period", datetime(2024, 1, 1, tzinfo=UTC), "InvalidOperation()")
    with capture_logs() as logs:
        record_invoices(RatingResult([], failed=[failure]))
    assert failed() == before + 1
    ((entry,),) = [[e for e in logs if e["log_level"] == "error"]]
    assert (entry["customer_id"], entry["subscription_id"], entry["period_start"], entry["error"]) == (
        "cust-9",
        "sub-9",
        "2024-01-01T00:00:00+00:00",
        "InvalidOperation()",
    )


def test_every_denial_reason_starts_at_zero() -> None:
    """The worker creates a zero series for each reason in ``REASONS``; a reason the
    evaluator can give but the list lacks would miss its first denial on the dashboard."""
    from bastionary.entitlements import evaluate
    from bastionary.entitlements.evaluate import REASONS

    source = Path(evaluate.__file__).read_text()
    given = set(re.findall(r'reason="([a-z_]+)"', source)) | set(re.findall(r'_deny\(decision, "([a-z_]+)"\)', source))
    assert given and given <= set(REASONS)


def test_start_at_zero_exports_a_zero_sample() -> None:
    from prometheus_client import CollectorRegistry, Counter

    from bastionary.metrics import start_at_zero

    registry = CollectorRegistry()
    counter = Counter("example_invoices", "test", ["kind", "currency"], registry=registry)
    start_at_zero(counter, [("period", "EUR"), ("advance", "EUR")])
    assert registry.get_sample_value("example_invoices_total", {"kind": "period", "currency": "EUR"}) == 0.0
    assert registry.get_sample_value("example_invoices_total", {"kind": "advance", "currency": "EUR"}) == 0.0
