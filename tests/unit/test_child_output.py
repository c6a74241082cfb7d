"""Child processes never write to the test runner's terminal (or to a worker's log stream).

Every ``subprocess.run``/``Popen`` in the tests and in the package names where the child's
output goes: ``capture_output``, or ``stdout`` and ``stderr`` both. A stray byte from a child
would otherwise land in the middle of pytest's output (or of a JSON log line).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _calls():
    for path in sorted([*(ROOT / "tests").rglob("*.py"), *(ROOT / "src").rglob("*.py")]):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("run", "Popen")
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "subprocess"
            ):
                yield path.relative_to(ROOT), node


def test_every_child_process_has_its_output_redirected():
    unredirected = []
    found = 0
    for path, call in _calls():
        found += 1
        keywords = {k.arg for k in call.keywords}
        if "capture_output" in keywords or {"stdout", "stderr"} <= keywords:
            continue
        unredirected.append(f"{path}:{call.lineno}")
    assert found > 10  # the walk sees the calls at all
    assert unredirected == []
