"""The events on ``entitlements.changes``, derived from state and the changes already emitted.

Nothing here remembers: given the customer's state and the changes recorded so far, the
changes due are a pure function, with ids that depend only on that history. A worker that
crashes between emitting and recording re-derives the same changes with the same ids, so
consumers can drop the duplicates by id.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from bastionary.entitlements.evaluate import WIDE, ZERO, CustomerState, effective_limit, iso_z
from bastionary.entitlements.spec import MeteredEntitlement, decimal_text
from bastionary.outbound import cloud_event

CHANGE_NAMESPACE = uuid.UUID("0b6f4f3e-7d1c-4f55-9a0e-6f1e2c9d8a41")
SOURCE = "bastionary/entitlements"
CUSTOMER_WIDE = "*"  # the feature of suspended/reinstated: the whole customer


@dataclass(frozen=True)
class Change:
    change_id: str
    kind: str
    customer_id: str
    feature: str
    period_start: datetime | None
    detail: dict[str, Any] = field(default_factory=dict)


def change_id(customer_id: str, feature: str, period_start: datetime | None, kind: str, discriminator: str) -> str:
    period = _utc_iso(period_start) if period_start is not None else "-"
    return str(uuid.uuid5(CHANGE_NAMESPACE, "|".join([customer_id, feature, period, kind, discriminator])))


def due_changes(state: CustomerState, recorded: Sequence[Change], now: datetime) -> list[Change]:
    """The changes ``state`` calls for that ``recorded`` (this customer's, any period) lacks."""
    due = _suspension(state, recorded)
    if state.plan is None or state.period_start is None:
        return due
    for entitlement in state.plan.entitlements:
        if isinstance(entitlement, MeteredEntitlement):
            usage = state.usage.get(entitlement.feature, ZERO)
            limit = effective_limit(entitlement, state.overrides, now)
            due += _thresholds(state, entitlement, usage, limit, recorded)
            due += _exhaustion(state, entitlement, usage, limit, recorded)
    return due


def change_event(change: Change, time: datetime) -> bytes:
    """The CloudEvent (structured JSON) for ``change``; its id is the change id, for dedupe."""
    data = {
        "change_id": change.change_id,
        "customer_id": change.customer_id,
        "feature": change.feature,
        "period_start": iso_z(change.period_start),
    }
    data.update({k: v for k, v in change.detail.items() if k not in data})
    return cloud_event(
        f"bastionary.entitlement.{change.kind}.v1", change.change_id, SOURCE, change.customer_id, iso_z(time), data
    )


def _thresholds(
    state: CustomerState, entitlement: MeteredEntitlement, usage: Decimal, limit: Decimal, recorded: Sequence[Change]
) -> list[Change]:
    if limit <= 0:
        return []  # every fraction of nothing is crossed at once: nothing useful to notify
    feature, period = entitlement.feature, state.period_start
    notified = {
        Decimal(c.detail["fraction"])
        for c in recorded
        if c.kind == "threshold" and c.feature == feature and c.period_start == period
    }
    due = []
    for fraction in entitlement.notify_at:
        # Exact, as the check compares: the default context rounds a share of a 27-digit limit
        # to 28 digits, down onto a usage still short of it.
        if usage >= WIDE.multiply(fraction, limit) and fraction not in notified:
            text = decimal_text(fraction)
            detail = {"fraction": text, "usage": decimal_text(usage), "limit": decimal_text(limit)}
            cid = change_id(state.customer_id, feature, period, "threshold", text)
            due.append(Change(cid, "threshold", state.customer_id, feature, period, detail))
    return due


def _exhaustion(
    state: CustomerState, entitlement: MeteredEntitlement, usage: Decimal, limit: Decimal, recorded: Sequence[Change]
) -> list[Change]:
    exhausted = not entitlement.soft and usage >= limit
    return _toggle(
        state.customer_id,
        entitlement.feature,
        state.period_start,
        exhausted,
        ("exhausted", "restored"),
        lambda: {"usage": decimal_text(usage), "limit": decimal_text(limit), "reset_at": iso_z(state.period_end)},
        recorded,
    )


def _suspension(state: CustomerState, recorded: Sequence[Change]) -> list[Change]:
    return _toggle(state.customer_id, CUSTOMER_WIDE, None, state.suspended, ("suspended", "reinstated"), dict, recorded)


def _toggle(
    customer_id: str,
    feature: str,
    period_start: datetime | None,
    on: bool,
    kinds: tuple[str, str],
    detail: Callable[[], dict[str, Any]],
    recorded: Sequence[Change],
) -> list[Change]:
    """An on/off pair that alternates, starting with on: emit when ``on`` differs from the last one.

    ``detail`` is written only for a change that is due: the reconciler asks every customer
    a flush touched, on the event loop, and nearly always nothing is due."""
    on_kind, off_kind = kinds
    history = [c for c in recorded if c.kind in kinds and c.feature == feature and c.period_start == period_start]
    last = history[-1].kind if history else None
    if on and last in (None, off_kind):
        kind = on_kind
    elif not on and last == on_kind:
        kind = off_kind
    else:
        return []
    sequence = sum(1 for c in history if c.kind == kind) + 1
    cid = change_id(customer_id, feature, period_start, kind, str(sequence))
    return [Change(cid, kind, customer_id, feature, period_start, detail())]


def _utc_iso(moment: datetime) -> str:
    # The same instant in any zone gives the same id.
    return moment.astimezone(UTC).isoformat()
