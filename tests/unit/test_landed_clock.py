"""The moment through which usage has landed (metering/landed_clock.py), and the rater rating
as of it: a cutoff waits until the records the broker took before it have landed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from bastionary.metering.landed_clock import LandedClock, Positions
from bastionary.rating.schedule import FINAL_ADJUSTMENT
from bastionary.rating.subscriptions import SubscriptionEvent
from tests.unit.test_rater import FEB, GRACE, JAN_INVOICE, FakePublisher, at, one_customer, rater

T0 = datetime(2026, 12, 7, tzinfo=UTC)


def t(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_an_idle_pipeline_has_landed_through_the_moment_of_the_look():
    clock = LandedClock()
    assert clock.observe(t(0), Positions({0: 0, 1: 0}, {0: 10, 1: 0}, {0: 10})) == t(0)


def test_a_lagging_pipeline_lands_through_the_last_look_its_commits_passed():
    clock = LandedClock()
    assert clock.observe(t(0), Positions({0: 0}, {0: 10}, {0: 5})) is None
    assert clock.observe(t(10), Positions({0: 0}, {0: 20}, {0: 10})) == t(0)
    assert clock.observe(t(20), Positions({0: 0}, {0: 30}, {0: 25})) == t(10)
    assert clock.observe(t(30), Positions({0: 0}, {0: 30}, {0: 30})) == t(30)


def test_records_retention_removed_unread_are_not_waited_for():
    clock = LandedClock()
    assert clock.observe(t(0), Positions({0: 10}, {0: 10}, {})) == t(0)  # emptied by retention, never committed
    # Records 8 and 9 are still in the log and not committed: the moment stays.
    assert clock.observe(t(1), Positions({0: 8}, {0: 10}, {0: 3})) == t(0)
    assert clock.observe(t(2), Positions({0: 8}, {0: 10}, {0: 10})) == t(2)


def test_a_partition_missing_from_a_look_is_not_known_to_have_landed():
    clock = LandedClock()
    assert clock.observe(t(0), Positions({0: 0, 1: 0}, {0: 5, 1: 5}, {0: 5, 1: 4})) is None
    # The second look lost partition 1 (a metadata hiccup): the first snapshot is not reached.
    assert clock.observe(t(1), Positions({0: 0}, {0: 5}, {0: 5})) == t(1)
    assert clock.observe(t(2), Positions({0: 0, 1: 0}, {0: 5, 1: 6}, {0: 5, 1: 5})) == t(1)


def test_a_look_that_shows_no_partition_is_not_kept():
    clock = LandedClock()
    assert clock.observe(t(0), Positions({}, {}, {})) is None
    assert clock.observe(t(1), Positions({0: 0}, {0: 5}, {0: 5})) == t(1)


def test_past_the_pending_limit_the_newest_snapshot_is_replaced_and_the_moment_still_advances():
    clock = LandedClock(max_pending=3)
    for k in range(10):
        assert clock.observe(t(k), Positions({0: 0}, {0: 100 + k}, {0: 0})) is None
    assert clock.observe(t(20), Positions({0: 0}, {0: 200}, {0: 101})) == t(1)
    assert clock.observe(t(21), Positions({0: 0}, {0: 200}, {0: 200})) == t(21)


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[str, int, int]]:
    return draw(
        st.lists(
            st.tuples(st.sampled_from(["append", "commit", "look"]), st.integers(0, 2), st.integers(1, 5)),
            max_size=60,
        )
    )


@settings(max_examples=300, deadline=None)
@given(histories())
def test_the_moment_never_passes_a_record_not_landed(history):
    """Records are appended to three partitions over time, the usage group commits some of
    them, the rater looks now and then: every record appended before the moment the clock
    answers is below its partition's committed offset, and a look at a pipeline with nothing
    left to land answers that look's moment."""
    appended: dict[int, list[int]] = {0: [], 1: [], 2: []}  # per partition, each record's append time
    committed = {0: 0, 1: 0, 2: 0}
    clock = LandedClock(max_pending=4)
    for now, (step, partition, n) in enumerate(history):
        if step == "append":
            appended[partition].extend([now] * n)
        elif step == "commit":
            committed[partition] = min(len(appended[partition]), committed[partition] + n)
        else:
            ends = {p: len(records) for p, records in appended.items()}
            through = clock.observe(t(now), Positions({0: 0, 1: 0, 2: 0}, ends, dict(committed)))
            if through is not None:
                for p, records in appended.items():
                    assert all(k < committed[p] for k, when in enumerate(records) if t(when) < through)
            if committed == ends:
                assert through == t(now)


# --- the rater rates as of the moment usage has landed through -----------------------------


async def test_a_period_whose_usage_has_not_all_landed_waits_for_it():
    store, publish = one_customer(), FakePublisher()
    landed: list[datetime | None] = [None]

    async def landed_through() -> datetime | None:
        return landed[0]

    late = rater(store, publish, landed_through=landed_through)
    long_after = FEB + timedelta(days=2)
    assert (await late.run_once(long_after)).invoices == []  # nothing known to have landed yet
    landed[0] = FEB + GRACE  # landed up to the cutoff, not past its settle time
    assert (await late.run_once(long_after)).invoices == []
    landed[0] = FEB + GRACE + timedelta(seconds=5)
    (document,) = (await late.run_once(long_after)).invoices
    assert document["invoice_id"] == JAN_INVOICE


async def test_usage_a_lagging_pipeline_lands_after_the_final_cutoff_is_billed_by_the_final_adjustment():
    """Canceled at the end of January: the final adjustment is the subscription's last bill
    (its cutoff: the last cutoff plus the grace again). Usage the broker took before it,
    landed by a lagging pipeline minutes after, was never billed: the rater rated the final
    adjustment 5 s past its cutoff, and nothing after it reads usage again."""
    store, publish = one_customer(tokens=0), FakePublisher()
    store.events.append(SubscriptionEvent("sub-1", "cust-1", "canceled", "", None, None, FEB, at(2024, 1, 20)))
    final_cutoff = FEB + 2 * GRACE
    usage_at = at(2024, 1, 31, 23)
    landed: list[datetime | None] = [final_cutoff - timedelta(minutes=10)]

    async def landed_through() -> datetime | None:
        return landed[0]

    lagging = rater(store, publish, landed_through=landed_through)
    first = await lagging.run_once(final_cutoff + timedelta(minutes=1))
    assert [d["invoice_id"] for d in first.invoices] == [JAN_INVOICE]  # January's cutoff has landed
    # The late record, taken by the broker before the final cutoff, lands now.
    store.use("cust-1", 500, usage_at, ingested=final_cutoff - timedelta(seconds=30))
    landed[0] = final_cutoff + timedelta(minutes=2)
    (final,) = (await lagging.run_once(final_cutoff + timedelta(minutes=3))).invoices
    assert final["kind"] == FINAL_ADJUSTMENT
    assert [(line["price_key"], line["quantity"], line["amount"]) for line in final["lines"]] == [
        ("tokens", "500", "5.00")
    ]


def test_an_offset_committed_past_the_logs_end_is_from_another_log_and_lands_nothing():
    clock = LandedClock()
    # The topic was deleted and made again: the group's offset 1000 is the old log's.
    assert clock.observe(t(0), Positions({0: 0}, {0: 5}, {0: 1000})) is None
    assert clock.observe(t(1), Positions({0: 0}, {0: 5}, {0: 5})) == t(1)
    assert clock.observe(t(2), Positions({0: 0}, {0: 0}, {0: 1000})) == t(2)  # the new log is empty
