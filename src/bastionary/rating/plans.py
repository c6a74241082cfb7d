"""Plans and prices, as written in the catalog YAML.

A catalog plan also lists the features it grants: :class:`bastionary.entitlements.spec.EntitledPlan`
adds them, so rating never reads entitlements.
"""

from __future__ import annotations

import itertools
from datetime import timedelta
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bastionary.money import MINOR_UNITS
from bastionary.rating.periods import Interval

Money = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tier(_Model):
    up_to: Decimal | None  # inclusive upper bound in units; null = infinity (last tier only)
    unit_amount: Money = Decimal(0)
    flat_amount: Money = Decimal(0)


class _Price(_Model):
    key: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str = ""


class FlatPrice(_Price):
    model: Literal["flat"]
    amount: Money
    # arrears: on the period's own invoice, at its end. advance: on the invoice before the
    # period starts (the subscription's opening invoice for its first period, then each
    # period's invoice for the next), trued up on the period's own invoice (rater.py).
    billing_timing: Literal["arrears", "advance"] = "arrears"


class _MeteredPrice(_Price):
    meter: str
    filter: dict[str, str] = Field(default_factory=dict)


class PerUnitPrice(_MeteredPrice):
    model: Literal["per_unit"]
    unit_amount: Money


class _TieredPrice(_MeteredPrice):
    tiers: list[Tier] = Field(min_length=1)

    @field_validator("tiers")
    @classmethod
    def _ordered(cls, tiers: list[Tier]) -> list[Tier]:
        bounds = [t.up_to for t in tiers]
        if bounds[-1] is not None:
            raise ValueError("the last tier must have up_to: null")
        if any(b is None for b in bounds[:-1]):
            raise ValueError("only the last tier may have up_to: null")
        finite = [b for b in bounds[:-1] if b is not None]  # drops nothing (checked above); tells mypy so
        if any(b <= 0 for b in finite) or any(a >= b for a, b in itertools.pairwise(finite)):
            raise ValueError(f"tiers must have strictly increasing positive up_to bounds, got {finite}")
        return tiers


class GraduatedPrice(_TieredPrice):
    model: Literal["graduated"]


class VolumePrice(_TieredPrice):
    model: Literal["volume"]


class PackagePrice(_MeteredPrice):
    model: Literal["package"]
    package_size: Decimal = Field(gt=0)
    package_amount: Money


class PercentagePrice(_MeteredPrice):
    model: Literal["percentage"]
    rate: Decimal = Field(ge=0, le=1, description="fraction of the meter's value, e.g. 0.029")
    fixed_amount: Money = Decimal(0)  # per event
    min_amount: Money | None = None  # per period
    max_amount: Money | None = None

    @model_validator(mode="after")
    def _bounds(self) -> PercentagePrice:
        if self.min_amount is not None and self.max_amount is not None and self.min_amount > self.max_amount:
            raise ValueError("min_amount must not exceed max_amount")
        return self


Price = Annotated[
    FlatPrice | PerUnitPrice | GraduatedPrice | VolumePrice | PackagePrice | PercentagePrice,
    Field(discriminator="model"),
]
MeteredPrice = PerUnitPrice | GraduatedPrice | VolumePrice | PackagePrice | PercentagePrice


class PlanCreditLimit(_Model):
    """A plan's credit limit, in the plan's currency: ``amount``, and the shares of it that
    raise an alert. A customer record's own ``credit_limit`` wins over it."""

    amount: Annotated[Decimal, Field(gt=0, allow_inf_nan=False)]
    alert_at: list[Annotated[Decimal, Field(gt=0, lt=1, allow_inf_nan=False)]] = Field(
        default_factory=list, max_length=8
    )


class Plan(_Model):
    key: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    currency: str
    billing_interval: str = "P1M"
    payment_terms: str = "P14D"
    minimum_commitment: Money | None = None
    # False: a partial period (the first, a plan change, a cancellation) owes the whole flat
    # fee and the whole minimum commitment instead of their share of the time.
    prorate: bool = True
    # Progressive billing: an invoice as soon as the open period's usage charges (before tax
    # and credits) reach each amount, once per amount and period; the period's own invoice
    # then deducts what these billed.
    usage_thresholds: list[Annotated[Decimal, Field(gt=0, allow_inf_nan=False)]] = Field(default_factory=list)
    # The credit limit of a customer on this plan without one of its own (rating/spend.py).
    credit_limit: PlanCreditLimit | None = None
    prices: list[Price] = Field(default_factory=list)

    @field_validator("currency")
    @classmethod
    def _known_currency(cls, value: str) -> str:
        if value not in MINOR_UNITS:
            raise ValueError(f"unknown currency or no known minor unit: {value!r}")
        return value

    @field_validator("billing_interval")
    @classmethod
    def _interval(cls, value: str) -> str:
        # Anchors, changes and cancellations are cut at whole minutes, the resolution of the
        # usage rollups; a fixed length such as PT90S would start periods inside a minute,
        # whose usage the rollups cannot split.
        fixed = Interval.parse(value).fixed
        if fixed % timedelta(minutes=1):
            raise ValueError(f"a fixed billing interval must be a whole number of minutes: {value!r}")
        return value

    @field_validator("payment_terms")
    @classmethod
    def _terms(cls, value: str) -> str:
        from bastionary.settings import parse_iso_duration

        parse_iso_duration(value)
        return value

    @field_validator("prices")
    @classmethod
    def _unique_price_keys(cls, prices: list[Price]) -> list[Price]:
        keys = [p.key for p in prices]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"duplicate price keys: {', '.join(dupes)}")
        return prices

    @field_validator("usage_thresholds")
    @classmethod
    def _increasing(cls, thresholds: list[Decimal]) -> list[Decimal]:
        if any(a >= b for a, b in itertools.pairwise(thresholds)):
            raise ValueError(f"usage_thresholds must be strictly increasing, got {[str(t) for t in thresholds]}")
        return thresholds

    @model_validator(mode="after")
    def _threshold_precision(self) -> Plan:
        digits = MINOR_UNITS[self.currency]
        for threshold in self.usage_thresholds:
            if threshold != threshold.quantize(Decimal(1).scaleb(-digits)):
                raise ValueError(f"usage threshold {threshold} has more decimals than {self.currency} allows")
        limit = self.credit_limit
        if limit is not None and limit.amount != limit.amount.quantize(Decimal(1).scaleb(-digits)):
            raise ValueError(f"credit_limit {limit.amount} has more decimals than {self.currency} allows")
        if limit is not None and len(set(limit.alert_at)) != len(limit.alert_at):
            raise ValueError("credit_limit.alert_at repeats a share")
        return self

    @property
    def advance_prices(self) -> list[FlatPrice]:
        return [p for p in self.prices if isinstance(p, FlatPrice) and p.billing_timing == "advance"]

    @property
    def interval(self) -> Interval:
        return Interval.parse(self.billing_interval)
