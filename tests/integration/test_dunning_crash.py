"""Dunning crash test: the worker is SIGKILLed while it is sending notices, and every notice
still goes out; no decision is taken twice.

What it shows, per channel, on the real broker and ClickHouse with a real SMTP server and a
real webhook receiver, both slow (every answer held back 50-200 ms after the request is kept,
so a kill lands while notices are on the wire):

- Decisions: exactly one ``notice`` row per (invoice, step), and the notice ids on
  dunning.notices are exactly the expected ones (a record may repeat on the topic, an id is
  never minted twice).
- Webhook: at least once on the wire, exactly once for a receiver that dedupes on
  ``webhook-id`` (the notice_id, signed). A repeat carries the same key and the same body.
- Email: AT LEAST ONCE. A notice's email is sent a second time exactly when the worker died
  after the SMTP server accepted it (250) and before ``delivered`` was recorded in
  ClickHouse; every copy carries the same deterministic ``Message-ID``
  (``<notice_id@bastionary.notices>``) and ``X-Bastionary-Notice-Id``, so a client or MTA
  that dedupes on Message-ID shows one. Repeats per kill are bounded by the notices in
  flight: DELIVERY_CONCURRENCY (4) per worker. The same bound holds for raw webhook repeats.

The test proves the "only in flight" part directly: right after each kill (the worker is
dead, so nothing moves) it takes the notices a peer has received but ClickHouse has no
``delivered`` row for. The repeats seen at the end are exactly those notices, per channel;
the copies the killed worker itself left unrecorded number at most DELIVERY_CONCURRENCY
per kill and channel, and the total repeats equal their sum (one resend each).
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta

import orjson
import pytest

from bastionary.devstack.local_peers import SmtpSink, WebhookReceiver
from bastionary.dunning.clock import FileClock
from bastionary.dunning.engine import notice_id
from bastionary.dunning.notify.email import message_id
from bastionary.worker.services.dunning import DELIVERY_CONCURRENCY

from .dunning_helpers import CATALOG, DUE, SECRET, invoice_event, read, send, subscription_event, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INVOICES = 40
CHANNELS = ("email", "webhook")
# Day on the dunning clock at which each step (P1D, P7D in the catalog) is due and the next is not.
STEP_DAYS = {1: 1.5, 2: 8.0}
KILLS_PER_STEP = 2
PEER_DELAY = (0.05, 0.2)


@dataclass
class Kill:
    step: int
    webhooks_seen: int
    emails_seen: int
    # channel -> notice ids a peer has received without a ``delivered`` row for that channel
    unrecorded: dict[str, set[str]]
    # channel -> those of them the killed worker itself sent (a copy arrived since the kill
    # before): the notices it had in flight, at most DELIVERY_CONCURRENCY
    in_flight: dict[str, set[str]]
    copies: dict[str, dict[str, int]]  # channel -> notice id -> copies the peer has received


def _invoice(i: int) -> str:
    return f"inv-{i:02d}"


def _customer(i: int) -> str:
    return f"cust-{i:02d}"


def _mailed(smtp: SmtpSink) -> dict[str, list]:
    by_notice: dict[str, list] = defaultdict(list)
    for message in smtp.received():
        by_notice[message["X-Bastionary-Notice-Id"]].append(message)
    return by_notice


def _hooked(hooks: WebhookReceiver) -> dict[str, list]:
    by_notice: dict[str, list] = defaultdict(list)
    for delivery in list(hooks.deliveries):
        by_notice[delivery.idempotency_key].append(delivery)
    return by_notice


def _settled_after_kill(stack, hooks: WebhookReceiver, smtp: SmtpSink) -> tuple[dict, dict]:
    """What the peers received and ClickHouse recorded once the dead worker's last bytes are in.

    The peers may still be reading a request that was fully sent before the kill, and the
    gateway may still be running an insert: read until two reads a second apart agree."""
    previous = None
    deadline = time.monotonic() + 30
    while True:
        snapshot = (
            _delivered(stack),
            {
                "webhook": {n: len(c) for n, c in _hooked(hooks).items()},
                "email": {n: len(c) for n, c in _mailed(smtp).items()},
            },
        )
        if snapshot == previous or time.monotonic() > deadline:
            return snapshot
        previous = snapshot
        time.sleep(1.0)


def _delivered(stack) -> dict[str, set[str]]:
    """channel -> notice ids with a ``delivered`` row (any copy; FINAL not needed for existence)."""
    found: dict[str, set[str]] = {c: set() for c in CHANNELS}
    for event_id, channel in stack.query(
        "SELECT DISTINCT event_id, channel FROM dunning_events WHERE kind = 'delivered'"
    ):
        found[channel].add(event_id.split(":")[0])
    return found


def _worker_state(stack, worker_id: str) -> str:
    """For a failure message: is the worker alive, and what did it last complain about."""
    process = stack.workers.get(worker_id)
    alive = "not started" if process is None else ("running" if process.poll() is None else process.returncode)
    log = stack.worker_log(worker_id).splitlines()
    bad = [line for line in log if any(w in line.lower() for w in ("error", "exception", "crash", "traceback"))]
    return (
        f"worker {worker_id} exit code {alive}; last complaints {[line[:400] for line in bad[-5:]]}; "
        f"log tail {[line[:400] for line in log[-5:]]}"
    )


def test_worker_killed_while_sending_each_notice_goes_out_once(stack, tmp_path):
    started = time.monotonic()
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"dunning crash test seed {seed}")
    clock = FileClock(tmp_path / "clock")
    clock.set(DUE - timedelta(hours=1))
    expected = {step: {notice_id(_invoice(i), step) for i in range(INVOICES)} for step in STEP_DAYS}
    all_ids = set().union(*expected.values())
    kills: list[Kill] = []

    with (
        SmtpSink(delay=PEER_DELAY, seed=seed) as smtp,
        WebhookReceiver(SECRET, delay=PEER_DELAY, seed=seed + 1) as hooks,
    ):
        env = {
            "BASTIONARY_CATALOG": str(CATALOG),
            "BASTIONARY_RATING_ENABLED": "false",
            "BASTIONARY_CLOCK": f"file:{clock.path}",
            "BASTIONARY_DUNNING_INTERVAL": "PT0.5S",
            "BASTIONARY_SMTP_HOST": smtp.host,
            "BASTIONARY_SMTP_PORT": str(smtp.port),
            "BASTIONARY_WEBHOOK_URL": hooks.url,
            "BASTIONARY_WEBHOOK_SECRET": SECRET,
            "BASTIONARY_WEBHOOK_BACKOFF": "PT0.1S",
        }
        stack.start_worker("w1", **env)
        send(
            stack,
            "billing.subscriptions",
            [subscription_event(_customer(i), f"{_customer(i)}@example.com") for i in range(INVOICES)],
        )
        send(stack, "billing.invoices", [invoice_event(_invoice(i), _customer(i), "100.00") for i in range(INVOICES)])
        wait_for(lambda: stack.query("SELECT count() FROM receivables FINAL")[0][0] == INVOICES, 90, "receivables")
        wait_for(
            lambda: (
                stack.query("SELECT uniqExact(customer_id) FROM subscriptions WHERE billing_email != ''")[0][0]
                == INVOICES
            ),
            60,
            "billing emails",
        )

        for step, day in STEP_DAYS.items():
            ids = expected[step]

            def reached() -> int:
                return len(ids & {d.idempotency_key for d in hooks.unique()})

            clock.set(DUE + timedelta(days=day))
            for _ in range(KILLS_PER_STEP):
                done = reached()
                remaining = INVOICES - done
                if remaining < 6:
                    break  # too few left to kill "mid-sending"; the next step gets its kills
                target = done + rng.randint(2, remaining // 2)
                wait_for(lambda: reached() >= target, 90, f"{target} webhooks of step {step}")
                time.sleep(rng.uniform(0.0, 0.2))
                stack.kill_worker("w1", 9)  # SIGKILL: no commit, no `delivered` for what is on the wire
                delivered, copies = _settled_after_kill(stack, hooks, smtp)
                before = kills[-1].copies if kills else {c: {} for c in CHANNELS}
                unrecorded = {c: set(copies[c]) - delivered[c] for c in CHANNELS}
                in_flight = {c: {n for n in unrecorded[c] if copies[c][n] > before[c].get(n, 0)} for c in CHANNELS}
                kills.append(Kill(step, reached(), len(ids & set(copies["email"])), unrecorded, in_flight, copies))
                stack.start_worker("w1", **env)

            def missing() -> dict[str, int]:
                delivered = _delivered(stack)
                return {
                    "webhook": len(ids - set(_hooked(hooks))),
                    "email": len(ids - set(_mailed(smtp))),
                    **{f"{c} recorded": len(ids - delivered[c]) for c in CHANNELS},
                }

            try:
                wait_for(lambda: not any(missing().values()), 120, f"every notice of step {step} delivered")
            except TimeoutError:
                raise AssertionError(
                    f"step {step} notices missing {missing()} after kills "
                    f"{[(k.step, k.webhooks_seen) for k in kills]}, seed {seed}; "
                    f"{_worker_state(stack, 'w1')}"
                ) from None

        # -- what the peers saw -----------------------------------------------------------------
        hooked, mailed = _hooked(hooks), _mailed(smtp)
        webhook_repeats = {n: len(c) - 1 for n, c in hooked.items() if len(c) > 1}
        email_repeats = {n: len(c) - 1 for n, c in mailed.items() if len(c) > 1}
        unrecorded = {c: set().union(*(k.unrecorded[c] for k in kills)) for c in CHANNELS}
        summary = (
            f"seed {seed}; {len(kills)} kills at (step, webhooks, emails) "
            f"{[(k.step, k.webhooks_seen, k.emails_seen) for k in kills]}; in flight per kill "
            f"{[{c: len(k.in_flight[c]) for c in CHANNELS} for k in kills]} (unrecorded "
            f"{[{c: len(k.unrecorded[c]) for c in CHANNELS} for k in kills]}); raw webhook repeats "
            f"{sum(webhook_repeats.values())} on {len(webhook_repeats)} notices, email repeats "
            f"{sum(email_repeats.values())} on {len(email_repeats)} notices; "
            f"{time.monotonic() - started:.0f}s"
        )
        print(summary)
        assert len(kills) >= 2 * len(STEP_DAYS) - 1, summary
        assert all(k.webhooks_seen < INVOICES for k in kills), f"a kill came after the sending: {summary}"

        # Webhook: every notice at least once; deduped on webhook-id, exactly the expected set.
        assert set(hooked) == all_ids, summary
        assert {d.idempotency_key for d in hooks.unique()} == all_ids
        assert len(hooks.unique()) == len(all_ids)
        assert hooks.rejected == [], summary
        for key, copies in hooked.items():
            assert len({c.body for c in copies}) == 1, f"{key} sent with different bodies"
            event = orjson.loads(copies[0].body)
            assert event["id"] == event["data"]["notice_id"] == key
        # Email: every notice at least once, every copy of one notice is the same message.
        assert set(mailed) == all_ids, summary
        for key, copies in mailed.items():
            assert {m["Message-ID"] for m in copies} == {message_id(key)}, key
            assert len({m["To"] for m in copies}) == 1 and copies[0]["To"].endswith("@example.com")
        # Repeats happen only for notices a peer had received when the worker died unrecorded,
        # and each of those is sent again (at least once): the repeats are exactly that set.
        assert set(webhook_repeats) == unrecorded["webhook"], summary
        assert set(email_repeats) == unrecorded["email"], summary
        # One repeat per copy a killed worker left unrecorded, and a worker has at most
        # DELIVERY_CONCURRENCY notices in flight: at most that many repeats per kill and channel.
        for kill in kills:
            assert all(len(kill.in_flight[c]) <= DELIVERY_CONCURRENCY for c in CHANNELS), summary
        assert sum(webhook_repeats.values()) == sum(len(k.in_flight["webhook"]) for k in kills), summary
        assert sum(email_repeats.values()) == sum(len(k.in_flight["email"]) for k in kills), summary
        assert sum(webhook_repeats.values()) <= DELIVERY_CONCURRENCY * len(kills), summary
        assert sum(email_repeats.values()) <= DELIVERY_CONCURRENCY * len(kills), summary

        # -- what ClickHouse and the topic say ----------------------------------------------------
        notice_rows = stack.query(
            "SELECT invoice_id, step, count(), groupArray(event_id) FROM dunning_events FINAL"
            " WHERE kind = 'notice' GROUP BY invoice_id, step"
        )
        assert all(count == 1 for _, _, count, _ in notice_rows), [r for r in notice_rows if r[2] != 1]
        assert {ids[0] for *_, ids in notice_rows} == all_ids
        unpublished = "SELECT count() FROM dunning_events FINAL WHERE kind = 'notice' AND published = 0"
        assert stack.query(unpublished)[0][0] == 0
        delivered_rows = stack.query(
            "SELECT event_id, count() FROM dunning_events FINAL WHERE kind = 'delivered' GROUP BY event_id"
        )
        assert all(count == 1 for _, count in delivered_rows)
        assert {e for e, _ in delivered_rows} == {f"{n}:{c}:delivered" for n in all_ids for c in CHANNELS}
        assert stack.query("SELECT count() FROM dunning_events WHERE kind = 'delivery_failed'")[0][0] == 0

        on_topic = [orjson.loads(m.value) for m in read(stack, "dunning.notices", idle=3)]
        step_ids = [e["id"] for e in on_topic if e["type"].endswith("step.v1")]
        assert set(step_ids) == all_ids  # ids, not counts: a record may repeat after a kill
        print(f"dunning.notices: {len(step_ids)} step records for {len(all_ids)} notices")
