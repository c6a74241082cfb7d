"""The dunning decision: given one invoice's facts and history, what happens now.

Pure: no clock, broker or database. The worker loads a :class:`Case` per open invoice,
calls :func:`advance` and records what it returns, so every decision can be replayed from
``dunning_events`` and ``payments``.

Ids are derived from (invoice, step), or (invoice, what, n) for rows that can repeat (state
changes, minimum rows, reinstatements, a suspension applied again), so a case decided twice (a crash before
the rows were stored, two workers during a rebalance) produces the same rows and the same notices.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from bastionary.dunning.policy import STATE_ACTIONS, Action, Policy
from bastionary.money import format_money
from bastionary.rating.amount_due import amount_due

NAMESPACE = uuid.UUID("6b0f7f0a-3f57-4bb1-9d4c-2f5f3f1e8a21")

OPEN, PARTIALLY_PAID, OVERDUE, PAID, UNCOLLECTIBLE, VOID = (
    "open",
    "partially_paid",
    "overdue",
    "paid",
    "uncollectible",
    "void",
)
SETTLED = (PAID, VOID)
# Why a suspension is lifted: the settled state (paid, void), or this: what is left is below the
# policy's min_amount_due, which is never dunned, so it keeps no suspension (it is still owed).
BELOW_MINIMUM = "below_minimum"
# The detail of a suspend notice applied again after a reinstatement (see advance).
RESUSPENDED = "resuspended"
# A ``minimum`` row records the case going below the policy's min_amount_due or back above it
# (its detail), on the dunning clock: the policy's clock stands still while it is below.
MINIMUM, BELOW, ABOVE = "minimum", "below", "above"
# The detail of a suspend step passed over because the case is suspended already.
ALREADY = "already suspended"


def derived_id(*parts: object) -> str:
    return str(uuid.uuid5(NAMESPACE, "|".join(str(p) for p in parts)))


def notice_id(invoice_id: str, step: int) -> str:
    """Exactly one notice per (invoice, step): the id downstream systems dedupe on."""
    return derived_id(invoice_id, "step", step)


@dataclass(frozen=True)
class InvoiceFacts:
    invoice_id: str
    customer_id: str
    plan: str
    currency: str
    total: Decimal
    issued_at: datetime
    due_at: datetime
    period_start: datetime
    period_end: datetime
    backfill: bool = False  # issued by a backfill (rated after the subscription's periods had ended)


@dataclass(frozen=True)
class Pause:
    """The policy's clock stands still in [start, end); ``end`` None = until resolved."""

    start: datetime
    end: datetime | None
    reason: str  # promised | disputed | settled | below_minimum


@dataclass
class Case:
    invoice: InvoiceFacts
    paid: Decimal = Decimal(0)  # succeeded minus refunded payments, each payment_id once
    credited: Decimal = Decimal(0)  # by issued credit notes, each once
    # What the payment system reported refunded (whoever asked), what notes gave back (to the
    # balance or refunded) and the part of that they refunded: so a refund no note asked for
    # (a chargeback) is told from a note's (see bastionary.rating.amount_due).
    refunds_reported: Decimal = Decimal(0)
    given_back: Decimal = Decimal(0)
    notes_refunded: Decimal = Decimal(0)
    voided: bool = False
    pauses: list[Pause] = field(default_factory=list)
    steps_done: set[int] = field(default_factory=set)  # 1-based steps sent, applied or skipped
    suspended: bool = False  # a suspend step applied and not yet reinstated
    reinstatements: int = 0
    state: str | None = None  # the last recorded state
    state_changes: int = 0  # state rows recorded so far: numbers the next one
    # Every recorded state row in order, as (dunning clock when recorded, state): when the
    # case stood settled and when a refund reopened it (see settled_stretches).
    state_history: list[tuple[datetime, str]] = field(default_factory=list)
    # The same for the minimum rows: below the minimum as last recorded, how many rows so far
    # (numbers the next one), and every one in order as (dunning clock, below | above).
    below_minimum: bool = False
    minimum_changes: int = 0
    minimum_history: list[tuple[datetime, str]] = field(default_factory=list)
    recipient_email: str | None = None

    def count(self, kind: str, amount: Decimal) -> None:
        """Take in the ``payments`` rows of one kind (their sum, each payment_id once)."""
        if kind == "succeeded":
            self.paid += amount
        elif kind == "refunded":
            self.paid -= amount
            self.refunds_reported += amount
        elif kind == "credited":
            self.credited += amount
        elif kind == "given_back":
            self.given_back += amount
        elif kind == "note_refunded":
            self.notes_refunded += amount
        elif kind == "voided":
            self.voided = True

    @property
    def amount_due(self) -> Decimal:
        """Reckoned as the credit note decision reckons it (one function for both)."""
        return amount_due(
            self.invoice.total, self.paid, self.credited, self.given_back, self.refunds_reported, self.notes_refunded
        )


@dataclass(frozen=True)
class Record:
    """One row for ``dunning_events``; ``publish`` ones also go to ``dunning.notices``."""

    event_id: str
    kind: str  # notice | skipped | state | reinstated | minimum
    step: int = 0
    action: str = ""
    detail: str = ""
    data: dict[str, Any] | None = None  # the CloudEvent data of a published record

    @property
    def publish(self) -> bool:
        return self.data is not None


def state_of(case: Case, now: datetime) -> str:
    if case.voided:
        return VOID
    if case.amount_due <= 0:  # settled, by payments and credit notes (a chargeback reopens it)
        return PAID
    if case.state == UNCOLLECTIBLE or any(recorded == UNCOLLECTIBLE for _, recorded in case.state_history):
        # mark_uncollectible fires once per invoice: a write-off stands when a payment made
        # after it is charged back (the case would otherwise stand overdue with no step left).
        return UNCOLLECTIBLE
    if now >= case.invoice.due_at:
        return OVERDUE
    return PARTIALLY_PAID if case.paid > 0 else OPEN


def paused_at(case: Case, now: datetime) -> Pause | None:
    return next((p for p in case.pauses if p.start <= now and (p.end is None or now < p.end)), None)


def settled_stretches(case: Case) -> list[Pause]:
    """When the case stood settled (paid or void), from its recorded state rows. The policy's
    clock stands still then, as in a pause: a refund or chargeback long after payment reopens
    the schedule where it stood when the invoice was settled, not with every step due at once.
    The last stretch is open (``end`` None) while the last recorded state is settled: a case
    found reopened now was settled until now.

    The rows carry the dunning clock of the run that saw the change, so a stretch starts and
    ends up to one run after the payment or the refund did."""
    return _stretches(case.state_history, set(SETTLED), "settled")


def below_minimum_stretches(case: Case) -> list[Pause]:
    """When the case stood below the policy's min_amount_due (not settled), from its recorded
    minimum rows: never dunned then, so the policy's clock stands still, as when settled. A
    refund that raises the amount due again resumes the schedule where it stood, instead of
    making every step due at once. The last stretch is open while the last row is ``below``."""
    return _stretches(case.minimum_history, {BELOW}, BELOW_MINIMUM)


def _stretches(history: list[tuple[datetime, str]], inside: set[str], reason: str) -> list[Pause]:
    stretches: list[Pause] = []
    start: datetime | None = None
    for at, value in history:
        if value in inside and start is None:
            start = at
        elif value not in inside and start is not None:
            stretches.append(Pause(start, at, reason))
            start = None
    if start is not None:
        stretches.append(Pause(start, None, reason))
    return stretches


def overdue_for(case: Case, now: datetime) -> timedelta:
    """Time past ``due_at`` that counts for the policy: paused and settled stretches, and the
    stretches below the policy's minimum, do not."""
    due = case.invoice.due_at
    elapsed = max(now - due, timedelta(0))
    for pause in _merged(case.pauses + settled_stretches(case) + below_minimum_stretches(case)):
        start, end = max(pause.start, due), min(pause.end or now, now)
        if end > start:
            elapsed -= end - start
    return max(elapsed, timedelta(0))


def advance(case: Case, policy: Policy | None, now: datetime) -> list[Record]:
    """The rows to record for ``case`` at ``now``: state changes, steps, reinstatement, and a
    suspension applied again when a reinstated case owes again (see _suspension_to_reapply)."""
    records: list[Record] = []
    state = state_of(case, now)
    if state != case.state:
        records.append(_state_change(case, state, len(records)))
    settled = state in SETTLED
    below_minimum = not settled and policy is not None and case.amount_due < policy.min_amount_due
    if case.suspended and (settled or below_minimum):
        # A remainder below the minimum gets no more steps, so a suspension kept for it would
        # never end nor be told: lift it as payment in full does, the remainder still owed.
        reason = state if settled else BELOW_MINIMUM
        n = case.reinstatements + 1
        records.append(
            Record(
                derived_id(case.invoice.invoice_id, "reinstated", n),
                "reinstated",
                detail=reason,
                data=_reinstated(case, n, now, reason),
            )
        )
    if not settled and policy is not None and below_minimum != case.below_minimum:
        # Below the minimum or back above it (a payment, a refund, the policy's minimum changed),
        # on the run's clock. Not while settled: that stretch is counted out by the state rows.
        n = case.minimum_changes + 1
        records.append(
            Record(derived_id(case.invoice.invoice_id, MINIMUM, n), MINIMUM, n, detail=_below(below_minimum))
        )
    if settled or policy is None or case.invoice.total <= 0:
        return records
    if below_minimum or paused_at(case, now) is not None:
        return records
    if now < case.invoice.due_at:
        # overdue_for is 0 until due_at, as it is at due_at: a step after P0D would otherwise
        # remind (or suspend) a customer whose invoice is not due yet, from the day it is issued.
        return records
    elapsed = overdue_for(case, now)
    resuspend = _suspension_to_reapply(case, policy, elapsed)
    if resuspend is not None:
        records.append(_resuspended(case, policy, resuspend, now))
    if state == UNCOLLECTIBLE:
        return records  # written off: no step follows, but a lifted suspension comes back
    due = [n for n, step in enumerate(policy.steps, 1) if step.after <= elapsed and n not in case.steps_done]
    if not due:
        return records
    already = _suspend_steps_passed_over(policy, due, case.suspended or resuspend is not None)
    # A step passed over as already suspended sends nothing, so it supersedes nothing: a notice
    # due with it (a final notice before a second suspend step) is the one the customer gets.
    latest = max((n for n in due if n not in already), default=0)
    for n in due:
        step = policy.steps[n - 1]
        if n in already:
            records.append(
                Record(
                    derived_id(case.invoice.invoice_id, "skipped", n), "skipped", n, step.action.value, detail=ALREADY
                )
            )
            continue
        if n == latest or step.action in STATE_ACTIONS:
            records.append(
                Record(
                    notice_id(case.invoice.invoice_id, n),
                    "notice",
                    n,
                    step.action.value,
                    data=_notice(case, policy, n, now),
                )
            )
            if step.action is Action.MARK_UNCOLLECTIBLE:
                records.append(_state_change(case, UNCOLLECTIBLE, sum(r.kind == "state" for r in records)))
        else:
            # Downtime (or a late start) made several notices due at once: the customer gets
            # only the latest, and the ones passed over stay visible as skipped.
            records.append(
                Record(
                    derived_id(case.invoice.invoice_id, "skipped", n),
                    "skipped",
                    n,
                    step.action.value,
                    detail=f"superseded by step {latest}",
                )
            )
    return records


def _suspend_steps_passed_over(policy: Policy, due: list[int], suspended: bool) -> set[int]:
    """The due suspend steps met while the case is suspended already (by an earlier step, or by
    a suspension applied again): a second suspend step of the policy while the first still
    holds. Another suspend notice would need another reinstatement to lift it (readers count
    notices against reinstatements), so each is recorded as passed over."""
    passed_over: set[int] = set()
    for n in due:
        if policy.steps[n - 1].action is Action.SUSPEND:
            if suspended:
                passed_over.add(n)
            suspended = True
    return passed_over


def resuspension_id(invoice_id: str, n: int) -> str:
    """The notice id of the suspension applied again after the case's ``n``-th reinstatement."""
    return derived_id(invoice_id, "resuspended", n)


def _suspension_to_reapply(case: Case, policy: Policy, elapsed: timedelta) -> int | None:
    """The suspend step to apply again, if the case owes again what it was suspended for.

    Each step fires once per invoice, so a suspension lifted by payment in full (a chargeback
    or refund reopens the case) or by a remainder below min_amount_due (a refund raises it)
    would otherwise never come back: the case is past its suspend step on the policy's clock
    and keeps full access until it is marked uncollectible. The caller has ruled out settled,
    below the minimum and paused cases; this one is not suspended and a suspend
    step it has already applied is behind it on the clock. The latest such step is returned."""
    if case.suspended:
        return None
    applied = [
        n
        for n, step in enumerate(policy.steps, 1)
        if step.action is Action.SUSPEND and n in case.steps_done and step.after <= elapsed
    ]
    return applied[-1] if applied else None


def _resuspended(case: Case, policy: Policy, n: int, now: datetime) -> Record:
    # A notice with action suspend, like the step's own: every reader counts it as a suspension
    # (entitlements: suspend notices against reinstated rows per invoice), and a reinstatement
    # lifts it as it lifts the first. Numbered by the reinstatements so far: one id per reopening.
    event_id = resuspension_id(case.invoice.invoice_id, case.reinstatements)
    data = {**_notice(case, policy, n, now), "notice_id": event_id}
    return Record(event_id, "notice", n, Action.SUSPEND.value, detail=RESUSPENDED, data=data)


def _below(below_minimum: bool) -> str:
    return BELOW if below_minimum else ABOVE


def _state_change(case: Case, state: str, earlier_in_batch: int) -> Record:
    # Numbered, not named by the transition: paid -> overdue (a refund) -> paid again is
    # two distinct rows, and the same history always numbers them the same way.
    n = case.state_changes + earlier_in_batch + 1
    return Record(derived_id(case.invoice.invoice_id, "state", n), "state", n, detail=state)


def _notice(case: Case, policy: Policy, n: int, now: datetime) -> dict[str, Any]:
    step = policy.steps[n - 1]
    invoice = case.invoice
    return {
        "notice_id": notice_id(invoice.invoice_id, n),
        "invoice_id": invoice.invoice_id,
        "customer_id": invoice.customer_id,
        "step": n,
        "action": step.action.value,
        "days_overdue": max((now - invoice.due_at).days, 0),
        "amount_due": format_money(case.amount_due, invoice.currency),
        "currency": invoice.currency,
        "due_at": invoice.due_at.isoformat(),
        "issued_at": invoice.issued_at.isoformat(),
        "period_start": invoice.period_start.isoformat(),
        "period_end": invoice.period_end.isoformat(),
        "invoice_total": format_money(invoice.total, invoice.currency),
        "template": step.template,
        "channels": list(step.channels),
        "recipient_email": case.recipient_email,
        "policy": policy.key,
        "decided_at": now.isoformat(),
    }


def _reinstated(case: Case, n: int, now: datetime, reason: str) -> dict[str, Any]:
    return {
        "reinstatement_id": derived_id(case.invoice.invoice_id, "reinstated", n),
        "invoice_id": case.invoice.invoice_id,
        "customer_id": case.invoice.customer_id,
        "reason": reason,
        "decided_at": now.isoformat(),
    }


def _merged(pauses: list[Pause]) -> list[Pause]:
    """Overlapping pauses (a promise during a dispute) count once."""
    out: list[Pause] = []
    for pause in sorted(pauses, key=lambda p: p.start):
        if out and (out[-1].end is None or pause.start <= out[-1].end):
            last = out[-1]
            end = None if last.end is None or pause.end is None else max(last.end, pause.end)
            out[-1] = Pause(last.start, end, last.reason)
        else:
            out.append(pause)
    return out
