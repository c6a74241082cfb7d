"""Meters: which events a meter counts, with what value, and how each aggregation behaves.

Each aggregation is described once, in :func:`behaviour`: the rollup column its partial
result lives in, whether it reads a value, and whether partial results add up. Code that
must treat every aggregation (rollup merges, the analyst SQL, the entitlement counters)
matches on :class:`Aggregation` exhaustively, so a new one is a type error until handled.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import assert_never

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bastionary.ingest.jsonpath import JsonPathError, compile_path


class Aggregation(StrEnum):
    SUM = "SUM"
    COUNT = "COUNT"
    MAX = "MAX"
    UNIQUE_COUNT = "UNIQUE_COUNT"
    LATEST = "LATEST"


class Meter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)
    event_type: str = Field(min_length=1)
    aggregation: Aggregation
    value_property: str | None = None
    group_by: dict[str, str] = Field(default_factory=dict)
    allow_negative: bool = Field(
        default=False, description="accept values below zero (corrections); otherwise they are dead-lettered"
    )
    description: str = ""

    @field_validator("value_property")
    @classmethod
    def _value_path(cls, value: str | None) -> str | None:
        if value is not None:
            compile_path(value)
        return value

    @field_validator("group_by")
    @classmethod
    def _group_paths(cls, value: dict[str, str]) -> dict[str, str]:
        for name, path in value.items():
            if not name.isidentifier():
                raise ValueError(f"dimension name {name!r} must be an identifier")
            try:
                compile_path(path)
            except JsonPathError as exc:
                raise ValueError(f"dimension {name!r}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _value_needed(self) -> Meter:
        if behaviour(self.aggregation).reads_value and not self.value_property:
            raise ValueError(f"{self.aggregation.value} needs value_property")
        return self

    @property
    def value_steps(self) -> tuple[str | int, ...] | None:
        return compile_path(self.value_property) if self.value_property else None

    @property
    def group_steps(self) -> dict[str, tuple[str | int, ...]]:
        return {name: compile_path(path) for name, path in self.group_by.items()}


@dataclass(frozen=True, slots=True)
class AggregationBehaviour:
    rollup_column: str  # the usage_rollup_1m column that holds its partial result
    reads_value: bool  # needs value_property
    additive: bool  # partial results over disjoint events add up (counters can move by deltas)


def behaviour(aggregation: Aggregation) -> AggregationBehaviour:
    match aggregation:
        case Aggregation.SUM:
            return AggregationBehaviour("value_sum", reads_value=True, additive=True)
        case Aggregation.COUNT:
            return AggregationBehaviour("event_count", reads_value=False, additive=True)
        case Aggregation.MAX:
            return AggregationBehaviour("value_max", reads_value=True, additive=False)
        case Aggregation.UNIQUE_COUNT:
            return AggregationBehaviour("unique_values", reads_value=True, additive=False)
        case Aggregation.LATEST:
            return AggregationBehaviour("latest", reads_value=True, additive=False)
        case _:
            assert_never(aggregation)
