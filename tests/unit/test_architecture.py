"""The layering the README's package table draws, checked against the imports the code has.

Every ``import bastionary.x`` and ``from bastionary.x import`` counts, including the ones
inside functions: a lazy import is still a dependency. A part may import only parts listed
below it in the table, so no part depends on one above it and no two parts form a loop.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "bastionary"
README = PACKAGE.parents[1] / "README.md"


def _part(module: str) -> str | None:
    """``bastionary.rating.plans`` -> ``rating``; ``bastionary.settings`` -> ``settings``."""
    parts = module.split(".")
    return parts[1] if parts[0] == "bastionary" and len(parts) > 1 else None


def _imports() -> dict[tuple[str, str], set[str]]:
    """(importing part, imported part) -> the files where that happens."""
    edges: dict[tuple[str, str], set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        source = _part(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
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


def _table_parts() -> list[str]:
    """The parts in the README's layer table, top first."""
    text = README.read_text()
    table = text[text.index("| layer | part | owns |") :].split("\n\n", 1)[0]
    return [row.split("|")[2].strip().strip("`").removeprefix("bastionary.") for row in table.splitlines()[2:]]


def test_the_readme_table_names_every_part_once() -> None:
    on_disk = {p.stem for p in PACKAGE.iterdir() if p.suffix == ".py" or any(p.glob("*.py"))} - {"__init__"}
    listed = _table_parts()
    assert len(listed) == len(set(listed)), listed
    assert set(listed) == on_disk


def test_every_part_imports_only_parts_below_it_in_the_readme_table() -> None:
    order = {part: n for n, part in enumerate(_table_parts())}
    upward = {f"{src} -> {dst}": sorted(files) for (src, dst), files in _imports().items() if order[dst] < order[src]}
    assert not upward, upward


def test_the_domains_never_reach_for_storage_or_the_wiring() -> None:
    """Stated on its own because it is the rule that keeps pure logic testable without a broker."""
    domains = {"ingest", "dedupe", "metering", "rating", "credits", "dunning", "entitlements"}
    above = {"storage", "worker", "cli", "tools", "devstack", "catalog", "runtime"}
    wrong = {f"{s} -> {d}": sorted(f) for (s, d), f in _imports().items() if s in domains and d in above}
    assert not wrong, wrong


def test_only_the_worker_imports_faust() -> None:
    outside = []
    for path in PACKAGE.rglob("*.py"):
        if path.is_relative_to(PACKAGE / "worker"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if any(name.split(".")[0] in ("faust", "mode") for name in names):
                outside.append(str(path.relative_to(PACKAGE)))
    assert not outside, outside


def test_each_top_level_part_has_a_readme_naming_only_files_that_exist() -> None:
    import re

    for folder in (PACKAGE, PACKAGE / "devstack", PACKAGE / "tools"):
        text = (folder / "README.md").read_text()
        for name in re.findall(r"`([a-z_/]+(?:\.py|/))`", text):
            roots = (folder, PACKAGE, PACKAGE.parents[1])
            assert any((root / name).exists() for root in roots), f"{folder.name}/README.md names {name}"


def test_the_client_imports_no_other_part() -> None:
    """``bastionary.client`` ships to users' applications: it must not pull in the server."""
    reached = {dst: files for (src, dst), files in _imports().items() if src == "client"}
    assert not reached, reached
