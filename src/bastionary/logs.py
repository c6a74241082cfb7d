"""structlog set-up: JSON lines when not on a terminal, readable output on one.

Everything that logs in the process goes through the same renderer: our structlog calls, and
the standard library loggers of Faust, aiokafka and mode. So a worker's stderr off a
terminal holds JSON objects only, one per line, tracebacks included as a field.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog
from structlog.typing import Processor

_SHARED: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def strip_terminal_codes(logger: Any, method: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    """Faust and mode colour some of their messages for a terminal; a log line keeps the text."""
    return {k: _TERMINAL_CODES.sub("", v) if isinstance(v, str) else v for k, v in event.items()}


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer = structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            *_SHARED,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            strip_terminal_codes,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Faust, aiokafka and mode log through the standard library; keep them to warnings, and
    # render them like everything else.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*_SHARED, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                strip_terminal_codes,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if level == "DEBUG" else logging.WARNING)
