"""Dunning bugs found in the forty-fourth session's review, each shown on the behaviour a user sees."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from bastionary.dunning.clock import ClockError, FileClock
from bastionary.dunning.dunner import REINSTATED_TYPE, STEP_TYPE, Dunner
from bastionary.dunning.engine import Case, Record, advance
from bastionary.dunning.policy import DunningConfig, Policy

from .test_dunning_engine import DUE, POLICY, case, day, run


def sent_and_skipped(records: list[Record]) -> list[tuple[str, int, str]]:
    return [(r.kind, r.step, r.action) for r in records if r.kind in ("notice", "skipped")]


def test_a_step_after_p0d_waits_for_due_at() -> None:
    # `after` counts from due_at: P0D is on the due date, not the day the invoice is issued.
    policy = Policy.model_validate(
        {"key": "strict", "steps": [{"after": "P0D", "action": "remind"}, {"after": "P3D", "action": "suspend"}]}
    )
    c = case()
    assert sent_and_skipped(advance(c, policy, DUE - timedelta(days=14))) == []
    assert sent_and_skipped(advance(c, policy, DUE - timedelta(seconds=1))) == []
    assert sent_and_skipped(advance(c, policy, DUE)) == [("notice", 1, "remind")]


def test_a_notice_due_with_a_second_suspend_step_is_sent_not_superseded_by_it() -> None:
    # The second suspend step is passed over (already suspended) and sends nothing: the final
    # notice due with it after downtime must still reach the customer.
    policy = Policy.model_validate(
        {
            "key": "twice",
            "steps": [
                {"after": "P1D", "action": "remind"},
                {"after": "P14D", "action": "suspend"},
                {"after": "P21D", "action": "final_notice"},
                {"after": "P28D", "action": "suspend"},
            ],
        }
    )
    c = case(steps_done={1, 2}, suspended=True, state="overdue")
    records = advance(c, policy, day(29))
    assert sent_and_skipped(records) == [("notice", 3, "final_notice"), ("skipped", 4, "suspend")]
    assert [r.detail for r in records if r.kind == "skipped"] == ["already suspended"]


def test_notices_collapsed_by_downtime_still_name_the_latest_one_sent() -> None:
    c = case()
    records = run(c, day(15))
    assert sent_and_skipped(records) == [
        ("skipped", 1, "remind"),
        ("skipped", 2, "remind"),
        ("notice", 3, "final_notice"),
    ]
    assert {r.detail for r in records if r.kind == "skipped"} == {"superseded by step 3"}


class _Store:
    def __init__(self, cases: list[Case]) -> None:
        self._cases = cases
        self.decided: list[tuple[Case, Record]] = []

    def unpublished(self) -> list[tuple[str, str, str, str]]:
        return []

    def cases(self, customers: set[str] | None = None) -> list[Case]:
        return self._cases

    def store_decisions(self, decided: list[tuple[Case, Record]], at: datetime, published: int = 0) -> None:
        self.decided.extend(decided)

    def mark_published(self, published: list[tuple[str, dict[str, Any]]]) -> None:
        pass


async def _run_dunner(cases: list[Case], now: datetime, chase_backfill: bool) -> tuple[_Store, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []

    async def publish(_: str, value: bytes) -> Any:
        sent.append(orjson.loads(value))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    class Clock:
        def now(self) -> datetime:
            return now

    store = _Store(cases)
    dunner = Dunner(store, DunningConfig(policies=[POLICY]), publish, Clock(), chase_backfill=chase_backfill)  # type: ignore[arg-type]
    await dunner.run_once()
    return store, sent


def backfill_case(**kwargs: Any) -> Case:
    c = case(**kwargs)
    c.invoice = replace(c.invoice, backfill=True)
    return c


async def test_a_paid_backfill_invoice_no_longer_chased_lifts_the_suspension_it_got_while_chased() -> None:
    # Suspended while BASTIONARY_DUNNING_BACKFILL was true, the setting then turned off, the
    # invoice paid in full: without a reinstatement the customer stays suspended for good.
    paid = backfill_case(paid=Decimal("100.00"), steps_done={1, 2, 3, 4}, suspended=True, state="overdue")
    _, sent = await _run_dunner([paid], day(25), chase_backfill=False)
    assert [(e["type"], e["data"]["reason"]) for e in sent] == [(REINSTATED_TYPE, "paid")]


async def test_a_backfill_invoice_not_chased_still_gets_no_step() -> None:
    unpaid = backfill_case()
    suspended_unpaid = backfill_case(steps_done={1, 2, 3, 4}, suspended=True, state="overdue")
    store, sent = await _run_dunner([unpaid, suspended_unpaid], day(31), chase_backfill=False)
    assert sent == []
    assert all(record.kind not in ("notice", "skipped") for _, record in store.decided)
    assert all(c is suspended_unpaid for c, _ in store.decided)
    _, chased = await _run_dunner([backfill_case()], day(31), chase_backfill=True)
    assert [e["type"] for e in chased] == [STEP_TYPE, STEP_TYPE]  # suspend, mark_uncollectible


def test_a_clock_file_that_is_not_text_is_a_clock_error(tmp_path: Path) -> None:
    path = tmp_path / "clock"
    path.write_bytes(b"\xff\xfe2026-03-01")
    with pytest.raises(ClockError, match="not text"):
        FileClock(path).now()
