"""Ordered ClickHouse migrations from ``schemas/clickhouse/NNNN_name.sql``.

Applied at start, idempotently: each file runs once and is recorded with its checksum in
``schema_migrations``; a recorded file whose text changed afterwards stops the start-up,
because a migration must never be edited once it has shipped.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import structlog

from bastionary.storage.client import Client

log = structlog.get_logger(__name__)

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations
(
    version    UInt32,
    name       String,
    checksum   String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY version
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(Exception):
    pass


def migrations_dir() -> Path:
    """The repo's ``schemas/clickhouse`` in a checkout, or the copy packaged into the wheel."""
    packaged = Path(str(resources.files("bastionary"))) / "_schemas" / "clickhouse"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[3] / "schemas" / "clickhouse"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    directory = directory or migrations_dir()
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"migration file name must be NNNN_name.sql: {path.name}")
        found.append(Migration(int(match.group(1)), match.group(2), path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {directory}")
    return found


def apply_migrations(client: Client, migrations: list[Migration] | None = None) -> list[int]:
    """Apply what is missing; return the versions applied now."""
    migrations = migrations if migrations is not None else load_migrations()
    client.command(_MIGRATIONS_TABLE)
    applied = {
        int(version): checksum
        for version, checksum in client.query("SELECT version, checksum FROM schema_migrations FINAL").result_rows
    }
    done = []
    for migration in migrations:
        if migration.version in applied:
            if applied[migration.version] != migration.checksum:
                name = f"{migration.version:04d}_{migration.name}"
                raise MigrationError(
                    f"migration {name} changed after it was applied: this database was set up by a Bastionary"
                    f" whose {name}.sql differs from this one's; run that version, or put its {name}.sql back"
                    " (schema_migrations holds the checksum it applied)"
                )
            continue
        for statement in _statements(migration.sql):
            client.command(statement)
        client.insert(
            "schema_migrations",
            [(migration.version, migration.name, migration.checksum)],
            column_names=["version", "name", "checksum"],
        )
        log.info("migration applied", version=migration.version, name=migration.name)
        done.append(migration.version)
    return done


def _statements(sql: str) -> list[str]:
    """Split on ';' after dropping comments (migration files keep ';' and quotes out of comments)."""
    body = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    return [s.strip() for s in body.split(";") if s.strip()]
