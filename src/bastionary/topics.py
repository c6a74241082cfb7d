"""Topic names. Every name is prefixed with ``BASTIONARY_TOPIC_PREFIX``."""

from __future__ import annotations

from dataclasses import dataclass

USAGE_EVENTS = "usage.events"
USAGE_DLQ = "usage.dlq"


@dataclass(frozen=True)
class Topics:
    prefix: str = ""

    def name(self, base: str) -> str:
        return f"{self.prefix}{base}"

    @property
    def usage_events(self) -> str:
        return self.name(USAGE_EVENTS)

    @property
    def usage_dlq(self) -> str:
        return self.name(USAGE_DLQ)
