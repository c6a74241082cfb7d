"""``bastionary bench --entitlements``: the check API measured against its targets.

The same embedded stack as ``bastionary bench`` (see :mod:`bastionary.tools.bench`): one embedded
broker (Tansu) and one ``bastionary worker`` subprocess with a fresh data dir (chdb
in-process), a fresh topic prefix and consumer group, all torn down afterwards. The worker
gets a catalog of its own (written to the temp dir), a random API key, rating off, and the
default flush interval. The load generator runs in this process, the worker in its own.

Set-up: N "steady" customers (plan limit 10^9: never exhausted) and K "trial" customers
(plan limit ``TRIAL_LIMIT``) are subscribed through ``billing.subscriptions``; one check per
customer then loads its state in the worker (warm-up), and the worker is left to settle
(see :func:`_settle`). One check at a time is timed first: the cost without queueing.

(a) check latency: an open-loop client (asyncio + aiohttp, one keep-alive session) sends
    ``GET /v1/customers/{c}/entitlements/api_calls`` for random steady customers at fixed
    scheduled times, 1,000/s. Latency is counted from the *scheduled* send time to the
    whole answer read (so a stall delays every request queued behind it: no coordinated
    omission); the time from the actual send is reported too. Run once on an idle worker
    (target p99 5 ms) and once while the steady usage stream below is being ingested
    (target p99 10 ms).
(b) freshness: while a steady stream of usage (``--ingest-rate`` events/s, by default
    ``DEFAULT_INGEST_RATE``, half the batch maximum of ``bastionary bench``, in 100-event
    records for the steady customers) is ingested by the same worker, each trial customer gets
    ``TRIAL_LIMIT - 1`` events, is polled until its check shows them, then, after a random
    pause within one flush interval, gets the one event that exhausts its limit. Its check
    is polled every ``POLL_S`` until it answers ``has_access: false``. Freshness is the
    arrival of that answer minus the moment just before the event was handed to the
    producer (linger 0; also reported from the broker's ack). The background stream comes
    from a child process of the bench, with its own event loop and producer (in a thread it
    would hold the interpreter the check client needs).

Reported with each phase: the CPU the worker and this process used (so a figure can be
told apart from a starved machine), the worker's flush durations during the trials (from
its ``/metrics``), and, as ``bastionary bench`` does, how much of the machine other
processes used. Targets are reported as met or missed, never enforced.
"""

from __future__ import annotations

from bastionary.tools.bench.entitlements.figures import render_entitlements
from bastionary.tools.bench.entitlements.run import run_entitlements_bench

__all__ = ["render_entitlements", "run_entitlements_bench"]
