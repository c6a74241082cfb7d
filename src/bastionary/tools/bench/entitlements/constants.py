"""The entitlement benchmark's rates, limits and targets, shared by its phases."""

CHECK_RATE = 1_000  # checks/s against the one worker
TARGET_CHECK_P99_MS = 5.0
TARGET_CHECK_UNDER_LOAD_P99_MS = 10.0  # while usage is ingested at half the maximum rate
TARGET_FRESHNESS_P99_S = 1.0
# Usage events/s of the steady customers during (a') and (b): half the maximum batch rate
# `bastionary bench` measured on the development machine with one flush process or none
# (35,472-36,938 events/s, 2026-12-04; it was 27,764 when this was 13,000, 2026-11-30).
# `--ingest-rate` sets another, e.g. half of what `bench` measures on the machine at hand.
DEFAULT_INGEST_RATE = 18_000
BACKGROUND_EVENTS_PER_RECORD = 100  # the shape the maximum was measured in
TRIAL_LIMIT = 5  # the trial plan's hard limit: 4 events, then the one that exhausts it
STEADY_LIMIT = 1_000_000_000
FEATURE = "api_calls"
POLL_S = 0.005  # how often a trial customer's check is asked during (b)
TRIAL_TIMEOUT_S = 30.0
SETTLED_CORES = 0.2  # the worker counts as idle below this CPU use (cores, over a second)
MAX_CONNECTIONS = 64  # keep-alive connections the client may open when answers queue up
