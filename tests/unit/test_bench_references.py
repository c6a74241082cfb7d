"""Pure parts of the bench's same-run references: the Kafka engine's block sizing and how a
reference is shown, including one that did not run."""

from __future__ import annotations

from bastionary.tools.bench.kafka_engine import block_records
from bastionary.tools.bench.report import _reference_cells


def test_kafka_engine_blocks_match_the_hand_written_flush_and_a_run_has_at_least_ten():
    assert block_records(220_000, 220_000) == 20_000  # single-event records: 20,000 events a block
    assert block_records(2_200, 220_000) == 200  # 100-event records: 200 records = 20,000 events
    assert block_records(22_000, 22_000) == 2_200  # quick mode: ten blocks, not two
    assert block_records(300, 22_000) == 30
    assert block_records(1, 1) == 1 and block_records(0, 0) == 1


def test_a_reference_shows_its_rates_and_the_repeats_it_kept():
    runs = {
        "single": {"records_per_s": 103_010, "events_per_s": 103_010, "stored_events": 22_000, "overcount": 2_000},
        "batch": {"records_per_s": 1_700, "events_per_s": 129_641, "stored_events": 22_000, "overcount": 2_000},
    }
    measured, note = _reference_cells(runs)
    assert measured == "103,010 records/s single\n129,641 events/s batch"
    assert note == "single: +2,000 repeats kept\nbatch: +2,000 repeats kept"


def test_a_reference_that_did_not_run_says_why_and_the_other_workload_still_shows():
    runs = {
        "single": {"error": "reference kafkaengine (counting 22000 records) did not finish in 240s\nmore"},
        "batch": {"records_per_s": 1, "events_per_s": 100},
    }
    measured, note = _reference_cells(runs)
    assert measured == "did not run (single)\n100 events/s batch"
    assert note == "reference kafkaengine (counting 22000 records) did not finish in 240s"
    assert _reference_cells({"single": {"records_per_s": 5, "events_per_s": 5}, "batch": {}})[1].startswith(
        "no figures"
    )
