"""The benchmark's sizes, its targets and its error."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
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

# What the bench sets on its workers itself: each phase needs its own broker, topics, group,
# data dir and port, and the entitlement phases their catalog, key and rating switch.
BENCH_OWNED_SETTINGS = frozenset({
    "kafka_bootstrap", "data_dir", "topic_prefix", "consumer_group", "worker_id", "web_port",
    "kafka_session_timeout", "log_format", "clickhouse_dsn", "catalog", "api_keys", "rating_enabled",
    "usage_partitions",
})  # fmt: skip


@dataclass
class BenchOptions:
    events: int = 200_000  # per throughput run
    dedupe_ids: int = 1_000_000  # distinct ids kept inside the dedupe horizon for the RSS figure
    latency_seconds: float = 20.0
    data_dir: Path | None = None  # default: a fresh temp dir, removed afterwards
    quick: bool = False  # small sizes for the test (e.g. 20k events, 50k ids, 5 s)
    profile_dir: Path | None = None  # a py-spy profile of each worker goes here
    # BASTIONARY_* variables for the measured workers (see worker_environment), so a run can
    # measure a setting other than its default
    worker_settings: dict[str, str] = field(default_factory=dict)
    clickhouse_server: bool = False  # workers write to serve-clickhouse over HTTP, not chdb in-process

    def __post_init__(self) -> None:
        # Quick sizes replace the defaults only; a value set explicitly (or later, as the
        # CLI does for --events and --dedupe-ids) wins.
        if self.quick:
            for f in fields(self):
                if f.name in _QUICK and getattr(self, f.name) == f.default:
                    setattr(self, f.name, _QUICK[f.name])


class BenchError(RuntimeError):
    pass


def worker_environment(assignments: Iterable[str]) -> dict[str, str]:
    """``NAME=VALUE`` pairs (``examine_processes=1``) as the workers' BASTIONARY_* variables.

    A name that is no setting of the worker, or that the bench sets itself, is an error: either
    would leave the run measuring the default while its report says otherwise. So is a value
    the worker would refuse: the run would end in a worker that never starts."""
    from bastionary.settings import Settings

    environment: dict[str, str] = {}
    for assignment in assignments:
        name, equals, value = assignment.partition("=")
        name = name.strip().lower().removeprefix("bastionary_")
        if not equals or not name:
            raise BenchError(f"a worker setting is NAME=VALUE, not {assignment!r}")
        if name not in Settings.model_fields:
            raise BenchError(f"{name!r} is not a worker setting (see the README's settings table)")
        if name in BENCH_OWNED_SETTINGS:
            raise BenchError(f"the bench sets {name!r} on its workers itself")
        if "\0" in value or not _encodable(value):
            raise BenchError(f"the value of {name!r} cannot be passed in an environment variable")
        environment[f"BASTIONARY_{name.upper()}"] = value
    _check_as_the_worker_reads(environment)
    return environment


def asks_flush_process(environment: Mapping[str, str]) -> bool:
    """Whether these worker variables (checked by :func:`worker_environment`) turn
    BASTIONARY_FLUSH_PROCESS on, read by the same parser as the worker's setting."""
    from pydantic import TypeAdapter

    value = environment.get("BASTIONARY_FLUSH_PROCESS")
    return value is not None and TypeAdapter(bool).validate_python(value)


def without_flush_process(environment: Mapping[str, str]) -> dict[str, str]:
    """These worker variables for a worker that holds chdb, which no other process may open:
    no flush process, and so no number of them either (the worker refuses one without the other)."""
    kept = {k: v for k, v in environment.items() if k not in ("BASTIONARY_FLUSH_PROCESS", "BASTIONARY_FLUSH_PROCESSES")}
    return kept | {"BASTIONARY_FLUSH_PROCESS": "false"}


def _encodable(value: str) -> bool:
    try:
        os.fsencode(value)
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def _check_as_the_worker_reads(environment: dict[str, str]) -> None:
    """Validate the values as the worker will: from its environment, without the others that
    the bench strips (so a bad value fails here, not as a worker that never starts)."""
    from pydantic import ValidationError

    from bastionary.settings import Settings

    if not environment:
        return
    saved = {k: v for k, v in os.environ.items() if k.startswith("BASTIONARY_")}
    for name in saved:
        del os.environ[name]
    os.environ.update(environment)
    try:
        Settings()
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise BenchError(f"a worker setting does not validate: {problems}") from error
    except ValueError as error:  # pydantic-settings' own, e.g. a value it cannot decode at all
        raise BenchError(f"a worker setting does not validate: {error}") from error
    finally:
        for name in environment:
            os.environ.pop(name, None)
        os.environ.update(saved)
