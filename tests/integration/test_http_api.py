"""The HTTP API end to end on the real broker and ClickHouse: usage posted over HTTP lands
exactly once (a retried batch, a batch with bad members), every read agrees with the CLI
and ClickHouse, the upcoming invoice is the invoice later issued, billing inputs written
over HTTP reach their tables once per Idempotency-Key, and scoped keys keep to their scope
and customer. Every answer is checked against schemas/openapi.yaml."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from bastionary.apikeys import new_key
from bastionary.catalog import load_catalog
from bastionary.devstack.broker import free_port
from bastionary.storage.reports import meter_usage
from tests.conftest import BIN

from .dunning_helpers import wait_for
from .openapi_contract import assert_matches

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CATALOG = Path(__file__).resolve().parents[1] / "fixtures" / "billing_catalog.yaml"
ADMIN = "admin-key-0123456789"
BATCH = "application/cloudevents-batch+json"


class Api:
    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"

    def call(self, method: str, path: str, key: str | None = ADMIN, body=None, content_type=None, headers=None):
        """(status, JSON body), checked against the OpenAPI document whatever the status."""
        data = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if key:
            request.add_header("Authorization", f"Bearer {key}")
        if data is not None:
            request.add_header("Content-Type", content_type or "application/json")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, raw, kind = response.status, response.read(), response.headers.get_content_type()
        except urllib.error.HTTPError as error:
            status, raw, kind = error.code, error.read(), error.headers.get_content_type()
        if kind != "application/json":
            return status, raw.decode()
        answer = orjson.loads(raw)
        assert_matches(method, path, status, answer)
        return status, answer

    def get(self, path: str, key: str | None = ADMIN):
        return self.call("GET", path, key)

    def post(self, path: str, body, key: str | None = ADMIN, content_type=None, headers=None):
        return self.call("POST", path, key, body, content_type, headers)


def event(customer: str, event_id: str, tokens, when: datetime, model: str = "gpt-4") -> dict:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "http-test",
        "type": "llm.completion",
        "subject": customer,
        "time": when.isoformat(),
        "data": {"tokens": tokens, "model": model},
    }


def cli_json(stack, *args: str) -> list[dict]:
    out = subprocess.run(
        [str(BIN), *args, "--format", "json"], env=stack.env(), capture_output=True, check=True, timeout=60
    )
    return orjson.loads(out.stdout)


def test_http_api_end_to_end(stack, tmp_path):
    keys = {}
    lines = []
    for name, scopes, customer in (
        ("ingest", ["ingest"], None),
        ("reader", ["read"], None),
        ("portal-a", ["ingest", "read", "write"], "cust-a"),
    ):
        keys[name], entry = new_key(name, scopes, customer)
        lines.append(entry.model_dump_json())
    key_file = tmp_path / "keys.jsonl"
    key_file.write_text("\n".join(lines) + "\n")
    port = free_port()
    # The API's reads as a read-only ClickHouse user, as production should run them.
    reader = {"BASTIONARY_CLICKHOUSE_READER_DSN": stack.reader_url} if stack.reader_url else {}
    stack.start_worker(
        "w1",
        **reader,
        BASTIONARY_CATALOG=str(CATALOG),
        BASTIONARY_API_KEYS=ADMIN,
        BASTIONARY_API_KEY_FILE=str(key_file),
        BASTIONARY_WEB_PORT=str(port),
        BASTIONARY_RATING_GRACE="PT0S",
        BASTIONARY_RATING_INTERVAL="PT1S",
    )
    api = Api(port)
    wait_for(lambda: api.get("/healthz")[0] == 200, 90, "the worker")
    if stack.reader_url:  # the API reads below go through a user that cannot write
        import clickhouse_connect

        reader_client = clickhouse_connect.get_client(dsn=stack.reader_url, compress=False)
        with pytest.raises(Exception, match=r"(?i)readonly|read-only|not allowed"):
            reader_client.command("CREATE TABLE t (x UInt8) ENGINE = Log")

    # -- billing inputs over HTTP: a subscription from this minute, created twice (a retry) --
    # The first period is one minute; the preview below must come before it ends.
    if datetime.now(UTC).second > 30:
        time.sleep(61 - datetime.now(UTC).second)
    start = datetime.now(UTC).replace(second=0, microsecond=0)
    subscription = {"subscription_id": "sub-a", "customer_id": "cust-a", "plan": "pro", "start": start.isoformat()}
    retry = {"Idempotency-Key": "create-sub-a"}
    first = api.post("/v1/subscriptions", subscription, headers=retry)
    again = api.post("/v1/subscriptions", subscription, headers=retry)
    assert first[0] == again[0] == 202 and first[1]["id"] == again[1]["id"]
    reused = api.post("/v1/subscriptions", subscription | {"plan": "team"}, headers=retry)
    assert reused[0] == 422 and reused[1]["error"]["code"] == "idempotency_key_reused"
    grant = {"grant_id": "g-a", "customer_id": "cust-a", "amount": "5.00", "currency": "USD"}
    assert api.post("/v1/credit-grants", grant | {"effective_at": start.isoformat()})[0] == 202
    assert api.post("/v1/subscriptions", b"x" * 1_200_000)[1]["error"]["code"] == "record_too_large"
    record = {"customer_id": "cust-a", "name": "Acme GmbH", "email": "ap@acme.example", "tax_id": "DE123",
              "address": {"line1": "Hauptstr. 1", "city": "Berlin", "postal_code": "10115", "country": "DE"}}  # fmt: skip
    assert api.post("/v1/customers", record)[0] == 202
    bad_country = api.post("/v1/customers", record | {"address": {"country": "Germany"}})
    assert bad_country[0] == 400 and bad_country[1]["error"]["reason"] == "invalid_data"
    bad_plan = api.post("/v1/subscriptions", subscription | {"subscription_id": "sub-x", "plan": "nope"})
    assert bad_plan[0] == 400 and bad_plan[1]["error"]["reason"] == "unknown_plan"

    # -- usage over HTTP ----------------------------------------------------------------
    now = datetime.now(UTC)
    single = event("cust-a", "e-single", 1500, now)
    assert api.post("/v1/events", single, content_type="application/cloudevents+json")[1] == {
        "accepted": 1,
        "ids": ["e-single"],
    }
    batch = [event("cust-a" if i % 2 else "cust-b", f"e-{i}", i, now, "gpt-4" if i % 3 else "m") for i in range(60)]
    assert api.post("/v1/events", batch, content_type=BATCH)[0] == 202
    assert api.post("/v1/events", batch, content_type=BATCH)[0] == 202  # a retry: counts once
    mixed = [
        event("cust-b", "e-good-1", 7, now),
        event("cust-b", "e-bad-value", "many", now),  # not a number: the meter's value
        event("cust-b", "e-future", 1, now + timedelta(days=1)),
        {"id": "e-no-subject", "specversion": "1.0"},
        event("cust-b", "e-good-2", 8, now),
    ]
    status, answer = api.post("/v1/events", mixed, content_type=BATCH)
    assert status == 400 and answer["ids"] == ["e-good-1", "e-good-2"]
    assert [(r["index"], r["code"]) for r in answer["rejected"]] == [
        (1, "invalid_meter_value"),
        (2, "future_time"),
        (3, "not_cloudevent"),
    ]
    assert api.post("/v1/events", b"{not json", content_type=BATCH)[1]["error"]["code"] == "invalid_json"
    assert api.post("/v1/events", single, content_type="text/plain")[0] == 415

    expected = {"cust-a": Decimal(1500) + sum(i for i in range(60) if i % 2), "cust-b": Decimal(15)}
    expected["cust-b"] += sum(i for i in range(60) if not i % 2)
    wait_for(lambda: stack.query("SELECT count() FROM usage_events FINAL")[0][0] == 63, 60, "the posted events landed")
    assert stack.query("SELECT count(), uniqExact(source, event_id) FROM usage_events")[0] == (63, 63)

    stored = wait_for(lambda: (c := api.get("/v1/customers/cust-a"))[0] == 200 and c[1], 30, "the customer record")
    assert stored["name"] == "Acme GmbH" and stored["address"]["city"] == "Berlin" and not stored["tax_exempt"]
    assert api.get("/v1/customers/cust-nobody")[1]["error"]["code"] == "unknown_customer"

    # -- the upcoming invoice is the invoice the rater issues ---------------------------
    subs = wait_for(lambda: (s := api.get("/v1/customers/cust-a/subscriptions")[1])["subscriptions"] and s, 30, "sub")
    assert subs["subscriptions"][0]["plans"][0]["plan"] == "pro"
    assert stack.query("SELECT count() FROM subscriptions FINAL WHERE subscription_id = 'sub-a'")[0][0] == 1
    balance = wait_for(lambda: (b := api.get("/v1/customers/cust-a/credits")[1])["grants"] and b, 30, "the grant")
    assert balance["balances"] == [
        {"currency": "USD", "promotional": "5.00", "paid": "0.00", "carried": "0.00", "available": "5.00"}
    ]
    status, upcoming = api.get("/v1/customers/cust-a/upcoming-invoice")
    assert status == 200 and len(upcoming["invoices"]) == 1
    preview = upcoming["invoices"][0]
    assert preview["status"] == "preview" and preview["period_start"] == start.isoformat()
    assert Decimal(preview["credits_applied"]) == Decimal("5.00")

    # -- reads agree with ClickHouse and the CLI -----------------------------------------
    status, query = api.get("/v1/meters/llm_tokens/query")
    assert status == 200
    assert {row["customer_id"]: Decimal(row["value"]) for row in query["data"]} == expected
    meter = load_catalog(CATALOG).meter("llm_tokens")
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    # An hour ahead, but not past midnight: the events are today's, and a later `to` would end
    # the last window with data at midnight rather than at `to` (this failed in the last hour
    # of a UTC day).
    until = min((now + timedelta(hours=1)).replace(microsecond=0), day + timedelta(days=1))
    frm, to = (day - timedelta(days=29)).isoformat(), until.isoformat()
    path = f"/v1/meters/llm_tokens/query?customer=cust-a&window=day&group_by=model&from={frm}&to={to}"
    status, windows = api.get(path.replace("+00:00", "Z"))
    assert status == 200
    direct = meter_usage(
        stack.client, meter, "cust-a", datetime.fromisoformat(frm), datetime.fromisoformat(to), "day", ["model"]
    )
    assert windows["data"] == direct
    # The partial last window ends at `to`, moved up to a minute's start (rollups count minutes).
    last = datetime.fromisoformat(to)
    if last.second or last.microsecond:
        last = last.replace(second=0, microsecond=0) + timedelta(minutes=1)
    assert windows["data"][-1]["window_end"] == last.isoformat()
    cli = cli_json(stack, "usage", "llm_tokens", "--customer", "cust-a", "--window", "DAY", "--group-by", "model",
                    "--from", frm, "--to", to)  # fmt: skip
    assert cli == direct
    filtered = api.get("/v1/meters/llm_tokens/query?filter[model]=m")[1]["data"]
    assert {r["customer_id"]: Decimal(r["value"]) for r in filtered} == {
        "cust-a": sum(i for i in range(60) if i % 2 and not i % 3),
        "cust-b": sum(i for i in range(60) if not i % 2 and not i % 3),
    }
    assert api.get("/v1/meters/nope/query")[0] == 404
    assert api.get("/v1/meters/llm_tokens/query?window=week")[0] == 400
    assert api.get(f"/v1/meters/llm_tokens/query?from={to}&to={frm}".replace("+", "%2B"))[0] == 400

    # -- ... and the rater issues exactly the preview
    issued = wait_for(lambda: (i := api.get(f"/v1/invoices/{preview['invoice_id']}"))[0] == 200 and i[1], 150, "rated")
    assert issued == preview | {"status": "finalized"}
    listed = api.get("/v1/invoices?customer=cust-a")[1]["invoices"]
    assert [i["invoice_id"] for i in listed] == [preview["invoice_id"]]
    assert cli_json(stack, "invoices", "--customer", "cust-a") == [issued]  # the CLI's JSON: whole documents
    assert (listed[0]["total"], listed[0]["due_at"]) == (issued["total"], issued["due_at"])
    at = "2030-01-01T00:00:00+00:00"
    grants = api.get(f"/v1/customers/cust-a/credits?at={at}".replace("+", "%2B"))[1]["grants"]
    assert grants == cli_json(stack, "credits", "balance", "cust-a", "--at", at)
    assert grants[0]["remaining"] == "0.00"  # the invoice drew the whole grant
    html = api.get(f"/v1/invoices/{preview['invoice_id']}/html")
    assert html[0] == 200 and preview["invoice_id"] in html[1]
    ledger = api.get("/v1/customers/cust-a/credits/ledger")[1]["movements"]
    assert sorted(m["kind"] for m in ledger) == ["applied", "granted"]

    # -- keys keep to their scopes and their customer -----------------------------------
    assert api.get("/v1/invoices", key=None)[0] == 401
    assert api.get("/v1/invoices", key="wrong")[1]["error"]["code"] == "invalid_api_key"
    assert api.get("/v1/invoices", key=keys["ingest"])[1]["error"]["code"] == "missing_scope"
    assert api.post("/v1/events", single, key=keys["reader"])[1]["error"]["code"] == "missing_scope"
    assert api.post("/v1/subscriptions", subscription, key=keys["reader"])[0] == 403
    portal = keys["portal-a"]
    assert api.get("/v1/customers/cust-a/credits", key=portal)[0] == 200
    assert api.get("/v1/customers/cust-a", key=portal)[0] == 200
    for other in ("/v1/customers/cust-b", "/v1/customers/cust-b/credits", "/v1/customers/cust-b/subscriptions",
                  "/v1/customers/cust-b/upcoming-invoice", "/v1/customers/cust-b/entitlements",
                  "/v1/meters/llm_tokens/query?customer=cust-b", "/v1/invoices?customer=cust-b"):  # fmt: skip
        status, answer = api.get(other, key=portal)
        assert (status, answer["error"]["code"]) == (403, "other_customer"), other
    own = api.get("/v1/meters/llm_tokens/query", key=portal)[1]
    assert {row["customer_id"] for row in own["data"]} == {"cust-a"}
    assert [i["customer_id"] for i in api.get("/v1/invoices", key=portal)[1]["invoices"]] == ["cust-a"]
    status, answer = api.post("/v1/events", [event("cust-b", "e-portal", 1, now)], key=portal, content_type=BATCH)
    assert status == 400 and answer["rejected"][0]["code"] == "other_customer" and answer["ids"] == []
    other_sub = subscription | {"subscription_id": "sub-b", "customer_id": "cust-b"}
    assert api.post("/v1/subscriptions", other_sub, key=portal)[1]["error"]["code"] == "other_customer"
    assert api.post("/v1/customers", record | {"customer_id": "cust-b"}, key=portal)[0] == 403
    response = {
        "specversion": "1.0",
        "id": "resp-1",
        "source": "portal",
        "type": "bastionary.dunning.disputed.v1",
        "time": now.isoformat(),
        "data": {"invoice_id": "inv-of-someone-else"},
    }
    assert api.post("/v1/dunning/responses", response, key=portal)[1]["error"]["code"] == "other_customer"
    # A customer's promise or dispute pauses dunning from its time: dated back, it would erase
    # the days its invoice was overdue.
    backdated = response | {"id": "resp-2", "time": (now - timedelta(days=30)).isoformat()}
    status, answer = api.post("/v1/dunning/responses", backdated, key=portal)
    assert (status, answer["error"]["code"], answer["error"]["reason"]) == (400, "invalid_event", "backdated_time")
    assert stack.query("SELECT count() FROM usage_events FINAL WHERE event_id = 'e-portal'")[0][0] == 0
