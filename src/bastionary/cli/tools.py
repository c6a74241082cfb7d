"""`demo` and `bench`: the embedded stack under a generated workload."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec

import click

from bastionary.cli.common import settings_or_exit
from bastionary.ingest.cloudevents import RecordLimits
from bastionary.logs import configure_logging

P = ParamSpec("P")


@click.command()
@click.option("--events", default=50_000, show_default=True, help="Distinct usage events to generate.")
@click.option("--customers", default=300, show_default=True)
def demo(events: int, customers: int) -> None:
    """Start the embedded stack, meter a realistic workload, print a summary."""
    from bastionary.tools.demo import DemoOptions, run_demo

    settings = settings_or_exit()
    configure_logging("WARNING", settings.log_format)  # the summary speaks for itself
    if not run_demo(settings, DemoOptions(events=events, customers=customers)):
        raise SystemExit(1)


def _default_ingest_rate() -> int:
    # Read when the option is parsed, not when the CLI starts: the bench package costs ~50 ms
    # of imports that every other command would pay.
    from bastionary.tools.bench.entitlements.constants import DEFAULT_INGEST_RATE

    return DEFAULT_INGEST_RATE


def _bench_failures_as_messages(fn: Callable[P, None]) -> Callable[P, None]:
    """A bench that could not finish (a child that exited, a worker behind its stream, a
    missing tool) says so in its own words, which name the log to read. It is not reported
    as a bug of ours, as an unexpected exception is. Not in ``fail_cleanly``: importing
    ``BenchError`` imports the bench package (about 0.7 s), which every command would pay."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        from bastionary.tools.bench.options import BenchError

        try:
            fn(*args, **kwargs)
        except BenchError as error:
            raise click.ClickException(f"the bench did not finish: {error}") from None

    return wrapper


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--quick", is_flag=True, help="Small sizes: a smoke run, not a measurement.")
@click.option("--events", type=int, default=None, help="Events per throughput run (default 200,000).")
@click.option(
    "--dedupe-ids",
    type=int,
    default=None,
    help="Distinct ids for the RSS figure and --dedupe-store (default 1,000,000).",
)
@click.option(
    "--profile",
    type=click.Path(file_okay=False, writable=True, path_type=Path),
    default=None,
    help="Write a py-spy profile of each worker (speedscope JSON) to this directory.",
)
@click.option(
    "--worker-setting",
    "worker_settings",
    multiple=True,
    metavar="NAME=VALUE",
    help="A setting for the measured workers, e.g. examine_processes=1 (repeatable; default: every default).",
)
@click.option(
    "--clickhouse-server",
    is_flag=True,
    help="The measured workers write to a ClickHouse server over HTTP (serve-clickhouse, one per phase), as in"
    " production, instead of holding chdb; needed by --worker-setting flush_process=true. Full bench and --entitlements.",
)
@click.option("--rating", is_flag=True, help="Rate N subscriptions x 5 metered prices instead (target <= 30 s).")
@click.option("--subscriptions", default=10_000, show_default=True, help="With --rating.")
@click.option(
    "--entitlements",
    "entitlement_checks",
    is_flag=True,
    help="Check latency at 1,000 checks/s (target p99 <= 5 ms) and freshness (target p99 <= 1 s) instead.",
)
@click.option(
    "--ingest-rate",
    type=click.IntRange(min=1),
    default=_default_ingest_rate,
    help="With --entitlements: usage events/s ingested during the loaded phases, in 100-event records"
    " (default: half the development machine's batch maximum).",
)
@click.option(
    "--stages",
    is_flag=True,
    help="Time each stage of a flush (examine, settle, inserts, dedupe) per batch event, in this process, instead.",
)
@click.option(
    "--clickhouse-url",
    default=None,
    metavar="URL",
    help="With --stages: a ClickHouse server (http://user:password@host:port) instead of chdb in this process.",
)
@click.option(
    "--dedupe-store",
    is_flag=True,
    help="The dedupe cache alone: write --dedupe-ids keys as flushes do, then time lookups of stored and new keys.",
)
@click.option(
    "--api",
    "api",
    is_flag=True,
    help="HTTP ingest in 100-event requests (target >= 20,000 events/s) and a 30-day daily query (p99 <= 100 ms).",
)
@_bench_failures_as_messages
def bench(
    as_json: bool,
    quick: bool,
    events: int | None,
    dedupe_ids: int | None,
    profile: Path | None,
    worker_settings: tuple[str, ...],
    clickhouse_server: bool,
    rating: bool,
    subscriptions: int,
    entitlement_checks: bool,
    ingest_rate: int,
    api: bool,
    stages: bool,
    clickhouse_url: str | None,
    dedupe_store: bool,
) -> None:
    """Measure the pipeline on the embedded stack against its targets."""
    settings = settings_or_exit()
    if worker_settings and (rating or stages or dedupe_store):
        raise click.UsageError("--worker-setting applies to the full bench, --entitlements and --api")
    if clickhouse_url and not stages:
        raise click.UsageError("--clickhouse-url applies to --stages")
    if clickhouse_server and (rating or stages or dedupe_store):
        raise click.UsageError("--clickhouse-server applies to the full bench, --entitlements and --api")
    from bastionary.tools.bench.options import BenchError, asks_flush_process, worker_environment

    try:
        worker_env = worker_environment(worker_settings)
    except BenchError as error:
        raise click.BadParameter(str(error), param_hint="--worker-setting") from error
    if asks_flush_process(worker_env) and not clickhouse_server:
        raise click.UsageError("--worker-setting flush_process=true needs --clickhouse-server (chdb is one process's)")
    if api:
        from bastionary.tools.bench.api import render_api, run_api_bench

        configure_logging("WARNING", settings.log_format)
        click.echo(
            render_api(
                run_api_bench(quick=quick, worker_settings=worker_env, clickhouse_server=clickhouse_server), as_json
            )
        )
        return
    if entitlement_checks:
        from bastionary.tools.bench.entitlements import render_entitlements, run_entitlements_bench

        configure_logging("WARNING", settings.log_format)
        click.echo(
            render_entitlements(
                run_entitlements_bench(
                    quick=quick,
                    ingest_rate=ingest_rate,
                    profile_dir=profile,
                    worker_settings=worker_env,
                    clickhouse_server=clickhouse_server,
                ),
                as_json,
            )
        )
        return
    if dedupe_store:
        from bastionary.tools.bench.dedupe_store import render_dedupe_store, run_dedupe_store

        result = run_dedupe_store(dedupe_ids or (50_000 if quick else 1_000_000))
        click.echo(json.dumps(result, indent=2) if as_json else render_dedupe_store(result))
        return
    if stages:
        from bastionary.tools.bench.stages import render_stages, run_stages_alone
        from bastionary.worker.collecting import BoundaryCollector

        configure_logging("WARNING", settings.log_format)
        collector = BoundaryCollector()
        collector.take_over()  # as the worker collects garbage: between flushes
        limits = RecordLimits(settings.max_record_bytes, settings.max_batch_events, settings.max_future_skew)
        result = run_stages_alone(
            clickhouse_url,
            events or (20_000 if quick else 200_000),
            settings.flush_max_bytes,
            limits,
            int(settings.dedupe_horizon.total_seconds()),
            collector.after_flush,
            settings.clickhouse_compression,
        )
        click.echo(render_stages(result, as_json))
        return
    if rating:
        from bastionary.tools.bench.rating import run_rating_bench

        configure_logging("WARNING", settings.log_format)
        result = run_rating_bench(subscriptions)
        if as_json:
            click.echo(json.dumps(result, indent=2))
        else:
            for key, value in result.items():
                click.echo(f"{key:>28}: {value}")
        return
    from bastionary.tools.bench import BenchOptions, render, run_bench

    options = BenchOptions(quick=quick)
    if events:
        options.events = events
    if dedupe_ids:
        options.dedupe_ids = dedupe_ids
    options.profile_dir = profile
    options.worker_settings = worker_env
    options.clickhouse_server = clickhouse_server
    click.echo(render(run_bench(options), as_json))
