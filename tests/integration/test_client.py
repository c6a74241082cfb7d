"""The Python client against a real worker: the README's examples run as they are written,
and what they track lands exactly once, over HTTP and straight to Kafka."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import urllib.request
from decimal import Decimal
from pathlib import Path

import pytest

from bastionary.client import AsyncClient, Client
from bastionary.devstack.broker import free_port

from .dunning_helpers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
README = Path(__file__).resolve().parents[2] / "README.md"
KEY = "client-test-key-123"


def readme_examples(url: str) -> list[str]:
    """The README's client examples (the quick start's, then the API section's), pointed at ``url``."""
    text = README.read_text()
    blocks = []
    for heading in ("## Two commands", "## HTTP API and the Python client"):
        section = text[text.index(heading) :]
        section = section[: section.index("\n## ", 1)]
        blocks += re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    return [block.replace("http://localhost:6066", url).replace("dev-key-123", KEY) for block in blocks]


def subscribed(port: int, customer: str) -> bool:
    """The owner of the customer's partition has read its subscription (checks answer 200)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/customers/{customer}/entitlements")
    request.add_header("Authorization", f"Bearer {KEY}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status == 200
    except Exception:
        return False


def test_the_readme_examples_run_and_their_usage_lands_once(stack):
    port = free_port()
    stack.start_worker("w1", BASTIONARY_API_KEYS=KEY, BASTIONARY_WEB_PORT=str(port))
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: urllib.request.urlopen(f"{url}/healthz", timeout=5).status == 200, 90, "the worker")
    with Client(url, api_key=KEY) as bc:
        bc.create_subscription("sub-1", "cust-1", "pro", start="2026-11-01T00:00:00Z")
    wait_for(lambda: subscribed(port, "cust-1"), 90, "cust-1's subscription")
    examples = readme_examples(url)
    assert len(examples) == 3
    env = stack.env()
    for example in examples:
        run = subprocess.run([sys.executable, "-c", example], env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
    printed = run.stdout  # the async example lists cust-2's invoices: none yet
    assert printed.strip() == "[]"
    # The async example's ids are fixed: running it again counts nothing twice.
    again = subprocess.run([sys.executable, "-c", examples[-1]], env=env, capture_output=True, timeout=120)
    assert again.returncode == 0, again.stderr
    per_customer = "SELECT customer_id, count() FROM usage_events FINAL GROUP BY customer_id ORDER BY customer_id"
    # Two for cust-1 (the quick start's and the API section's, each with a fresh id), three for cust-2.
    wait_for(lambda: stack.query(per_customer) == [("cust-1", 2), ("cust-2", 3)], 60, "the tracked events")
    assert stack.query("SELECT count() FROM usage_events")[0][0] == 5

    with Client(url, api_key=KEY) as bc:
        tokens = bc.usage("llm_tokens", customer="cust-1")
        assert [row.value for row in tokens.data] == [Decimal(1624)]
        assert bc.check("cust-1", "api_calls").has_access
        assert [s.plans[0].plan for s in bc.subscriptions("cust-1").subscriptions] == ["pro"]


def test_the_client_publishes_straight_to_kafka(stack):
    stack.start_worker("w1")

    async def track() -> None:
        async with AsyncClient(bootstrap=stack.bootstrap, topic=stack.usage_topic, batch_size=7) as bc:
            for n in range(50):
                await bc.track_usage(f"cust-{n % 40 % 3}", "api.request", {"method": "GET"}, id=f"k-{n % 40}")

    asyncio.run(track())  # ids k-0..k-9 are sent twice: 40 distinct events
    wait_for(lambda: stack.query("SELECT count() FROM usage_events FINAL")[0][0] == 40, 90, "the events")
    assert stack.query("SELECT count() FROM usage_events")[0][0] == 40
