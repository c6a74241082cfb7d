"""Prometheus metrics, served at ``/metrics`` by the worker's web server."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

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
