"""What ``bastionary demo`` shows after the invoices: dunning and entitlements.

The demo plays the customers' side. Every invoice is paid as soon as it is receivable,
except the first invoice of a few customers: three never pay, and one pays once its second
reminder has arrived. Dunning email lands in a real SMTP server (:class:`SmtpSink`) and the
signed webhooks in a real HTTP receiver, both inside the demo process.

Dunning runs on a file clock (``BASTIONARY_CLOCK=file:PATH``) that stands still until the
demo moves it, step by step, through the policy's days in ``demo_catalog.yaml``: no invoice
is overdue before that, however slow the machine, and each step is waited for before the
next. The clock is moved once every other invoice is paid, early in a minute, so the walk
(a few seconds) is over before the rater issues the next minute's invoices.

Entitlements are checked over the worker's HTTP API: a customer's metered limit flips to
exhausted after a burst of usage, and the suspension of a non-payer takes features away.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from bastionary.devstack.broker import free_port
from bastionary.devstack.local_peers import SmtpSink, WebhookReceiver
from bastionary.dunning.clock import FileClock
from bastionary.dunning.engine import notice_id
from bastionary.dunning.policy import Policy
from bastionary.kafka import UsageProducer
from bastionary.storage import diagnostics
from bastionary.storage.client import Client
from bastionary.storage.diagnostics import DunningNotice
from bastionary.storage.dunning import ClickHouseDunningStore
from bastionary.tools.workload import Event
from bastionary.topics import Topics

NON_PAYERS = ("cust-0001", "cust-0003", "cust-0006")  # never pay their first invoice
LATE_PAYER = "cust-0004"  # pays its first invoice once reminder PAY_AFTER_STEP arrived
PAY_AFTER_STEP = 2
DUNNED = (*NON_PAYERS, LATE_PAYER)
EXHAUSTS = ("cust-0002", "api_calls")  # a starter customer with a hard limit of 100 API calls
SUSPENDED = "cust-0003"  # a non-payer whose features go away when the suspend step applies

Check = dict[str, Any]  # an entitlement check's JSON answer


def billing_email(customer: str) -> str:
    return f"ap@{customer}.example.com"


class DunningPeers:
    """The SMTP sink, the webhook receiver, the dunning clock and the worker's API key."""

    def __init__(self, demo_dir: Path) -> None:
        # The dunning clock stands still until the demo moves it: nothing is overdue before.
        self.clock = FileClock(demo_dir / "dunning-clock")
        self.clock.set(datetime.now(UTC))
        self.secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()  # Standard Webhooks form
        self.api_key = secrets.token_urlsafe(18)
        self.web_port = free_port()
        self.smtp = SmtpSink()
        self.hooks = WebhookReceiver(self.secret)
        self._stack = ExitStack()

    def __enter__(self) -> DunningPeers:
        self._stack.enter_context(self.smtp)
        self._stack.enter_context(self.hooks)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def worker_env(self) -> dict[str, str]:
        return {
            "BASTIONARY_WEB_PORT": str(self.web_port),
            "BASTIONARY_API_KEYS": self.api_key,
            "BASTIONARY_CLOCK": f"file:{self.clock.path}",
            "BASTIONARY_DUNNING_ENABLED": "true",
            "BASTIONARY_DUNNING_INTERVAL": "PT1S",
            "BASTIONARY_SMTP_HOST": self.smtp.host,
            "BASTIONARY_SMTP_PORT": str(self.smtp.port),
            "BASTIONARY_SMTP_SENDER": "billing@bastionary.example.com",
            "BASTIONARY_WEBHOOK_URL": self.hooks.url,
            "BASTIONARY_WEBHOOK_SECRET": self.secret,
            "BASTIONARY_WEBHOOK_BACKOFF": "PT0.2S",
        }

    def check(self, customer: str, feature: str) -> tuple[int, Check]:
        """GET /v1/customers/{customer}/entitlements/{feature} with the demo's API key."""
        url = f"http://127.0.0.1:{self.web_port}/v1/customers/{customer}/entitlements/{feature}"
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.api_key}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, orjson.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, orjson.loads(error.read() or b"{}")
        except (urllib.error.URLError, OSError) as error:
            return 0, {"error": str(error)}

    def notice_ids_mailed(self) -> set[str]:
        return {str(m["X-Bastionary-Notice-Id"]) for m in self.smtp.received()}


@dataclass
class Receivable:
    invoice_id: str
    customer_id: str
    currency: str
    total: Decimal
    due_at: datetime


@dataclass
class Payment:
    invoice_id: str
    customer_id: str
    amount: Decimal
    currency: str
    at: datetime


class Collections:
    """The customers' side of the demo, in the background from the first subscription on:
    pays each invoice as soon as dunning knows it (a payment for an invoice not yet
    receivable is dead-lettered), except the first invoices of :data:`DUNNED`."""

    def __init__(
        self, client: Client, bootstrap: str, topics: Topics, first_period: datetime, peers: DunningPeers
    ) -> None:
        self.client = client  # its own ClickHouse client: one client is not shared between threads
        self.bootstrap, self.topics, self.first_period, self.peers = bootstrap, topics, first_period, peers
        self.dunned: dict[str, Receivable] = {}  # customer -> its first invoice, left unpaid
        self.paid: dict[str, Payment] = {}  # invoice_id -> what the demo paid
        self.last_error: str | None = None
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._loop()), name="demo-collections", daemon=True)

    def __enter__(self) -> Collections:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self._thread.join(timeout=10)

    def snapshot(self) -> tuple[dict[str, Receivable], dict[str, Payment]]:
        with self._lock:
            return dict(self.dunned), dict(self.paid)

    async def _loop(self) -> None:
        async with UsageProducer(self.bootstrap) as producer:
            while not self._halt.is_set():
                try:
                    await self._tick(producer)
                except Exception as error:  # the tables appear once the worker migrated
                    self.last_error = repr(error)
                await asyncio.sleep(1.0)

    async def _tick(self, producer: UsageProducer) -> None:
        first = int(self.first_period.timestamp())
        for invoice_id, customer, currency, total, due_at, start in diagnostics.receivables_due(self.client):
            if invoice_id in self.paid:
                continue
            if start == first and customer in DUNNED:
                with self._lock:
                    self.dunned.setdefault(customer, Receivable(invoice_id, customer, currency, total, due_at))
                reminded = notice_id(invoice_id, PAY_AFTER_STEP) in self.peers.notice_ids_mailed()
                if customer != LATE_PAYER or not reminded:
                    continue
            await self._pay(producer, invoice_id, customer, total, currency)

    async def _pay(
        self, producer: UsageProducer, invoice_id: str, customer: str, amount: Decimal, currency: str
    ) -> None:
        now = datetime.now(UTC)
        data = {
            "payment_id": f"pay-{invoice_id}",
            "invoice_id": invoice_id,
            "customer_id": customer,
            "amount": format(amount.normalize(), "f"),
            "currency": currency,
            "paid_at": now.isoformat(),
        }
        event = {
            "specversion": "1.0",
            "id": f"pay-{invoice_id}",
            "source": "bastionary-demo",
            "type": "bastionary.payment.succeeded.v1",
            "subject": customer,
            "time": now.isoformat(),
            "data": data,
        }
        await (await producer.send(self.topics.payments, event))
        with self._lock:
            self.paid[invoice_id] = Payment(invoice_id, customer, amount, currency, now)


# -- entitlements --------------------------------------------------------------------------


def exhaust_entitlement(
    console: Console, peers: DunningPeers, bootstrap: str, topics: Topics, problems: list[str]
) -> list[list[str]]:
    """Check a hard limit, spend it with a burst of API calls, check again: rows for the table."""
    customer, feature = EXHAUSTS
    with console.status(f"entitlements: {customer} spends its {feature} limit..."):
        status, before = _wait_check(peers, customer, feature, lambda s, b: s == 200, 60)
        if status != 200:
            problems.append(f"entitlement check {customer}/{feature} answered {status}: {before}")
            return []
        left = 60 - datetime.now(UTC).second
        if left < 10:  # a 1-minute billing period resets the counter: start the burst in a fresh one
            time.sleep(left + 1.5)
            _, before = peers.check(customer, feature)
        calls = int(Decimal(before["balance"] or "0"))
        now = datetime.now(UTC)
        burst = [
            {
                "specversion": "1.0",
                "id": f"ent-{customer}-{now:%H%M%S}-{i}",
                "source": "bastionary-demo",
                "type": "api.request",
                "subject": customer,
                "time": now.isoformat(),
                "data": {"method": "POST"},
            }
            for i in range(calls)
        ]
        asyncio.run(_send_all(bootstrap, topics.usage_events, burst))
        status, after = _wait_check(peers, customer, feature, lambda s, b: s == 200 and not b["has_access"], 30)
    rows = [
        _entitlement_row(customer, feature, "before", before),
        _entitlement_row(customer, feature, f"after {calls} API calls", after),
    ]
    if not before.get("has_access") or after.get("reason") != "exhausted":
        problems.append(f"{customer}/{feature} did not flip from access to exhausted: {before} -> {after}")
    return rows


def suspension_checks(console: Console, peers: DunningPeers, problems: list[str]) -> list[list[str]]:
    rows: list[list[str]] = []
    with console.status(f"entitlements: checking {SUSPENDED} after its suspension..."):
        status, sso = _wait_check(peers, SUSPENDED, "sso", lambda s, b: b.get("reason") == "suspended", 20)
        rows.append(_entitlement_row(SUSPENDED, "sso", "after the suspend step", sso))
        _, portal = peers.check(SUSPENDED, "billing_portal")
        rows.append(_entitlement_row(SUSPENDED, "billing_portal", "after the suspend step", portal))
    if sso.get("reason") != "suspended":
        problems.append(f"{SUSPENDED} is not suspended in its entitlement checks: {status} {sso}")
    if portal.get("has_access") is not True:
        problems.append(f"{SUSPENDED} lost billing_portal, which survives suspension: {portal}")
    return rows


def show_entitlements(console: Console, rows: list[list[str]]) -> None:
    if not rows:
        return
    table = Table(title="Entitlement checks (GET /v1/customers/{customer}/entitlements/{feature})")
    for column in ("customer", "feature", "when", "access", "usage / limit", "reason"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _wait_check(
    peers: DunningPeers, customer: str, feature: str, done: Callable[[int, Check], bool], timeout: float
) -> tuple[int, Check]:
    deadline = time.monotonic() + timeout
    status, body = peers.check(customer, feature)
    while not done(status, body) and time.monotonic() < deadline:
        time.sleep(0.3)
        status, body = peers.check(customer, feature)
    return status, body


def _entitlement_row(customer: str, feature: str, when: str, body: Check) -> list[str]:
    labels: dict[object, str] = {True: "[green]yes", False: "[red]no"}
    access = labels.get(body.get("has_access"), "?")
    usage = f"{body['usage']} / {body['limit']}" if body.get("limit") is not None else "-"
    reason = body.get("reason") or ("survives suspension" if feature == "billing_portal" else "-")
    return [customer, feature, when, access, usage, reason]


async def _send_all(bootstrap: str, topic: str, events: list[Event]) -> None:
    async with UsageProducer(bootstrap) as producer:
        await asyncio.gather(*[await producer.send(topic, event) for event in events])


# -- dunning -------------------------------------------------------------------------------


def follow_dunning(
    console: Console, client: Client, peers: DunningPeers, collections: Collections, policy: Policy, problems: list[str]
) -> None:
    """Walk the dunning clock through the policy, then print what arrived and check it."""
    try:
        _walk(console, client, peers, collections, policy)
    except TimeoutError as error:
        problems.append(str(error) + (f" (last error: {collections.last_error})" if collections.last_error else ""))
    time.sleep(1.5)  # anything still in flight (a notice that should not exist) lands
    dunned, paid = collections.snapshot()
    notices = _notices(client)
    _show_emails(console, peers, notices, dunned)
    _show_cases(console, client, peers, policy, notices, dunned, paid, problems)
    _show_funnel(console, client)


def _walk(console: Console, client: Client, peers: DunningPeers, collections: Collections, policy: Policy) -> None:
    """Move the dunning clock to each step's day after the first invoices' due date, and wait
    for that step's email and webhooks; the late payer pays between its steps."""
    with console.status("dunning: waiting until every other invoice is paid..."):
        _wait(lambda: _quiet_moment(client, collections), 120, "a moment with every other invoice paid")
    dunned, _ = collections.snapshot()
    due = max(r.due_at for r in dunned.values())
    console.print(
        f"The dunning clock ({peers.clock.path.name}) moves through policy {policy.key!r} from the "
        f"first invoices' due date, {due:%Y-%m-%d}:"
    )
    for n, step in enumerate(policy.steps, 1):
        moment = peers.clock.set(due + step.after + timedelta(minutes=1))
        customers = [c for c in DUNNED if c in NON_PAYERS or n <= PAY_AFTER_STEP]
        expected = {notice_id(dunned[c].invoice_id, n) for c in customers}
        with console.status(f"dunning: clock at {moment:%Y-%m-%d %H:%M}, waiting for step {n} ({step.action})..."):
            _wait(
                lambda: expected <= peers.notice_ids_mailed() & _hooked(peers),
                45,
                f"step {n} ({step.action}) to reach {', '.join(customers)}",
            )
        name = step.action.value + (f"/{step.template}" if step.template else "")
        console.print(
            f"  {moment:%Y-%m-%d}, day {step.after.days:>2}: step {n} {name}, email + webhook -> {' '.join(customers)}"
        )
        if n == PAY_AFTER_STEP:
            late = dunned[LATE_PAYER]
            with console.status(f"dunning: {LATE_PAYER} pays after reminder {n}..."):
                _wait(
                    lambda: (
                        late.invoice_id in collections.snapshot()[1]
                        and diagnostics.dunning_states(client, late.invoice_id)[-1:] == ["paid"]
                    ),
                    45,
                    f"{LATE_PAYER}'s payment",
                )
            payment = collections.snapshot()[1][late.invoice_id]
            console.print(
                f"  {LATE_PAYER} pays {_amount(payment.amount)} {payment.currency} (billing.payments) "
                f"after reminder {n}: its invoice is paid, its dunning stops"
            )


def _quiet_moment(client: Client, collections: Collections) -> bool:
    """Every invoice but the dunned ones is paid (and recorded), the current minute's invoices
    included, and the next ones are not due for a while: a clock moved ahead would dun an
    invoice the demo has not paid yet."""
    now = datetime.now(UTC)
    if not 5 <= now.second <= 40:  # the walk takes a few seconds: it ends well before the next invoices
        return False
    dunned, _ = collections.snapshot()
    if set(dunned) != set(DUNNED):
        return False
    boundary = now.replace(second=0, microsecond=0)
    rows = diagnostics.receivable_periods(client)
    subscriptions = sum(1 for r in rows if r.period_start == int(collections.first_period.timestamp()))
    if sum(1 for r in rows if r.period_end == int(boundary.timestamp())) < subscriptions:
        return False  # this minute's invoices are still being rated
    paid = diagnostics.paid_invoice_ids(client)
    ours = {r.invoice_id for r in dunned.values()}
    return all(r.invoice_id in paid for r in rows if r.total > 0 and r.invoice_id not in ours)


def _hooked(peers: DunningPeers) -> set[str]:
    return {orjson.loads(d.body)["id"] for d in peers.hooks.unique()}


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception:  # a query racing the worker; asked again
            pass
        time.sleep(0.3)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def _notices(client: Client) -> dict[str, DunningNotice]:
    """Every notice dunning decided, by notice_id (what emails and webhooks carry)."""
    return {notice.notice_id: notice for notice in diagnostics.dunning_notices(client)}


def _show_emails(
    console: Console, peers: DunningPeers, notices: dict[str, DunningNotice], dunned: dict[str, Receivable]
) -> None:
    due = {r.invoice_id: r.due_at for r in dunned.values()}
    table = Table(title=f"Dunning email caught by the demo's SMTP sink ({peers.smtp.host}:{peers.smtp.port})")
    for column in ("day", "to", "subject", "step", "amount due"):
        table.add_column(column, justify="right" if column in ("day", "amount due") else "left")
    rows: list[tuple[str, int, list[str]]] = []
    for message in peers.smtp.received():
        notice = notices.get(str(message["X-Bastionary-Notice-Id"]))
        if notice is None:
            rows.append(("?", 0, ["?", str(message["To"]), str(message["Subject"]), "?", "?"]))
            continue
        since = str((notice.at - due[notice.invoice_id]).days) if notice.invoice_id in due else "?"
        subject = str(message["Subject"]).strip().replace(notice.invoice_id, notice.invoice_id[:8] + "…")
        rows.append(
            (
                notice.customer_id,
                notice.step,
                [
                    since,
                    str(message["To"]),
                    subject,
                    f"{notice.step} {notice.action}",
                    f"{_amount(notice.amount_due)} {notice.currency}",
                ],
            )
        )
    for _, _, row in sorted(rows, key=lambda r: (r[0], r[1])):
        table.add_row(*row)
    console.print(table)
    console.print("[dim]day: days past the due date, on the dunning clock the demo moved (BASTIONARY_CLOCK=file:...)")


def _show_cases(
    console: Console,
    client: Client,
    peers: DunningPeers,
    policy: Policy,
    notices: dict[str, DunningNotice],
    dunned: dict[str, Receivable],
    paid: dict[str, Payment],
    problems: list[str],
) -> None:
    mailed: dict[str, list[int]] = {}
    for message in peers.smtp.received():
        notice = notices.get(str(message["X-Bastionary-Notice-Id"]))
        if notice is not None:
            mailed.setdefault(notice.invoice_id, []).append(notice.step)
    hooked: dict[str, list[int]] = {}
    for delivery in peers.hooks.unique():
        data = orjson.loads(delivery.body)["data"]
        hooked.setdefault(data["invoice_id"], []).append(data["step"])
    decided: dict[str, list[int]] = {}
    for notice in notices.values():
        decided.setdefault(notice.invoice_id, []).append(notice.step)
    all_steps = list(range(1, len(policy.steps) + 1))
    last = policy.steps[-1].action.value
    table = Table(title="Dunning cases: the first invoice of four customers who do not pay on time")
    for column in ("customer", "invoice", "amount due", "emails", "webhooks", "outcome"):
        table.add_column(column, justify="right" if column == "amount due" else "left")
    for customer in DUNNED:
        case = dunned.get(customer)
        if case is None:
            problems.append(f"{customer}: its first invoice never became receivable")
            continue
        got, hooks = sorted(mailed.get(case.invoice_id, [])), sorted(hooked.get(case.invoice_id, []))
        states = diagnostics.dunning_states(client, case.invoice_id)
        if customer == LATE_PAYER:
            expected = all_steps[:PAY_AFTER_STEP]
            payment = paid.get(case.invoice_id)
            outcome = f"[green]paid after reminder {PAY_AFTER_STEP}: dunning stopped" if payment else "[red]never paid"
            beyond = [n for n in decided.get(case.invoice_id, []) if n > PAY_AFTER_STEP]
            if beyond:
                problems.append(f"{customer} paid after reminder {PAY_AFTER_STEP} and still got step(s) {beyond}")
            if states[-1:] != ["paid"]:
                problems.append(f"{customer}: its invoice is not recorded as paid (states: {states})")
        else:
            expected = all_steps
            done = len(policy.steps) in decided.get(case.invoice_id, [])
            outcome = f"{states[-1] if states else '?'}, " + (f"{last} applied" if done else f"no {last}")
        if got != expected:
            problems.append(f"{customer}: emails for steps {got}, expected {expected}")
        if hooks != expected:
            problems.append(f"{customer}: webhooks for steps {hooks}, expected {expected}")
        if any(
            str(m["To"]) != billing_email(customer)
            for m in peers.smtp.received()
            if m["X-Bastionary-Invoice-Id"] == case.invoice_id
        ):
            problems.append(f"{customer}: an email went to someone other than {billing_email(customer)}")
        table.add_row(
            customer,
            case.invoice_id[:8] + "…",
            f"{_amount(case.total)} {case.currency}",
            "steps " + " ".join(map(str, got)) if got else "-",
            "steps " + " ".join(map(str, hooks)) if hooks else "-",
            outcome,
        )
    console.print(table)
    ours = {r.invoice_id for r in dunned.values()}
    others = [n for n in notices.values() if n.invoice_id not in ours]
    auto = sum(1 for p in paid.values() if p.invoice_id not in ours)
    note = (
        f"[yellow]{len(others)} notice(s) still reached {', '.join(sorted({n.customer_id for n in others}))}"
        " (an invoice issued while the clock was ahead)"
        if others
        else "none was dunned"
    )
    console.print(f"{auto} other invoice{'' if auto == 1 else 's'} paid as soon as issued (most customers pay); {note}")
    deliveries = peers.hooks.deliveries
    console.print(
        f"webhooks: {len(deliveries)} POSTs to {peers.hooks.url}, every signature verified (HMAC-SHA256), "
        f"{len(peers.hooks.rejected)} rejected, {sum(d.duplicate for d in deliveries)} repeated"
    )
    if peers.hooks.rejected:
        problems.append(f"webhooks rejected: {peers.hooks.rejected}")


def _show_funnel(console: Console, client: Client) -> None:
    """The same query as `bastionary dunning report`, on the read-only connection."""
    table = Table(title="Dunning funnel (as `bastionary dunning report`)")
    for column in ("step", "action", "sent", "paid within 7d", "rate", "paid ever"):
        table.add_column(column, justify="left" if column == "action" else "right")
    for step, action, sent, paid_within, paid_ever in ClickHouseDunningStore(client).funnel(7):
        rate = f"{100 * paid_within / sent:.1f}%" if sent else "-"
        table.add_row(str(step), action, str(sent), str(paid_within), rate, str(paid_ever))
    console.print(table)


def _amount(value: Decimal) -> str:
    return format(Decimal(value).quantize(Decimal("0.01")), "f")
