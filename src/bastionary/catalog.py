"""The catalog YAML: meters, plans, dunning policies and entitlements, checked together.

Each part is described by its own domain (:mod:`bastionary.metering.meters`,
:mod:`bastionary.rating.plans`, :mod:`bastionary.dunning.policy`,
:mod:`bastionary.entitlements.spec`); this module reads the file and checks what ties the
parts together (a price's meter, a policy's plans). Loaded once at start by the processes
that compose the domains (the worker, the command line, the tools): the domains themselves
never import it. Every problem in the file is reported together.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
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
from bastionary.entitlements.spec import EntitledPlan, entitlement_problems
from bastionary.metering.meters import Aggregation, Meter
from bastionary.rating.plans import MeteredPrice
from bastionary.rating.tax import Invoicing

__all__ = ["Aggregation", "Catalog", "CatalogError", "Meter", "load_catalog", "parse_catalog"]


class Catalog(BaseModel):
    model_config = ConfigDict(extra="allow")

    meters: list[Meter] = Field(default_factory=list)
    plans: list[EntitledPlan] = Field(default_factory=list)
    dunning: DunningConfig = Field(default_factory=DunningConfig)
    invoicing: Invoicing = Field(default_factory=Invoicing)  # issuer, tax rates, what the page hides

    @field_validator("meters")
    @classmethod
    def _unique_keys(cls, meters: list[Meter]) -> list[Meter]:
        dupes = sorted(key for key, n in Counter(m.key for m in meters).items() if n > 1)
        if dupes:
            raise ValueError(f"duplicate meter keys: {', '.join(dupes)}")
        return meters

    @model_validator(mode="after")
    def _prices_reference_meters(self) -> Catalog:
        meters = {m.key: m for m in self.meters}
        problems = []
        plan_keys = [p.key for p in self.plans]
        problems += [f"duplicate plan key {k!r}" for k in sorted({k for k in plan_keys if plan_keys.count(k) > 1})]
        for plan in self.plans:
            for price in plan.prices:
                if not isinstance(price, MeteredPrice):
                    continue  # a flat price reads no meter
                meter_key = price.meter
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

    def plan(self, key: str) -> EntitledPlan:
        for plan in self.plans:
            if plan.key == key:
                return plan
        raise KeyError(f"unknown plan {key!r}")

    def meter(self, key: str) -> Meter:
        for meter in self.meters:
            if meter.key == key:
                return meter
        raise KeyError(f"unknown meter {key!r}; known: {', '.join(m.key for m in self.meters) or 'none'}")


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
    keys: list[str] = [m["key"] for m in meters or [] if isinstance(m, dict) and isinstance(m.get("key"), str)]
    return sorted({k for k in keys if keys.count(k) > 1})


class _CatalogLoader(yaml.SafeLoader):
    """Safe YAML, strict where a catalog needs it: a key given twice is an error rather than
    the last one winning (a second ``amount:`` would reprice a plan unnoticed), and a number
    with a fraction is the Decimal it spells, never a binary float's approximation of it."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # keys merged from an anchor are there to be overridden
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in lines:
                    raise CatalogError(
                        f"line {line}: duplicate key {key!r} (first on line {lines[key]});"
                        " YAML would keep only the last value"
                    )
                lines[key] = line
            except TypeError:
                continue  # unhashable: the base constructor refuses it, with its own message
        return super().construct_mapping(node, deep=deep)


def _construct_decimal(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Decimal:
    # The resolver's YAML 1.1 floats: 1_000.5, .5, -.inf, .nan and base 60 (1:30.5).
    text = str(loader.construct_scalar(node)).replace("_", "").lower()
    sign, digits = "-" if text.startswith("-") else "", text.lstrip("+-")
    if digits == ".inf":
        return Decimal(sign + "Infinity")
    if digits == ".nan":
        return Decimal("NaN")
    if ":" in digits:
        *sixties, last = digits.split(":")
        whole, _, fraction = last.partition(".")
        minutes = 0
        for part in sixties:
            minutes = minutes * 60 + int(part)
        digits = f"{minutes * 60 + int(whole)}.{fraction or '0'}"
    # Built from the text, not from arithmetic, which would round to the context's precision.
    return Decimal(sign + digits)


_CatalogLoader.add_constructor("tag:yaml.org,2002:float", _construct_decimal)


def read_catalog_yaml(text: str) -> Any:
    """The document in ``text``, read as a catalog is: CatalogError for a duplicate key."""
    return yaml.load(text, Loader=_CatalogLoader)  # noqa: S506 - a SafeLoader subclass


def load_catalog(path: Path | None) -> Catalog:
    """Load the catalog at ``path``; without one, the example catalog shipped with the package."""
    if path is None:
        text = resources.files("bastionary").joinpath("default_catalog.yaml").read_text(encoding="utf-8")
        return parse_catalog(_static_config_floats(read_catalog_yaml(text)), "built-in example catalog")
    try:
        document = read_catalog_yaml(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise CatalogError(f"cannot read catalog {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogError(f"cannot read catalog {path}: {exc}") from None
    except CatalogError as exc:
        raise CatalogError(f"{path} is invalid:\n  {exc}") from None
    return parse_catalog(_static_config_floats(document), str(path))


def _static_config_floats(document: Any) -> Any:
    """A static entitlement's ``config`` goes to applications as JSON, as written: its numbers
    stay floats there (the JSON writer takes no Decimal, and no price is computed from them)."""
    plans = document.get("plans") if isinstance(document, dict) else None
    for plan in plans if isinstance(plans, list) else ():
        entitlements = plan.get("entitlements") if isinstance(plan, dict) else None
        for entitlement in entitlements if isinstance(entitlements, list) else ():
            if isinstance(entitlement, dict) and "config" in entitlement:
                entitlement["config"] = _floats(entitlement["config"])
    return document


def _floats(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict):
        return {key: _floats(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_floats(item) for item in value]
    return value
