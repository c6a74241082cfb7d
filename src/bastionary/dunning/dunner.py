"""The dunning run: decide every owned open case, store the decisions, publish the notices.

Order per run, and what a crash right after each step does:
1. decide (pure, on the clock's now)              -> nothing written: decided again, same ids
2. store the decisions (notices with published=0) -> the next run republishes the stored
   notices as they are; a decided step is never decided again (it is in ``steps_done``), nor
   a suspension applied again after a reinstatement (the stored notice counts as a suspension)
3. publish the notices on dunning.notices         -> republished next run with the same
   notice_id; the notifier delivers a notice_id's channels once (see delivery.py)
4. mark them published=1                          -> done

A case is decided by the worker that owns its customer's partition, like the rater. Two
workers deciding the same case during a rebalance derive the same ids and rows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog

from bastionary.dunning.clock import Clock
from bastionary.dunning.engine import Case, Record, advance
from bastionary.dunning.policy import DunningConfig
from bastionary.dunning.ports import DunningStore
from bastionary.outbound import cloud_event

log = structlog.get_logger(__name__)

STEP_TYPE = "bastionary.dunning.step.v1"
REINSTATED_TYPE = "bastionary.dunning.reinstated.v1"
# (key, CloudEvent JSON) -> awaiting it enqueues and returns the delivery future
Publish = Callable[[str, bytes], Awaitable[Awaitable[object]]]


@dataclass
class DunningResult:
    published: list[dict[str, Any]] = field(default_factory=list)
    recorded: int = 0
    republished: int = 0


class Dunner:
    def __init__(
        self,
        store: DunningStore,
        config: DunningConfig,
        publish: Publish,
        clock: Clock,
        owns: Callable[[str], bool] = lambda customer: True,
        chase_backfill: bool = False,
    ):
        self.store = store
        self.config = config
        self.chase_backfill = chase_backfill  # act on invoices a backfill issued
        self.publish = publish
        self.clock = clock
        self.owns = owns

    async def run_once(self) -> DunningResult:
        now = self.clock.now()
        result = DunningResult()
        for kind, customer, at, document in await asyncio.to_thread(self.store.unpublished):
            if self.owns(customer):
                data = orjson.loads(document)
                await (await self.publish(data["invoice_id"], notice_event(kind, data, at)))
                await asyncio.to_thread(self.store.mark_published, [(kind, data)])
                result.republished += 1
        cases = [
            c
            for c in await asyncio.to_thread(self.store.cases)
            if self.owns(c.invoice.customer_id) and (self.chase_backfill or not c.invoice.backfill or c.suspended)
        ]
        decided: list[tuple[Case, Record]] = []
        for case in cases:
            policy = self.config.policy_for(case.invoice.plan)
            if case.invoice.backfill and not self.chase_backfill:
                # Suspended while backfill invoices were chased, and no longer chased: no step, but
                # payment still lifts the suspension (decided without a policy), or the customer
                # stays suspended for an invoice it has paid.
                policy = None
            decided.extend((case, record) for record in advance(case, policy, now))
        if not decided:
            return result
        await asyncio.to_thread(self.store.store_decisions, decided, now)
        result.recorded = len(decided)
        # The records with data are the ones to publish (Record.publish); testing data narrows it.
        to_publish = [(record.kind, record.data) for _, record in decided if record.data is not None]
        futures = [
            await self.publish(data["invoice_id"], notice_event(kind, data, now.isoformat()))
            for kind, data in to_publish
        ]
        await asyncio.gather(*futures)
        await asyncio.to_thread(self.store.mark_published, to_publish)
        result.published = [data for _, data in to_publish]
        for case, record in decided:
            log.info(
                "dunning decision",
                invoice_id=case.invoice.invoice_id,
                kind=record.kind,
                step=record.step,
                action=record.action,
                detail=record.detail,
            )
        return result


def notice_event(kind: str, data: dict[str, Any], time: str) -> bytes:
    """The CloudEvent on dunning.notices: a step notice or a reinstatement."""
    if kind == "notice":
        event_type, event_id = STEP_TYPE, data["notice_id"]
    else:
        event_type, event_id = REINSTATED_TYPE, data["reinstatement_id"]
    return cloud_event(
        event_type, event_id, "bastionary/dunning", data["customer_id"], data.get("decided_at", time), data
    )
