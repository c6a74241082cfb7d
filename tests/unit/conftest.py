"""Unit tests' log capture: ``structlog.testing.capture_logs`` swaps structlog's processors,
and sees nothing a logger filters out before them. A test that runs a command in this process
configures the CLI's logging (its level's filtering wrapper, loggers cached on first use) for
the rest of the suite, and a later test that captured a warning or an error saw nothing
(which test did it depended on the order of the files). Each test starts from the
configuration the one before it started from."""

from __future__ import annotations

import sys

import pytest
import structlog
from structlog._config import BoundLoggerLazyProxy


@pytest.fixture(autouse=True)
def _logging_configuration_as_before():
    before = {key: list(value) if isinstance(value, list) else value for key, value in structlog.get_config().items()}
    yield
    structlog.configure(**before)
    for name, module in list(sys.modules.items()):
        if name.startswith("bastionary"):
            for value in vars(module).values():
                if isinstance(value, BoundLoggerLazyProxy):
                    value.__dict__.pop("bind", None)  # bound on first use under the test's configuration
