"""The benchmark's sizes, its targets and its error."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

PARTITIONS = 4  # the default BASTIONARY_USAGE_PARTITIONS, which the workers use
BATCH_EVENTS = 100
SESSION_TIMEOUT = "PT3S"  # quick group joins (Tansu holds a join for half of it)

TARGET_SINGLE_RATIO = 0.8  # single-event records/s >= 0.8 x the bare Faust ceiling
TARGET_BATCH_EVENTS_PER_S = 100_000  # per worker process, 100-event records
TARGET_HANDWRITTEN_RATIO = 1.0  # batch events/s >= the hand-written loop's on the same records
TARGET_P99_S = 1.0
TARGET_RSS_MB = 500
TARGET_RSS_IDS = 1_000_000
LATENCY_POLL_SECONDS = 0.05  # how often the latency phase asks the gateway for newly visible ids
CONTENTION_WARNING = 0.10  # other processes' share of the cores above which a phase is flagged

_QUICK = {"events": 20_000, "dedupe_ids": 50_000, "latency_seconds": 5.0}


@dataclass
class BenchOptions:
    events: int = 200_000  # per throughput run
    dedupe_ids: int = 1_000_000  # distinct ids kept inside the dedupe horizon for the RSS figure
    latency_seconds: float = 20.0
    data_dir: Path | None = None  # default: a fresh temp dir, removed afterwards
    quick: bool = False  # small sizes for the test (e.g. 20k events, 50k ids, 5 s)
    profile_dir: Path | None = None  # a py-spy profile of each worker goes here

    def __post_init__(self) -> None:
        # Quick sizes replace the defaults only; a value set explicitly (or later, as the
        # CLI does for --events and --dedupe-ids) wins.
        if self.quick:
            for f in fields(self):
                if f.name in _QUICK and getattr(self, f.name) == f.default:
                    setattr(self, f.name, _QUICK[f.name])


class BenchError(RuntimeError):
    pass
