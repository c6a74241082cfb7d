"""The process environment as a test of the settings or the CLI needs it."""

from __future__ import annotations

import os

import pytest


def without_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """No BASTIONARY_* variable from the outer environment leaks in."""
    for name in list(os.environ):
        if name.upper().startswith("BASTIONARY_"):
            monkeypatch.delenv(name)
