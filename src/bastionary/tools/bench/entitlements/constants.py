"""The entitlement benchmark's rates, limits and targets, shared by its phases."""

CHECK_RATE = 1_000  # checks/s against the one worker
TARGET_CHECK_P99_MS = 5.0
TARGET_FRESHNESS_P99_S = 1.0
BACKGROUND_RATE = 500  # usage events/s of the steady customers during (b)
TRIAL_LIMIT = 5  # the trial plan's hard limit: 4 events, then the one that exhausts it
STEADY_LIMIT = 1_000_000_000
FEATURE = "api_calls"
POLL_S = 0.005  # how often a trial customer's check is asked during (b)
TRIAL_TIMEOUT_S = 30.0
SETTLED_CORES = 0.2  # the worker counts as idle below this CPU use (cores, over a second)
MAX_CONNECTIONS = 64  # keep-alive connections the client may open when answers queue up
