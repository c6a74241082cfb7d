"""Dunning policies, as written in the catalog's ``dunning:`` section.

Each step's ``after`` counts from the invoice's ``due_at``, minus the time the case spent
paused (a promise to pay, a dispute), so a lapsed promise resumes the schedule where it
stood instead of firing every step it covered at once. A promise pauses for at most the
policy's ``max_promise``: ``promised_by: 9999-12-31`` must not stop dunning for good.
"""

from __future__ import annotations

import itertools
from datetime import timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from bastionary.settings import parse_iso_duration

Duration = Annotated[timedelta, BeforeValidator(parse_iso_duration)]


class Action(StrEnum):
    REMIND = "remind"
    FINAL_NOTICE = "final_notice"
    SUSPEND = "suspend"
    MARK_UNCOLLECTIBLE = "mark_uncollectible"


# Steps that change the case's state take effect even when downtime collapses them; steps
# that only notify are collapsed to the latest one.
STATE_ACTIONS = {Action.SUSPEND, Action.MARK_UNCOLLECTIBLE}
CHANNELS = ("email", "webhook")
# How far past its response a promise to pay may reach, when the policy does not say (or
# no policy applies: the promise is still recorded, and the bound still holds).
DEFAULT_MAX_PROMISE = timedelta(days=30)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Step(_Model):
    after: Duration
    action: Action
    channels: tuple[str, ...] = ()
    template: str | None = None

    @field_validator("after")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("after must not be negative (it counts from due_at)")
        return value

    @field_validator("channels")
    @classmethod
    def _known_channels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - set(CHANNELS))
        if unknown:
            raise ValueError(f"unknown channels {unknown}; known: {', '.join(CHANNELS)}")
        if len(set(value)) != len(value):
            raise ValueError("channels repeat")
        return value


class AppliesTo(_Model):
    plans: tuple[str, ...] = ()


class Policy(_Model):
    key: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    applies_to: AppliesTo | None = None
    min_amount_due: Decimal = Field(default=Decimal("0.01"), gt=0, allow_inf_nan=False)
    max_promise: Duration = DEFAULT_MAX_PROMISE
    steps: tuple[Step, ...] = Field(min_length=1)

    @field_validator("max_promise")
    @classmethod
    def _promise_possible(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("max_promise must be longer than zero (promised_by is always after the response)")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> Policy:
        afters = [s.after for s in self.steps]
        if any(a >= b for a, b in itertools.pairwise(afters)):
            raise ValueError("steps must have strictly increasing 'after'")
        if any(s.action is Action.MARK_UNCOLLECTIBLE for s in self.steps[:-1]):
            raise ValueError("mark_uncollectible ends a policy: it must be the last step")
        return self


class DunningConfig(_Model):
    policies: tuple[Policy, ...] = ()

    @model_validator(mode="after")
    def _one_default(self) -> DunningConfig:
        keys = [p.key for p in self.policies]
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate policy keys")
        defaults = [p.key for p in self.policies if p.applies_to is None]
        if len(defaults) > 1:
            raise ValueError(f"more than one default policy (no applies_to): {', '.join(defaults)}")
        claimed: dict[str, str] = {}
        for policy in self.policies:
            for plan in policy.applies_to.plans if policy.applies_to else ():
                if plan in claimed:
                    raise ValueError(f"plan {plan!r} is in policies {claimed[plan]} and {policy.key}")
                claimed[plan] = policy.key
        return self

    def policy_for(self, plan: str) -> Policy | None:
        """The policy naming ``plan``, else the default one, else None (not dunned)."""
        default = None
        for policy in self.policies:
            if policy.applies_to is None:
                default = policy
            elif plan in policy.applies_to.plans:
                return policy
        return default

    def policy(self, key: str) -> Policy | None:
        return next((p for p in self.policies if p.key == key), None)

    def max_promise_for(self, plan: str) -> timedelta:
        """How far past its response a promise on an invoice of ``plan`` may reach."""
        policy = self.policy_for(plan)
        return policy.max_promise if policy is not None else DEFAULT_MAX_PROMISE
