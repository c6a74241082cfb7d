"""``schemas/README.md`` on the ClickHouse tables against the migrations: the dunning tables'
documented columns and event kinds are the storage code's and ``0007_dunning.sql``'s, and every
SQL example runs on freshly migrated tables."""

from __future__ import annotations

import json
import re

import pytest

from tests.unit.schema_helpers import SCHEMAS, readme_blocks, readme_section


def _table_columns(table: str) -> list[str]:
    section = readme_section(f"`{table}`", "###")
    return re.findall(r"^\| `(\w+)` \| [A-Z]", section, flags=re.MULTILINE)


def test_readme_lists_every_dunning_column_and_kind():
    from bastionary.storage import dunning as dunning_storage

    assert _table_columns("receivables") == list(dunning_storage.RECEIVABLE_COLUMNS)
    assert _table_columns("payments") == list(dunning_storage.PAYMENT_COLUMNS)
    assert _table_columns("dunning_events") == list(dunning_storage.EVENT_COLUMNS)
    sql = (SCHEMAS / "clickhouse" / "0007_dunning.sql").read_text()
    (kinds,) = re.findall(r"kind\s+LowCardinality\(String\),\s+-- (.+)", sql)[1:]
    documented = re.findall(r"^\| `(\w+)` \| [a-z]", readme_section("`dunning_events`", "###"), flags=re.MULTILINE)
    # Kinds added after 0007 was applied: its comment cannot change (the checksum of an applied
    # migration is checked at start), so they are listed here.
    added_since = ["minimum"]
    assert set(added_since) <= set(documented)
    assert [k for k in documented if k not in added_since] == [k.strip() for k in kinds.split(",")]


_RUN_README_SQL = """
import json, sys, tempfile
from bastionary.storage.client import open_client
from bastionary.storage.usage import ClickHouseUsageStore
with tempfile.TemporaryDirectory() as tmp:
    client = open_client(f"chdb://{tmp}/clickhouse", "bastionary", create=True)
    ClickHouseUsageStore(client).migrate()
    failures = []
    for sql in json.loads(sys.stdin.read()):
        try:
            client.query(sql)
        except Exception as exc:
            failures.append(f"{sql.splitlines()[0]}: {str(exc).splitlines()[0]}")
    print(json.dumps(failures))
"""


@pytest.mark.integration
def test_readme_queries_run_on_the_migrated_tables():
    """Every ```sql example runs on freshly migrated tables (in chdb, in a child process:
    chdb allows one database directory per process)."""
    import subprocess
    import sys

    queries = readme_blocks("sql")
    assert len(queries) >= 5
    done = subprocess.run(
        [sys.executable, "-c", _RUN_README_SQL], input=json.dumps(queries), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def _ddl_columns() -> dict[str, list[str]]:
    """Every table the migrations create, with its columns (ALTER ... ADD COLUMN included)."""
    tables: dict[str, list[str]] = {}
    for path in sorted((SCHEMAS / "clickhouse").glob("*.sql")):
        text = re.sub(r"--[^\n]*", "", path.read_text())
        for name, body in re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)\s*\((.*?)\)\s*ENGINE", text, re.DOTALL):
            columns = []
            depth = 0
            part = ""
            for char in body + ",":
                if char == "," and depth == 0:
                    if part.strip():
                        columns.append(part.split()[0])
                    part = ""
                    continue
                depth += {"(": 1, ")": -1}.get(char, 0)
                part += char
            tables[name] = columns
        for name, column in re.findall(r"ALTER TABLE (\w+) ADD COLUMN IF NOT EXISTS (\w+)", text):
            tables[name].append(column)
    return tables


def test_every_table_and_column_is_documented_for_analysts():
    text = (SCHEMAS / "README.md").read_text()
    for table, columns in _ddl_columns().items():
        heading = f"### `{table}`"
        assert heading in text, f"{table} has no section in schemas/README.md"
        section = text[text.index(heading) : text.find("\n### ", text.index(heading) + 1)]
        cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
        documented = [name for cell in cells for name in re.findall(r"`(\w+)`", cell)]
        missing = [c for c in columns if c not in documented]
        assert not missing, (table, missing)
        assert "FINAL" in section or "MergeTree" in section, f"{table}: say how to read it"
