"""The process environment as a test of the settings or the CLI needs it, and the CLI's one
line of error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bastionary.settings import ConfigError, load_settings


def without_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """No BASTIONARY_* variable from the outer environment leaks in."""
    for name in list(os.environ):
        if name.upper().startswith("BASTIONARY_"):
            monkeypatch.delenv(name)


def isolated_cli(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    """No outer BASTIONARY_* variable, and a data directory of the test's own."""
    without_settings(monkeypatch)
    monkeypatch.setenv("BASTIONARY_DATA_DIR", str(data_dir))


def config_error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    """The settings' refusal of ``BASTIONARY_<name>=<value>`` for each of ``env``."""
    for name, value in env.items():
        monkeypatch.setenv(f"BASTIONARY_{name}", value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    return str(info.value)


def one_error_line(output: str) -> str:
    """The one ``Error: `` line of a command that failed cleanly (no traceback, not "a bug of ours")."""
    errors = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, output
    assert "Traceback" not in output and "a bug of ours" not in output, output
    return errors[0]
