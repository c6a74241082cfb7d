"""Loading the ordered ClickHouse migrations (applying them is an integration concern)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from bastionary.storage.migrations import Migration, MigrationError, _statements, load_migrations, migrations_dir

REPO_SCHEMAS = Path(__file__).resolve().parents[2] / "schemas" / "clickhouse"


def test_repo_migrations_are_ordered_with_unique_versions():
    migrations = load_migrations(REPO_SCHEMAS)
    assert migrations, "no migrations found"
    versions = [m.version for m in migrations]
    assert versions == sorted(set(versions))
    assert versions[0] == 1
    for m in migrations:
        assert (REPO_SCHEMAS / f"{m.version:04d}_{m.name}.sql").read_text() == m.sql
        assert m.sql.strip()


def test_repo_migrations_split_into_ddl_statements():
    for m in load_migrations(REPO_SCHEMAS):
        statements = _statements(m.sql)
        assert statements, m.name
        for statement in statements:
            assert re.match(r"(CREATE|ALTER|DROP|RENAME)\b", statement, re.IGNORECASE), statement[:80]


def test_the_default_directory_holds_the_same_migrations():
    assert [(m.version, m.name) for m in load_migrations()] == [
        (m.version, m.name) for m in load_migrations(REPO_SCHEMAS)
    ]
    assert (migrations_dir() / "0001_usage_events.sql").is_file()


def test_checksum_is_the_sha256_of_the_text():
    m = Migration(1, "x", "CREATE TABLE t (a UInt8) ENGINE = Memory")
    assert m.checksum == hashlib.sha256(m.sql.encode()).hexdigest()
    assert Migration(1, "x", m.sql + " ").checksum != m.checksum


def write(directory: Path, name: str, sql: str = "CREATE TABLE IF NOT EXISTS t (a UInt8) ENGINE = Memory") -> None:
    (directory / name).write_text(sql)


def test_tmp_dir_is_loaded_in_version_order_ignoring_other_files(tmp_path: Path):
    write(tmp_path, "0010_ten.sql")
    write(tmp_path, "0002_two.sql")
    write(tmp_path, "0001_one.sql")
    write(tmp_path, "README.md", "not a migration")
    assert [(m.version, m.name) for m in load_migrations(tmp_path)] == [(1, "one"), (2, "two"), (10, "ten")]


def test_empty_directory_has_no_migrations(tmp_path: Path):
    assert load_migrations(tmp_path) == []


@pytest.mark.parametrize(
    "name",
    [
        "1_short.sql",
        "0001-dash.sql",
        "0001_Upper.sql",
        "0001_.sql",
        "00001_five_digits.sql",
        "init.sql",
        "0001_a b.sql",
    ],
)
def test_bad_file_name_is_a_migration_error(tmp_path: Path, name: str):
    write(tmp_path, "0001_ok.sql")
    write(tmp_path, name)
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        load_migrations(tmp_path)


def test_duplicate_versions_are_a_migration_error(tmp_path: Path):
    write(tmp_path, "0001_first.sql")
    write(tmp_path, "0001_second.sql")
    with pytest.raises(MigrationError, match="duplicate migration versions"):
        load_migrations(tmp_path)


def test_statements_drop_comment_lines_and_split_on_semicolons():
    sql = (
        "-- header; with a semicolon\n"
        "CREATE TABLE a (x UInt8) ENGINE = Memory;\n"
        "\n"
        "  -- between\n"
        "CREATE TABLE b (y UInt8) ENGINE = Memory;\n"
    )
    assert _statements(sql) == [
        "CREATE TABLE a (x UInt8) ENGINE = Memory",
        "CREATE TABLE b (y UInt8) ENGINE = Memory",
    ]
    assert _statements("-- only a comment\n") == []
