"""The layering the README draws, checked against the imports the code really has.

Every ``import bastionary.x`` and ``from bastionary.x import`` counts, including the ones
inside functions: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "bastionary"

DOMAINS = {"ingest", "dedupe", "metering", "rating", "credits", "dunning", "entitlements"}
SHARED = {"settings", "logs", "metrics", "locks", "topics", "kafka", "outbound", "money"}
# What each part may never import. The domains hold the pure logic and their ports; storage
# implements those ports; the worker wires both into Faust; the CLI and tools sit on top.
NEVER = {
    **{name: {"storage", "worker", "cli", "tools", "devstack", "catalog", "runtime"} for name in DOMAINS},
    **{name: DOMAINS | {"storage", "worker", "cli", "tools", "devstack", "catalog", "runtime"} for name in SHARED},
    "storage": {"worker", "cli", "tools", "devstack", "catalog", "runtime"},
    "catalog": {"storage", "worker", "cli", "tools", "devstack", "runtime"},
    "devstack": {"worker", "cli", "tools"},
    "runtime": {"worker", "cli", "tools"},
    "worker": {"cli", "tools"},
    "tools": {"cli"},
}


def _part(module: str) -> str | None:
    """``bastionary.rating.plans`` -> ``rating``; ``bastionary.settings`` -> ``settings``."""
    parts = module.split(".")
    return parts[1] if parts[0] == "bastionary" and len(parts) > 1 else None


def _imports() -> dict[tuple[str, str], set[str]]:
    """(importing part, imported part) -> the files where that happens."""
    edges: dict[tuple[str, str], set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        source = _part(".".join(relative.parts))
        if source is None:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            for target in targets:
                imported = _part(target)
                if imported is not None and imported != source:
                    edges[(source, imported)].add(str(path.relative_to(PACKAGE)))
    return edges


EDGES = _imports()


def test_every_part_is_placed_in_the_layering() -> None:
    parts = {p.stem for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    placed = DOMAINS | SHARED | set(NEVER) | {"cli", "__init__"}
    assert parts <= placed, f"place {sorted(parts - placed)} in NEVER (and the README's package table)"


@pytest.mark.parametrize("part", sorted(NEVER))
def test_no_part_imports_what_sits_above_it(part: str) -> None:
    wrong = {
        f"{part} -> {other}": sorted(files)
        for (src, other), files in EDGES.items()
        if src == part and other in NEVER[part]
    }
    assert not wrong, wrong


def test_only_the_cli_imports_the_tools() -> None:
    users = {src for (src, dst) in EDGES if dst == "tools"}
    assert users <= {"cli"}, users


def test_no_two_parts_depend_on_each_other_even_through_others() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for src, dst in EDGES:
        graph[src].add(dst)

    def reachable(start: str) -> set[str]:
        seen: set[str] = set()
        stack = [start]
        while stack:
            for nxt in graph[stack.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return seen

    loops = {f"{src} -> {dst}": sorted(EDGES[(src, dst)]) for src, dst in EDGES if src in reachable(dst)}
    assert not loops, loops
