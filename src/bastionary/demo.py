"""``bastionary demo``: the embedded stack, a realistic workload, and a readable summary.

It runs the same processes an operator would (the embedded broker, a ``bastionary worker``
holding chdb and serving the query gateway), publishes a workload with duplicates, bad
records and late events, waits until every record has landed, and then checks the
ClickHouse totals against the workload's own ground truth.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import clickhouse_connect
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bastionary.catalog import load_catalog
from bastionary.embedded.broker import EmbeddedBroker, free_port
from bastionary.kafka import committed_offsets, ensure_topics, publish_records
from bastionary.settings import Settings
from bastionary.storage.clickhouse import gateway_file
from bastionary.storage.http_gateway import gateway_dsn, read_gateway_file
from bastionary.storage.queries import usage_query
from bastionary.topics import Topics
from bastionary.workload import generate


@dataclass
class DemoOptions:
    events: int = 50_000
    customers: int = 300
    late_events: int = 300


def run_demo(settings: Settings, options: DemoOptions, console: Console | None = None) -> bool:
    """Returns True when the ClickHouse totals equal the ground truth exactly."""
    console = console or Console(width=None if sys.stdout.isatty() else 120)
    demo_dir = settings.data_path / "demo"
    shutil.rmtree(demo_dir, ignore_errors=True)
    demo_dir.mkdir(parents=True)
    topics = Topics(settings.topic_prefix)
    console.rule("[bold]Bastionary demo: usage metering on the embedded stack")
    with EmbeddedBroker(demo_dir) as broker:
        asyncio.run(ensure_topics(broker.bootstrap, [topics.usage_events, topics.usage_dlq], settings.usage_partitions))
        console.print(f"Kafka-protocol broker (Tansu) on {broker.bootstrap}")
        worker = _start_worker(settings, demo_dir, broker.bootstrap)
        try:
            client = _wait_for_gateway(demo_dir, worker, console)
            workload = generate(
                options.events,
                customers=options.customers,
                duplicate_rate=0.10,
                late_events=options.late_events,
                bad_records=7,
            )
            ends = _publish(console, broker.bootstrap, topics.usage_events, workload.records)
            _wait_until_landed(console, broker.bootstrap, settings.consumer_group, topics.usage_events, ends)
            return _summarize(console, client, workload)
        finally:
            worker.terminate()
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                worker.kill()


def _start_worker(settings: Settings, demo_dir: Path, bootstrap: str) -> subprocess.Popen:
    env = os.environ | {
        "BASTIONARY_KAFKA_BOOTSTRAP": bootstrap,
        "BASTIONARY_DATA_DIR": str(demo_dir),
        "BASTIONARY_WORKER_ID": "demo-worker",
        "BASTIONARY_WEB_PORT": str(free_port()),
        "BASTIONARY_KAFKA_SESSION_TIMEOUT": "PT3S",
        "BASTIONARY_LOG_FORMAT": "json",
    }
    env.pop("BASTIONARY_CLICKHOUSE_DSN", None)
    log = (demo_dir / "worker.log").open("ab")
    command = [str(Path(sys.executable).parent / "bastionary"), "worker"]
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def _wait_for_gateway(demo_dir: Path, worker: subprocess.Popen, console: Console, timeout: float = 90.0):
    path = gateway_file(demo_dir)
    deadline = time.monotonic() + timeout
    with console.status("starting the worker (ClickHouse in-process, Faust consumer group)..."):
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited with {worker.returncode}; see {demo_dir / 'worker.log'}")
            info = read_gateway_file(path)
            if info:
                console.print(f"worker ready; ClickHouse queryable at http://{info['host']}:{info['port']}")
                return clickhouse_connect.get_client(dsn=gateway_dsn(info, "reader"), compress=False)
            time.sleep(0.2)
    raise TimeoutError(f"worker not ready after {timeout}s; see {demo_dir / 'worker.log'}")


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )


def _publish(console: Console, bootstrap: str, topic: str, records) -> dict[int, int]:
    with _progress(console) as progress:
        task = progress.add_task("publishing usage records", total=len(records))
        return asyncio.run(publish_records(bootstrap, topic, records, lambda n: progress.advance(task, n)))


def _wait_until_landed(console, bootstrap, group, topic, ends: dict[int, int], timeout: float = 600.0) -> None:
    total = sum(ends.values())
    with _progress(console) as progress:
        task = progress.add_task("landing in ClickHouse  ", total=total)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            committed = asyncio.run(committed_offsets(bootstrap, group, topic))
            done = sum(min(committed.get(p, 0), end) for p, end in ends.items())
            progress.update(task, completed=done)
            if done >= total:
                return
            time.sleep(0.5)
    raise TimeoutError("the pipeline did not catch up in time")


def _summarize(console: Console, client, workload) -> bool:
    accepted, duplicates, dead = client.query(
        "SELECT sum(events_accepted), sum(duplicates), sum(dead_lettered) FROM ingest_progress FINAL"
    ).result_rows[0]
    events_in = sum(r.events for r in workload.records)
    table = Table(title="Pipeline", show_header=False)
    table.add_row("records published", f"{len(workload.records):,}")
    table.add_row("events in (incl. repeats)", f"{events_in:,}")
    table.add_row("events counted", f"{int(accepted):,}")
    table.add_row("duplicates dropped", f"{int(duplicates):,}")
    table.add_row("dead-lettered (usage.dlq)", f"{int(dead):,}")
    table.add_row("late events (hours to days old)", f"{workload.late_events:,}")
    console.print(table)

    truth = workload.truth()
    exact = True
    top = Table(title="Top customers per meter (all time)")
    for column in ("meter", "aggregation", "#1", "#2", "#3"):
        top.add_column(column)
    for meter in load_catalog(None).meters:
        sql, params = usage_query(meter)
        totals = {c: v for c, _, _, _, v in client.query(sql, parameters=params).result_rows}
        leaders = sorted(totals.items(), key=lambda kv: kv[1], reverse=True)[:3]
        top.add_row(meter.key, meter.aggregation.value, *(f"{c}: {v.normalize():f}" for c, v in leaders))
        grouped_sql, grouped_params = usage_query(meter, group_by=list(meter.group_by))
        grouped = {
            (c, tuple(sorted(g.items()))): v
            for c, _, _, g, v in client.query(grouped_sql, parameters=grouped_params).result_rows
        }
        exact = exact and grouped == truth[meter.key]
    console.print(top)
    verdict = "[green]exact: every meter total equals the ground truth" if exact else "[red]MISMATCH with ground truth"
    console.print(verdict)
    return exact
