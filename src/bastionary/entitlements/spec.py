"""Entitlements as written in a plan of the catalog YAML, and the plan that carries them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bastionary.money import plain_decimal
from bastionary.rating.plans import Plan

FEATURE_REGEX = r"^[a-z][a-z0-9_]*$"

Feature = Annotated[str, Field(pattern=FEATURE_REGEX)]
Fraction = Annotated[Decimal, Field(gt=0, allow_inf_nan=False)]


class _Entitlement(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    feature: Feature
    # Features a suspended customer still needs, e.g. the billing portal to pay what is owed.
    survives_suspension: bool = False


class BooleanEntitlement(_Entitlement):
    type: Literal["boolean"]
    enabled: bool = True


class StaticEntitlement(_Entitlement):
    type: Literal["static"]
    config: dict[str, Any]


class MeteredEntitlement(_Entitlement):
    type: Literal["metered"]
    meter: str = Field(min_length=1)
    limit: Decimal = Field(ge=0, allow_inf_nan=False)
    soft: bool = False  # soft: past the limit is still allowed (billed as overage), only notified
    reset: Literal["billing_period"] = "billing_period"
    notify_at: list[Fraction] = Field(default_factory=list)  # fractions of the limit; > 1 is fine for soft limits
    filter: dict[str, str] = Field(default_factory=dict)

    @field_validator("notify_at")
    @classmethod
    def _sorted_unique(cls, value: list[Decimal]) -> list[Decimal]:
        # Thresholds are keyed by value: 0.8 and 0.80 are one threshold, notified once.
        unique: dict[Decimal, Decimal] = {}
        for fraction in value:
            unique.setdefault(fraction, fraction)
        return sorted(unique.values())


Entitlement = Annotated[BooleanEntitlement | StaticEntitlement | MeteredEntitlement, Field(discriminator="type")]
AnyEntitlement = BooleanEntitlement | StaticEntitlement | MeteredEntitlement


class EntitledPlan(Plan):
    """A catalog plan: its prices (all rating reads) and the features it grants."""

    entitlements: list[Entitlement] = Field(default_factory=list)

    @field_validator("entitlements")
    @classmethod
    def _unique_features(cls, entitlements: list[AnyEntitlement]) -> list[AnyEntitlement]:
        features = [e.feature for e in entitlements]
        dupes = sorted({f for f in features if features.count(f) > 1})
        if dupes:
            raise ValueError(f"duplicate entitlement features: {', '.join(dupes)}")
        return entitlements


class _HasGroupBy(Protocol):
    @property
    def group_by(self) -> Mapping[str, str]: ...


def entitlement_problems(plans: Iterable[EntitledPlan], meters: Mapping[str, _HasGroupBy]) -> list[str]:
    """Metered entitlements whose meter, or a dimension of whose filter, the catalog does not define."""
    problems = []
    for plan in plans:
        for entitlement in plan.entitlements:
            if not isinstance(entitlement, MeteredEntitlement):
                continue
            where = f"plan {plan.key}, entitlement {entitlement.feature}"
            meter = meters.get(entitlement.meter)
            if meter is None:
                problems.append(f"{where}: unknown meter {entitlement.meter!r}")
                continue
            unknown = sorted(set(entitlement.filter) - set(meter.group_by))
            if unknown:
                problems.append(f"{where}: meter {entitlement.meter} has no dimension {', '.join(unknown)}")
    return problems


def decimal_text(value: Decimal) -> str:
    """A plain decimal string (``100000``, not ``1E+5``) for JSON and ids."""
    text = plain_decimal(value)
    return "0" if text == "-0" else text
