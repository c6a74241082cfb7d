"""The catalog YAML: meters now, plans and policies as later issues add them.

Loaded once at start; every problem in the file is reported together.
"""

from __future__ import annotations

from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from bastionary.dunning.policy import DunningConfig
from bastionary.entitlements.spec import entitlement_problems
from bastionary.ingest.jsonpath import JsonPathError, compile_path
from bastionary.rating.plans import Plan


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
    def _value_needed(self) -> "Meter":
        if self.aggregation is not Aggregation.COUNT and not self.value_property:
            raise ValueError(f"{self.aggregation.value} needs value_property")
        return self

    @property
    def value_steps(self) -> tuple[str | int, ...] | None:
        return compile_path(self.value_property) if self.value_property else None

    @property
    def group_steps(self) -> dict[str, tuple[str | int, ...]]:
        return {name: compile_path(path) for name, path in self.group_by.items()}


class Catalog(BaseModel):
    model_config = ConfigDict(extra="allow")

    meters: list[Meter] = Field(default_factory=list)
    plans: list[Plan] = Field(default_factory=list)
    dunning: DunningConfig = Field(default_factory=DunningConfig)

    @field_validator("meters")
    @classmethod
    def _unique_keys(cls, meters: list[Meter]) -> list[Meter]:
        seen: set[str] = set()
        dupes = sorted({m.key for m in meters if m.key in seen or seen.add(m.key)})
        if dupes:
            raise ValueError(f"duplicate meter keys: {', '.join(dupes)}")
        return meters

    @model_validator(mode="after")
    def _prices_reference_meters(self) -> "Catalog":
        meters = {m.key: m for m in self.meters}
        problems = []
        plan_keys = [p.key for p in self.plans]
        problems += [f"duplicate plan key {k!r}" for k in sorted({k for k in plan_keys if plan_keys.count(k) > 1})]
        for plan in self.plans:
            for price in plan.prices:
                meter_key = getattr(price, "meter", None)
                if meter_key is None:
                    continue
                meter = meters.get(meter_key)
                if meter is None:
                    problems.append(f"plan {plan.key}, price {price.key}: unknown meter {meter_key!r}")
                    continue
                unknown = sorted(set(price.filter) - set(meter.group_by))
                if unknown:
                    problems.append(
                        f"plan {plan.key}, price {price.key}: meter {meter_key} has no dimension {', '.join(unknown)}"
                    )
        problems += entitlement_problems(self.plans, meters)
        problems += self._dunning_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _dunning_problems(self) -> list[str]:
        from bastionary.dunning.notify.email import available_templates, template_name  # jinja2 only here

        known_plans, templates, problems = {p.key for p in self.plans}, available_templates(), []
        for policy in self.dunning.policies:
            for plan in policy.applies_to.plans if policy.applies_to else ():
                if plan not in known_plans:
                    problems.append(f"dunning policy {policy.key}: unknown plan {plan!r}")
            for n, step in enumerate(policy.steps, 1):
                name = template_name({"template": step.template, "action": step.action.value})
                if "email" in step.channels and name not in templates:
                    problems.append(f"dunning policy {policy.key}, step {n}: unknown template {name!r}")
        return problems

    def plan(self, key: str) -> Plan:
        for plan in self.plans:
            if plan.key == key:
                return plan
        raise KeyError(f"unknown plan {key!r}")

    def meter(self, key: str) -> Meter:
        for meter in self.meters:
            if meter.key == key:
                return meter
        raise KeyError(f"unknown meter {key!r}; known: {', '.join(m.key for m in self.meters) or 'none'}")

    def meters_by_event_type(self) -> dict[str, list[Meter]]:
        index: dict[str, list[Meter]] = {}
        for meter in self.meters:
            index.setdefault(meter.event_type, []).append(meter)
        return index


class CatalogError(Exception):
    pass


def parse_catalog(document: Any, origin: str = "catalog") -> Catalog:
    try:
        return Catalog.model_validate(document or {})
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()]
        duplicates = _duplicate_meter_keys(document)
        if duplicates and not any("duplicate meter keys" in line for line in lines):
            # pydantic skips the list validator once a member fails; report duplicates anyway.
            lines.append(f"meters: duplicate meter keys: {', '.join(duplicates)}")
        raise CatalogError(f"{origin} is invalid:\n  " + "\n  ".join(lines)) from None


def _duplicate_meter_keys(document: Any) -> list[str]:
    meters = document.get("meters") if isinstance(document, dict) else None
    keys = [m.get("key") for m in meters or [] if isinstance(m, dict) and isinstance(m.get("key"), str)]
    return sorted({k for k in keys if keys.count(k) > 1})


def load_catalog(path: Path | None) -> Catalog:
    """Load the catalog at ``path``; without one, the example catalog shipped with the package."""
    if path is None:
        text = resources.files("bastionary").joinpath("default_catalog.yaml").read_text()
        return parse_catalog(yaml.safe_load(text), "built-in example catalog")
    try:
        document = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogError(f"cannot read catalog {path}: {exc}") from None
    return parse_catalog(document, str(path))
