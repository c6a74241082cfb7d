"""Operators' settings and storage, from the forty-sixth session's review: a worker id the worker
refuses is refused by `bastionary config` too, and idempotency keys are kept as long as the
README says, not forever (chdb in a child process: one per data directory). Each test failed
before its fix."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bastionary.cli.main import cli
from bastionary.settings import ConfigError, load_settings
from tests.unit.env_helpers import isolated_cli, one_error_line

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas" / "clickhouse"


@pytest.mark.parametrize("worker_id", ["", "  ", ".", "..", "a/b"])
def test_config_refuses_a_worker_id_the_worker_refuses(monkeypatch, tmp_path, worker_id):
    # Checked only as `run`, `worker` and `rater` started: `config`, the command the README has
    # operators run to check a deployment, printed the id and exited 0.
    isolated_cli(monkeypatch, tmp_path / "data")
    monkeypatch.setenv("BASTIONARY_WORKER_ID", worker_id)
    result = CliRunner().invoke(cli, ["config"])
    assert result.exit_code == 1, result.output
    assert one_error_line(result.output) == "Error: invalid configuration:"
    assert "BASTIONARY_WORKER_ID: " in result.output


def test_a_worker_id_with_a_nul_is_a_config_error():
    # No process environment holds a NUL, but a .env file or an override can.
    with pytest.raises(ConfigError, match=r"BASTIONARY_WORKER_ID: .*cannot name the worker's directories"):
        load_settings({}, worker_id="a\0b")


def test_a_hostname_is_a_worker_id():
    assert load_settings({}, worker_id="bastionary-worker-2.local").worker_id == "bastionary-worker-2.local"


def test_the_idempotency_tables_ttl_is_the_retention_its_reads_keep():
    from bastionary.storage.idempotency import RETENTION

    ttl = [
        int(days)
        for path in sorted(SCHEMAS.glob("*.sql"))
        for days in re.findall(
            r"ALTER TABLE api_idempotency MODIFY TTL toDateTime\(created_at\) \+ INTERVAL (\d+) DAY", path.read_text()
        )
    ]
    assert ttl[-1:] == [RETENTION.days]


_KEYS_PAST_THE_RETENTION = """
import json, tempfile, time
from datetime import UTC, datetime, timedelta
from bastionary.storage.client import open_client
from bastionary.storage.idempotency import ClickHouseIdempotency, IdempotencyRecord
from bastionary.storage.migrations import apply_migrations, load_migrations

now = datetime.now(UTC)
def record(key, digest, days_ago, seconds_later=0):
    created_at = now - timedelta(days=days_ago) + timedelta(seconds=seconds_later)
    return IdempotencyRecord("admin", "/v1/payments", key, digest, f"e-{key}-{digest}", "{}", created_at)

with tempfile.TemporaryDirectory() as tmp:
    client = open_client(f"chdb://{tmp}/clickhouse", "bastionary", create=True)
    store = ClickHouseIdempotency(client)
    apply_migrations(client, [m for m in load_migrations() if m.version < 19])
    # Recorded by a version before the TTL: a year old, and one within the retention.
    store.record(record("k-year", "a", 365))
    store.record(record("k-recent", "a", 34))
    applied = apply_migrations(client)
    # Recorded past the retention after the TTL exists (no merge has run since).
    store.record(record("k-late", "a", 36))
    # Past the retention while it sits in a part no TTL merge has rewritten yet.
    client.command("SYSTEM STOP TTL MERGES api_idempotency")
    store.record(record("k-expiring", "a", 35, seconds_later=2))
    time.sleep(3)
    answers = {key: getattr(store.first("admin", "/v1/payments", key), "body_digest", None)
               for key in ("k-year", "k-recent", "k-late", "k-expiring")}
    client.command("SYSTEM START TTL MERGES api_idempotency")
    # The key reused with other data after its retention: a new request, which counts from now on.
    store.record(record("k-late", "b", 0))
    answers["k-late reused"] = store.first("admin", "/v1/payments", "k-late").body_digest
    client.command("OPTIMIZE TABLE api_idempotency FINAL")
    kept = sorted(f"{k}:{d}" for k, d in client.query(
        "SELECT idempotency_key, body_digest FROM api_idempotency").result_rows)
    ddl = client.query("SELECT create_table_query FROM system.tables"
                       " WHERE database = currentDatabase() AND name = 'api_idempotency'").result_rows[0][0]
    print(json.dumps({"applied": applied, "again": apply_migrations(client), "answers": answers, "kept": kept,
                      "ttl": ddl[ddl.find(" TTL "):].split(" SETTINGS")[0].strip()}))
"""


@pytest.fixture(scope="module")
def past_the_retention() -> dict:
    done = subprocess.run([sys.executable, "-c", _KEYS_PAST_THE_RETENTION], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    answer: dict = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def test_the_ttl_migration_applies_once_on_a_table_that_holds_keys(past_the_retention):
    assert 19 in past_the_retention["applied"]
    assert past_the_retention["again"] == []
    assert past_the_retention["ttl"] == "TTL toDateTime(created_at) + toIntervalDay(35)"


def test_a_key_past_its_retention_is_a_new_request(past_the_retention):
    # Kept forever, a key sent again a year later with other data was refused (422
    # idempotency_key_reused), and with the same data republished a year-old event. Past the
    # TTL but not yet merged away, the row must not answer either: merges run when they do.
    answers = past_the_retention["answers"]
    assert answers == {"k-year": None, "k-recent": "a", "k-late": None, "k-expiring": None, "k-late reused": "b"}


def test_rows_past_the_retention_are_dropped(past_the_retention):
    assert past_the_retention["kept"] == ["k-late:b", "k-recent:a"]
