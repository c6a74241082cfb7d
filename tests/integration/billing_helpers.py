"""What the billing integration tests share: a worker on one-minute periods with the HTTP
API, the start of a fresh minute, and the contracts the published messages must fit."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
from jsonschema import Draft202012Validator

from bastionary.devstack.broker import free_port
from bastionary.kafka import read_topic
from bastionary.rating.contracts import CONTRACTS, schema_for

from .dunning_helpers import wait_for
from .test_http_api import ADMIN, Api

# One metered price, 0.01 USD a token, negative corrections allowed; one-minute periods.
CATALOG = Path(__file__).resolve().parents[1] / "fixtures" / "carry_catalog.yaml"


def start_billing_worker(stack, grace: str = "PT0S") -> tuple[Api, dict[str, str]]:
    """Worker w1 rating every second with ``grace``; returns its API and its environment (to
    restart it the same way)."""
    env = {
        "BASTIONARY_CATALOG": str(CATALOG),
        "BASTIONARY_API_KEYS": ADMIN,
        "BASTIONARY_WEB_PORT": str(free_port()),
        "BASTIONARY_RATING_GRACE": grace,
        "BASTIONARY_RATING_INTERVAL": "PT1S",
    }
    stack.start_worker("w1", **env)
    api = Api(int(env["BASTIONARY_WEB_PORT"]))
    wait_for(lambda: api.get("/healthz")[0] == 200, 90, "the worker")
    return api, env


def fresh_minute(latest_second: int = 40) -> datetime:
    """The start of the current minute, waiting for the next one when fewer than
    ``60 - latest_second`` seconds are left (a period must not close mid-setup)."""
    if datetime.now(UTC).second > latest_second:
        time.sleep(61 - datetime.now(UTC).second)
    return datetime.now(UTC).replace(second=0, microsecond=0)


def invoice_events(stack) -> list[dict]:
    messages = asyncio.run(read_topic(stack.bootstrap, f"{stack.prefix}billing.invoices", idle_seconds=2.0))
    return [orjson.loads(m.value) for m in messages]


def fits_contract(event: dict) -> None:
    name = next(name for name, (types, _, _) in CONTRACTS.items() if event["type"] in types)
    validator = Draft202012Validator(schema_for(name), format_checker=Draft202012Validator.FORMAT_CHECKER)
    errors = [error.message for error in validator.iter_errors(event)]
    assert not errors, (event["type"], errors[:3])
