"""The entitlements OpenAPI document: structurally sane, and true to what the code returns."""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from bastionary.entitlements.auth import CUSTOMER_ID_PATTERN
from bastionary.entitlements.evaluate import REASONS, CustomerState, Decision, check, check_all
from bastionary.entitlements.overrides import Override
from bastionary.entitlements.spec import FEATURE_REGEX, EntitledPlan

DOCUMENT_PATH = Path(__file__).resolve().parents[2] / "schemas" / "openapi.yaml"
DOCUMENT = yaml.safe_load(DOCUMENT_PATH.read_text())
SCHEMAS = DOCUMENT["components"]["schemas"]
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
DOC_URI = "urn:bastionary:entitlements-openapi"
REGISTRY = Registry().with_resource(DOC_URI, Resource.from_contents(DOCUMENT, default_specification=DRAFT202012))

START = datetime(2024, 5, 1, tzinfo=UTC)
END = datetime(2024, 6, 1, tzinfo=UTC)
NOW = datetime(2024, 5, 15, tzinfo=UTC)
PLAN = EntitledPlan.model_validate(
    {
        "key": "pro",
        "currency": "USD",
        "entitlements": [
            {"feature": "sso", "type": "boolean"},
            {"feature": "audit_log", "type": "boolean", "enabled": False},
            {"feature": "seats", "type": "static", "config": {"max": 10, "roles": ["admin"]}},
            {"feature": "api_calls", "type": "metered", "meter": "api_requests", "limit": "1e5"},
            {"feature": "tokens", "type": "metered", "meter": "llm_tokens", "limit": "2.5", "soft": True},
        ],
    }
)


def state(plan=PLAN, suspended=False, **usage) -> CustomerState:
    return CustomerState("cust-1", plan, START, END, suspended, {k: Decimal(v) for k, v in usage.items()}, ())


def ref_validator(name: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"{DOC_URI}#/components/schemas/{name}"}, registry=REGISTRY)


def decision_validator() -> Draft202012Validator:
    schema = copy.deepcopy(SCHEMAS["Decision"])
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def walk(node, path=()):
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, (*path, index))


def resolve(pointer: str):
    assert pointer.startswith("#/"), pointer
    node = DOCUMENT
    for part in pointer[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


# --- structure -------------------------------------------------------------------------


def test_it_is_an_openapi_31_document():
    assert DOCUMENT["openapi"].startswith("3.1.")
    assert DOCUMENT["info"]["title"] and DOCUMENT["info"]["version"]
    assert set(DOCUMENT) <= {"openapi", "info", "jsonSchemaDialect", "servers", "paths", "webhooks", "components",
                             "security", "tags", "externalDocs"}  # fmt: skip


POSTS = {
    "/v1/events",
    "/v1/customers",
    "/v1/subscriptions",
    "/v1/subscriptions/{subscription_id}/change",
    "/v1/subscriptions/{subscription_id}/cancel",
    "/v1/credit-grants",
    "/v1/credit-purchases",
    "/v1/credit-grants/{grant_id}/void",
    "/v1/credit-notes",
    "/v1/payments",
    "/v1/dunning/responses",
}
GETS = {
    "/v1/meters/{meter}/query",
    "/v1/customers/{customer_id}",
    "/v1/invoices",
    "/v1/invoices/{invoice_id}",
    "/v1/invoices/{invoice_id}/html",
    "/v1/invoices/{invoice_id}/pdf",
    "/v1/credit-notes",
    "/v1/credit-notes/{credit_note_id}",
    "/v1/customers/{customer_id}/credits",
    "/v1/customers/{customer_id}/credits/ledger",
    "/v1/customers/{customer_id}/subscriptions",
    "/v1/customers/{customer_id}/upcoming-invoice",
    "/v1/customers/{customer_id}/entitlements/{feature}",
    "/v1/customers/{customer_id}/entitlements",
    "/healthz",
}


def test_it_has_the_documented_paths():
    paths = DOCUMENT["paths"]
    methods = {path: {"post"} & ({"post"} if path in POSTS else set()) | ({"get"} if path in GETS else set())
               for path in POSTS | GETS}  # fmt: skip
    assert {path: set(operations) for path, operations in paths.items()} == methods


def test_every_write_path_is_documented():
    from bastionary.worker.api.writes import WRITES

    assert {write.path for write in WRITES} | {"/v1/events", "/v1/dunning/responses"} == POSTS


def test_every_operation_is_complete():
    operation_ids = []
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            assert method in METHODS
            operation_ids.append(operation["operationId"])
            assert operation["responses"], (path, method)
            for status in operation["responses"]:
                assert status == "default" or (len(status) == 3 and status.isdigit())
            # Path templates and path parameters agree.
            params = [p if "$ref" not in p else resolve(p["$ref"]) for p in operation.get("parameters", [])]
            templated = {part[1:-1] for part in path.split("/") if part.startswith("{")}
            assert {p["name"] for p in params if p["in"] == "path"} == templated
            assert all(p["required"] for p in params if p["in"] == "path")
    assert len(operation_ids) == len(set(operation_ids))


def test_expected_responses():
    paths = DOCUMENT["paths"]
    single = paths["/v1/customers/{customer_id}/entitlements/{feature}"]["get"]["responses"]
    assert set(single) == {"200", "400", "401", "403", "404", "503"}
    assert single["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Decision"}
    listing = paths["/v1/customers/{customer_id}/entitlements"]["get"]["responses"]
    assert listing["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/EntitlementList"}
    assert "202" in paths["/v1/dunning/responses"]["post"]["responses"]
    assert paths["/healthz"]["get"]["security"] == []  # probes carry no key


def test_every_ref_resolves():
    refs = [node["$ref"] for _, node in walk(DOCUMENT) if isinstance(node, dict) and "$ref" in node]
    assert refs
    for ref in refs:
        assert resolve(ref) is not None


def test_bearer_security_applies_by_default():
    schemes = DOCUMENT["components"]["securitySchemes"]
    assert schemes == {"apiKey": {**schemes["apiKey"], "type": "http", "scheme": "bearer"}}
    assert DOCUMENT["security"] == [{"apiKey": []}]


def test_every_component_schema_is_a_valid_json_schema():
    for name in SCHEMAS:
        Draft202012Validator.check_schema(SCHEMAS[name])


def test_path_parameter_patterns_match_the_code():
    parameters = DOCUMENT["components"]["parameters"]
    assert parameters["CustomerId"]["schema"]["pattern"] == CUSTOMER_ID_PATTERN.pattern
    assert parameters["Feature"]["schema"]["pattern"] == FEATURE_REGEX
    assert SCHEMAS["Decision"]["properties"]["feature"]["pattern"] == FEATURE_REGEX


def test_error_codes_are_the_documented_ones():
    import re

    from bastionary.apikeys import AuthError
    from bastionary.ingest.errors import ErrorClass

    codes = set(SCHEMAS["ErrorBody"]["properties"]["code"]["enum"])
    api = Path(__file__).resolve().parents[2] / "src" / "bastionary" / "worker" / "api"
    answered = {
        code for path in api.glob("*.py") for code in re.findall(r'json_error\(\s*\d+,\s*"(\w+)"', path.read_text())
    }
    answered |= {code for path in api.glob("*.py") for code in re.findall(r'"code": "(\w+)"', path.read_text())}
    answered |= {AuthError(401, "").code, AuthError(403, "").code}
    # A request refused whole by the usage contract answers the record-level class.
    whole = {c.value for c in ErrorClass} - {"duplicate_conflict", "internal_error", "invalid_record_timestamp",
                                             "invalid_meter_value", "negative_value"}  # fmt: skip
    assert answered <= codes
    assert codes == answered | whole
    validator = ref_validator("Error")
    assert validator.is_valid({"error": {"code": "unknown_feature", "message": "no plan has feature 'x'"}})
    assert not validator.is_valid({"error": {"code": "teapot", "message": ""}})
    assert not validator.is_valid({"code": "unknown_feature", "message": ""})


def test_decision_schema_shape():
    schema = SCHEMAS["Decision"]
    keys = ["feature", "has_access", "type", "usage", "limit", "balance", "soft", "reset_at", "reason", "config"]
    assert schema["required"] == keys and list(schema["properties"]) == keys
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]["reason"]["enum"]) == {*REASONS, None}
    assert set(schema["properties"]["type"]["enum"]) == {"boolean", "static", "metered", None}
    assert "$ref" not in str(schema)  # stands alone


# --- the code's output validates -------------------------------------------------------

grant = Override("e", "o", "cust-1", "beta", START, None, enabled=True)
off = Override("e2", "o2", "cust-1", "sso", START, None, enabled=False)
DECISIONS = {
    "boolean": check(state(), "sso", NOW),
    "boolean granted": check(CustomerState("c", PLAN, START, END, False, {}, (grant,)), "beta", NOW),
    "static": check(state(), "seats", NOW),
    "metered": check(state(api_calls="81234.5"), "api_calls", NOW),
    "metered soft over": check(state(tokens="7.25"), "tokens", NOW),
    "exhausted": check(state(api_calls=100000), "api_calls", NOW),
    "suspended metered": check(state(suspended=True, api_calls=3), "api_calls", NOW),
    "suspended static": check(state(suspended=True), "seats", NOW),
    "credit limit metered": check(replace(state(api_calls=3), credit_limited=True), "api_calls", NOW),
    "credit limit static": check(replace(state(), credit_limited=True), "seats", NOW),
    "disabled plan": check(state(), "audit_log", NOW),
    "disabled override": check(CustomerState("c", PLAN, START, END, False, {}, (off,)), "sso", NOW),
    "not_in_plan": check(state(), "sla", NOW),
    "no_subscription": check(state(plan=None), "sso", NOW),
    "negative usage": check(state(api_calls="-3"), "api_calls", NOW),
}


def test_the_corpus_covers_every_reason_and_type():
    decisions = DECISIONS.values()
    assert {d.reason for d in decisions} == {*REASONS, None}
    assert {d.type for d in decisions} == {"boolean", "static", "metered", None}
    assert {d.has_access for d in decisions} == {True, False}


@pytest.mark.parametrize("name", DECISIONS)
def test_decisions_validate(name):
    errors = [e.message for e in decision_validator().iter_errors(DECISIONS[name].to_json())]
    assert errors == []


def test_the_entitlement_list_validates():
    body = {"customer_id": "cust-1", "entitlements": [d.to_json() for d in check_all(state(api_calls=5), NOW)]}
    assert list(ref_validator("EntitlementList").iter_errors(body)) == []


@pytest.mark.parametrize(
    "change",
    [
        {"extra": 1},
        {"has_access": "yes"},
        {"type": "flag"},
        {"reason": "because"},
        {"usage": 5},
        {"usage": "1e5"},
        {"limit": "-1"},
        {"soft": "false"},
        {"reset_at": "tomorrow"},
        {"config": []},
        {"reason": None, "has_access": False},  # a denial needs a reason
        {"reason": "exhausted", "has_access": True},  # and access has none
    ],
)
def test_the_schema_rejects_what_the_code_never_returns(change):
    body = {**DECISIONS["metered"].to_json(), **change}
    assert not decision_validator().is_valid(body)


def test_a_missing_key_is_rejected():
    body = DECISIONS["static"].to_json()
    for key in body:
        assert not decision_validator().is_valid({k: v for k, v in body.items() if k != key})


def test_dunning_response_body_schema():
    validator = ref_validator("CloudEvent")
    event = {"specversion": "1.0", "id": "r-1", "source": "//portal", "type": "bastionary.dunning.promise_to_pay.v1",
             "time": "2024-05-01T00:00:00Z", "data": {"invoice_id": "inv-1"}}  # fmt: skip
    assert validator.is_valid(event)
    assert not validator.is_valid({**event, "type": "bastionary.subscription.created.v1"})
    assert not validator.is_valid({k: v for k, v in event.items() if k != "id"})
    assert ref_validator("Accepted").is_valid({"accepted": True, "id": "r-1"})


def test_times_in_decisions_are_utc_z():
    shifted = CustomerState("c", PLAN, START, END.astimezone(timezone(timedelta(hours=-5))), False, {}, ())
    assert check(shifted, "api_calls", NOW).to_json()["reset_at"] == "2024-06-01T00:00:00Z"
    assert Decision("x", True).to_json()["reset_at"] is None


def customer_answer(row: tuple) -> dict:
    """What GET /v1/customers/{id} answers for a stored ``customers`` row."""
    from bastionary.storage.reports import InvoiceReports

    class Client:
        def query(self, sql, parameters):
            return type("Result", (), {"result_rows": [row]})()

    return InvoiceReports(Client()).customer("cust-1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("auto_topup", "credit_limit", "stored"),
    [
        (  # exponents and too few decimals, as the topic's contract and the parser accept them
            [
                {"currency": "USD", "threshold": "1e2", "amount": "5E+1"},
                {"currency": "JPY", "threshold": 1000, "amount": "1E+4"},
            ],
            {"currency": "KWD", "amount": "1e3", "alert_at": ["8E-1", "0.50"]},
            ("100.00", "50.00", "1000", "10000", "1000.000", ["0.5", "0.8"]),
        ),
        (
            [{"currency": "USD", "threshold": 100.5, "amount": 50}],
            {"currency": "USD", "amount": 1000, "alert_at": [0.8]},
            ("100.50", "50.00", "1000.00", ["0.8"]),
        ),
    ],
)
def test_a_customer_record_answers_its_amounts_as_the_api_documents_them(auto_topup, credit_limit, stored):
    import orjson

    from bastionary.rating.customers import CUSTOMER_UPSERTED, customer_row, customer_terms, parse_customer

    data = {"customer_id": "cust-1", "auto_topup": auto_topup, "credit_limit": credit_limit}
    value = orjson.dumps({"specversion": "1.0", "id": "c-1", "source": "//crm", "type": CUSTOMER_UPSERTED,
                          "time": "2026-11-01T00:00:00Z", "data": data})  # fmt: skip
    envelope, parsed = parse_customer(value)
    row = customer_row(envelope, parsed, NOW)
    stored_row = (*row[:6], row.auto_topup, row.credit_limit, NOW)
    answer = customer_answer(stored_row)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in ref_validator("Customer").iter_errors(answer)]
    assert not errors
    limit = answer["credit_limit"]
    amounts = [value for rule in answer["auto_topup"] for value in (rule["threshold"], rule["amount"])]
    assert (*amounts, limit["amount"], limit["alert_at"]) == stored
    # what rating reads of the row is what the event said
    terms = customer_terms(*row[1:6], row.auto_topup, row.credit_limit)
    assert terms.topups == {rule.currency: (rule.threshold, rule.amount) for rule in parsed.auto_topup}
    assert terms.credit_limit == parsed.credit_limit


def test_a_customer_row_stored_before_amounts_were_formatted_still_reads():
    from bastionary.rating.customers import customer_terms

    topups, limit = (
        '[{"currency":"USD","threshold":"1E+2","amount":"5E+1"}]',
        '{"currency":"USD","amount":"1E+3","alert_at":["0.8"]}',
    )
    terms = customer_terms("Acme", "", "{}", "", False, topups, limit)
    assert terms.topups == {"USD": (Decimal(100), Decimal(50))}
    assert terms.credit_limit is not None and terms.credit_limit.amount == 1000


def test_operations_document_what_the_code_answers_and_accepts():
    import inspect
    import re

    from bastionary.worker.api import reads
    from bastionary.worker.api.writes import PAYMENT_OUTCOMES

    paths = DOCUMENT["paths"]
    pdf = paths["/v1/invoices/{invoice_id}/pdf"]["get"]["responses"]["200"]["content"]
    assert list(pdf) == re.findall(r'content_type="(application/pdf)"', inspect.getsource(reads))
    assert set(SCHEMAS["PaymentInput"]["properties"]["outcome"]["enum"]) == set(PAYMENT_OUTCOMES)
    assert set(paths["/healthz"]["get"]["responses"]) == {"200", "503"}


def test_both_health_answers_fit_the_schema():
    from bastionary.metering.sink import PartitionStatus
    from bastionary.worker.api.health import health_report

    class Sink:
        def status(self):
            return {("usage.events", 0): PartitionStatus(1, 9, 0, 90.0, 0.0, False)}

    class Consumer:
        def highwater(self, tp):
            return 50

    now = time.monotonic()
    for waiting, status in ((0, "ok"), (40, "unhealthy")):
        consumer = Consumer() if waiting else None
        report = health_report("w1", Sink(), now, consumer, started_at=now, stall_after=60, broker_silence=10)
        assert report["status"] == status
        assert schema_errors_of("Health", report) == []


def schema_errors_of(name: str, value) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in ref_validator(name).iter_errors(value)]
