"""The entitlements routing table refuses every write: a value in a table's changelog
stalled restarted workers (worker/routing_table.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import faust
import pytest

import bastionary
from bastionary.worker.routing_table import RoutingTable, RoutingTableWrite, routing_table
from bastionary.worker.services import entitlements


def _app() -> faust.App:
    return faust.App("routing-table-test", broker="kafka://127.0.0.1:1", store="memory://")


def test_a_set_a_delete_an_update_and_a_clear_are_refused_before_the_changelog_hears_of_them(monkeypatch):
    table = routing_table(_app(), "owners", partitions=4)
    sent = []
    monkeypatch.setattr(table, "send_changelog", lambda *args, **kwargs: sent.append(args))
    with pytest.raises(RoutingTableWrite, match="only routes"):
        table[b"cust-1"] = {"state": 1}
    with pytest.raises(RoutingTableWrite):
        table.update({b"cust-2": 2})
    table.data[b"cust-3"] = 3  # as a changelog record read back would land
    with pytest.raises(RoutingTableWrite):
        del table[b"cust-3"]
    with pytest.raises(RoutingTableWrite):
        table.clear()
    assert sent == []
    assert dict(table.data) == {b"cust-3": 3}


def test_it_routes_as_a_table_keyed_by_raw_bytes_with_the_partitioner():
    app = _app()
    table = routing_table(app, "owners", partitions=4)
    assert app.tables["owners"] is table
    assert table.partitions == 4
    assert table.key_type is bytes
    assert table.use_partitioner is True
    assert b"nobody" not in table  # reads still work


def test_the_entitlements_service_routes_through_a_routing_table(monkeypatch):
    app = _app()

    class Settings:
        usage_partitions = 8

    class Context:
        pass

    ctx = Context()
    ctx.app, ctx.settings = app, Settings()
    monkeypatch.setattr(entitlements.metrics, "start_at_zero", lambda *args: None)
    catalog = type("Catalog", (), {"plans": {}, "meters": {}})()
    monkeypatch.setattr(entitlements, "known_features", lambda plans: set())
    service = entitlements.EntitlementService(ctx, catalog, lambda: None, usage=None)
    assert isinstance(service.table, RoutingTable)
    assert service.table.name == entitlements.OWNERS_TABLE
    assert service.table.partitions == 8


FAUST_TABLES = {"Table", "GlobalTable", "SetTable", "SetGlobalTable"}


def test_no_module_builds_a_faust_table_that_takes_writes():
    """Any other Faust table would have a changelog a value can reach, and with it the recovery
    race that stalled restarted workers: a new table routes through ``routing_table`` or says why not."""
    src = Path(bastionary.__file__).parent
    built = []
    for path in sorted(src.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        if not any(_imports_faust(node) for node in ast.walk(tree)):
            continue  # rich's Table, and the like
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
                if name in FAUST_TABLES:
                    built.append(f"{path.relative_to(src)}:{node.lineno} {name}(")
    assert built == []


def _imports_faust(node: ast.AST) -> bool:
    if isinstance(node, ast.Import):
        return any(alias.name.split(".")[0] == "faust" for alias in node.names)
    return isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "faust"
