"""Prometheus metrics, served at ``/metrics`` by the worker's web server."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)


def start_at_zero(metric: Counter | Histogram, label_sets: Iterable[tuple[str, ...]]) -> None:
    """Create each label set at 0 before anything happens. A series that first appears at 1
    has no earlier sample, so ``rate()`` and ``increase()`` never count its first step: the
    first invoice of a currency, the first denial for a reason would not show on a dashboard."""
    for labels in label_sets:
        metric.labels(*labels)


RECORDS_RECEIVED = Counter(
    "bastionary_usage_records_received", "Kafka records read from usage.events", registry=REGISTRY
)
EVENTS_ACCEPTED = Counter(
    "bastionary_usage_events_accepted", "Events stored and counted (first sightings)", registry=REGISTRY
)
EVENTS_DUPLICATE = Counter(
    "bastionary_usage_events_duplicate", "Events dropped as repeats of (source, id)", registry=REGISTRY
)
EVENTS_DEAD_LETTERED = Counter(
    "bastionary_usage_dead_lettered", "Records or events sent to usage.dlq", ["error_class"], registry=REGISTRY
)
FLUSH_SECONDS = Histogram(
    "bastionary_usage_flush_seconds",
    "Time to land one flush in ClickHouse",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "bastionary_usage_consumer_lag", "Records not yet landed, per partition", ["topic", "partition"], registry=REGISTRY
)
LOG_RESETS = Counter(
    "bastionary_usage_log_resets",
    "Partitions found holding another log than the one landed from (a new epoch was opened)",
    ["topic", "partition"],
    registry=REGISTRY,
)
DEDUPE_PURGED = Counter(
    "bastionary_dedupe_keys_purged", "Dedupe cache entries dropped past the horizon", registry=REGISTRY
)
INTAKE_DEAD_LETTERED = Counter(
    "bastionary_intake_dead_lettered",
    "Records of the billing, dunning and entitlement-override topics sent to a dead-letter topic,"
    " by the topic they were read from and the error class (internal_error: a bug of ours met the record)",
    ["topic", "error_class"],
    registry=REGISTRY,
)
ENTITLEMENT_CUSTOMERS = Gauge(
    "bastionary_entitlement_customers_in_memory",
    "Customers whose entitlement state this worker holds (the owner of their partition)",
    registry=REGISTRY,
)
SWITCH_INTERVAL = Gauge(
    "bastionary_switch_interval_seconds",
    "The interpreter's switch interval: short while HTTP requests come in, long while the worker only ingests",
    registry=REGISTRY,
)
EVENT_LOOP_LAG = Histogram(
    "bastionary_event_loop_lag_seconds",
    "How much later than asked the worker's event loop woke a probe (every 0.1 s): the wait any"
    " request or record queued at that moment also had",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
GC_PAUSE_SECONDS = Histogram(
    "bastionary_gc_pause_seconds",
    "The worker's cyclic garbage collections: between flushes (young), every minute (full: what aged"
    " since the last), every hour (all, the frozen included); each one pauses every thread of the worker",
    ["kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
    registry=REGISTRY,
)
GC_UNREACHABLE = Counter(
    "bastionary_gc_unreachable_objects",
    "Objects the worker's garbage collections found in unreachable reference cycles (freed)",
    registry=REGISTRY,
)
API_REQUESTS = Histogram(
    "bastionary_api_request_seconds",
    "HTTP API requests by route template, method and status, and how long they took to answer",
    ["route", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
API_EVENTS = Counter(
    "bastionary_api_events",
    "Usage events posted to POST /v1/events, by outcome (accepted: published and acknowledged)",
    ["outcome"],
    registry=REGISTRY,
)

# -- rating, credit limits --------------------------------------------------------------------
INVOICES_ISSUED = Counter(
    "bastionary_rating_invoices",
    "Invoices the rater issued (stored and published), by kind and currency",
    ["kind", "currency"],
    registry=REGISTRY,
)
INVOICED_AMOUNT = Counter(
    "bastionary_rating_invoiced_amount",
    "Sum of the issued invoices' totals (after credits, with tax), by currency; a float view of exact amounts",
    ["currency"],
    registry=REGISTRY,
)
RATING_RUNS = Counter(
    "bastionary_rating_runs",
    "Rating runs of this worker, by outcome (ok; partial: some invoices could not be priced; failed)",
    ["outcome"],
    registry=REGISTRY,
)
RATING_FAILED_INVOICES = Counter(
    "bastionary_rating_failed_invoices",
    "Invoices (or usage-threshold checks) that could not be priced, or that the broker refused to publish,"
    " one per run that tried; a customer whose invoice could not be priced waits",
    registry=REGISTRY,
)
RATING_RUN_SECONDS = Histogram(
    "bastionary_rating_run_seconds",
    "Time of one rating run: finding what is due, pricing, storing, publishing",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
RATING_LAG = Gauge(
    "bastionary_rating_lag_seconds",
    "How long the oldest invoice rated in the last run had been due (now minus its cutoff and settle time)",
    registry=REGISTRY,
)
CREDIT_LIMIT_EVENTS = Counter(
    "bastionary_credit_limit_events",
    "Credit-limit events decided (threshold_crossed, reached, restored)",
    ["kind"],
    registry=REGISTRY,
)

# -- dunning --------------------------------------------------------------------------------
DUNNING_NOTICES = Counter(
    "bastionary_dunning_notices", "Dunning notices decided, by step and action", ["step", "action"], registry=REGISTRY
)
DUNNING_DELIVERIES = Counter(
    "bastionary_dunning_deliveries",
    "Notice deliveries by channel and outcome (delivered, failed: dead-lettered after the last attempt)",
    ["channel", "outcome"],
    registry=REGISTRY,
)
DUNNING_DELIVERY_ATTEMPTS = Counter(
    "bastionary_dunning_delivery_attempts",
    "Delivery attempts by channel (attempts beyond one per delivery are retries)",
    ["channel"],
    registry=REGISTRY,
)

# -- entitlements -----------------------------------------------------------------------------
ENTITLEMENT_CHECKS = Counter(
    "bastionary_entitlement_checks",
    "Entitlement checks answered by this worker, by result (granted, denied) and reason (none when granted)",
    ["result", "reason"],
    registry=REGISTRY,
)
ENTITLEMENT_STATE_LOADS = Counter(
    "bastionary_entitlement_state_loads",
    "Customers whose entitlement state was read from ClickHouse (first check, or a change invalidated it)",
    registry=REGISTRY,
)

# -- the SQL gateway ----------------------------------------------------------------------------
GATEWAY_QUERIES = Histogram(
    "bastionary_gateway_query_seconds",
    "Queries answered by the embedded ClickHouse gateway, by role and outcome (ok, refused: not read-only,"
    " error: the engine or the request failed), and how long they took",
    ["role", "outcome"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
    registry=REGISTRY,
)
