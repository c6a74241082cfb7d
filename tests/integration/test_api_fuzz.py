"""Schemathesis against a live worker: for every operation of schemas/openapi.yaml, requests
generated from the document (valid ones, and ones that break it) never get a 5xx other than
the documented 503s, and every JSON answer fits the document."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from bastionary.devstack.broker import free_port

from .dunning_helpers import wait_for
from .openapi_contract import assert_matches

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SCHEMA = schemathesis.openapi.from_path(Path(__file__).resolve().parents[2] / "schemas" / "openapi.yaml")
CATALOG = Path(__file__).resolve().parents[1] / "fixtures" / "billing_catalog.yaml"
KEY = "fuzz-key-0123456789"
EXAMPLES = 25  # per operation and mode: about 950 requests
DOCUMENTED_503 = {"not_ready", "broker_unavailable", "unavailable"}


def owner_known(base: str) -> bool:
    request = urllib.request.Request(f"{base}/v1/customers/probe/entitlements")
    request.add_header("Authorization", f"Bearer {KEY}")
    try:
        urllib.request.urlopen(request, timeout=5)
    except urllib.error.HTTPError as error:
        return error.code != 503
    return True


def test_no_operation_answers_a_server_error(stack):
    port = free_port()
    stack.start_worker("w1", BASTIONARY_CATALOG=str(CATALOG), BASTIONARY_API_KEYS=KEY, BASTIONARY_WEB_PORT=str(port))
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: urllib.request.urlopen(f"{base}/healthz", timeout=5).status == 200, 90, "the worker")
    wait_for(lambda: owner_known(base), 90, "the partitions' owner")
    failures: list[str] = []
    counted = 0
    for result in SCHEMA.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))  # fmt: skip
            @given(case=operation.as_strategy(generation_mode=mode))
            def probe(case) -> None:
                nonlocal counted
                headers = {"Authorization": f"Bearer {KEY}"}
                response = case.call(base_url=base, headers=headers, timeout=30)
                counted += 1
                status = response.status_code
                kind = (response.headers.get("content-type") or [""])[0]  # schemathesis: lowercase names, lists
                is_json = kind.startswith("application/json")
                body = response.json() if is_json else None
                if status >= 400 and not is_json:
                    failures.append(
                        f"{case.method} {response.request.url} -> {status} as {kind!r}: {response.text[:200]}"
                    )
                if status >= 500 and not (status == 503 and body and body["error"]["code"] in DOCUMENTED_503):
                    failures.append(f"{case.method} {response.request.url} -> {status}: {response.text[:300]}")
                elif is_json and status in (200, 202, 400, 401, 403, 404, 413, 415, 422):
                    path = response.request.path_url
                    try:
                        assert_matches(case.method, path, status, body)
                    except AssertionError as mismatch:
                        failures.append(f"{case.method} {path} -> {status}: {str(mismatch)[:300]}")

            try:
                probe()
            except Unsatisfiable:  # nothing to break: e.g. /healthz has no parameters
                assert mode is GenerationMode.NEGATIVE, operation.label
    assert counted > 500
    assert not failures, "\n".join(failures[:20])
