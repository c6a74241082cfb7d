"""deploy/requirements-runtime.lock: the runtime closure of bastionary's own dependencies,
pinned as requirements.lock pins them, without the test and dev tools; the worker image
installs it. `make runtime-lock` writes it (run with the repo's .venv, where bastionary is
installed); a test keeps the committed file equal to what this computes."""

from __future__ import annotations

import re
import sys
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
HEADER = [
    "# Runtime dependencies only (the worker image): the closure of bastionary's own",
    "# dependencies, pinned as requirements.lock pins them. `make runtime-lock` rewrites it.",
]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_lock(root: Path = ROOT) -> str:
    pins = {}
    for line in (root / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            pins[norm(line.split("==", 1)[0])] = line.strip()
    env = default_environment()
    seen, todo = set(), [("bastionary", frozenset())]
    while todo:
        name, extras = todo.pop()
        key = (norm(name), extras)
        if key in seen:
            continue
        seen.add(key)
        try:
            reqs = requires(name) or []
        except PackageNotFoundError:
            continue
        for text in reqs:
            req = Requirement(text)
            ok = req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in (extras or {""}))
            if ok:
                todo.append((req.name, frozenset(req.extras)))
    names = sorted({n for n, _ in seen} - {"bastionary"})
    missing = [n for n in names if n not in pins]
    if missing:
        raise SystemExit(f"not pinned in requirements.lock: {', '.join(missing)}")
    return "\n".join([*HEADER, *(pins[n] for n in names)]) + "\n"


if __name__ == "__main__":
    (ROOT / "deploy" / "requirements-runtime.lock").write_text(runtime_lock())
    sys.stdout.write("wrote deploy/requirements-runtime.lock\n")
