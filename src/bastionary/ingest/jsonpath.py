"""A small, fast JSONPath subset for meter values and dimensions.

Supported: ``$.a.b``, ``$['a b']``, ``$["a"]``, ``$.items[0]``, and mixes of them. Filters,
wildcards and slices are rejected when the catalog loads, so a meter can never silently
select several values.
"""

from __future__ import annotations

import re
from typing import Any

_MISSING = object()
_TOKEN = re.compile(r"""\.([A-Za-z_][A-Za-z0-9_\-]*)|\[(\d+)\]|\['([^']*)'\]|\["([^"]*)"\]""")


class JsonPathError(ValueError):
    pass


def compile_path(path: str) -> tuple[str | int, ...]:
    if not path.startswith("$"):
        raise JsonPathError(f"JSONPath must start with '$': {path!r}")
    steps: list[str | int] = []
    pos = 1
    while pos < len(path):
        match = _TOKEN.match(path, pos)
        if not match:
            raise JsonPathError(f"unsupported JSONPath at position {pos}: {path!r}")
        name, index, single, double = match.groups()
        steps.append(int(index) if index is not None else (name or single or double or ""))
        pos = match.end()
    if not steps:
        raise JsonPathError(f"JSONPath selects the whole object: {path!r}")
    return tuple(steps)


def extract(data: Any, steps: tuple[str | int, ...]) -> Any:
    """The value at ``steps``, or ``MISSING`` when any step does not exist."""
    current = data
    for step in steps:
        if isinstance(step, int):
            if not isinstance(current, list) or step >= len(current):
                return _MISSING
        elif not isinstance(current, dict) or step not in current:
            return _MISSING
        current = current[step]
    return current


MISSING = _MISSING
