"""Checks a live HTTP response against schemas/openapi.yaml."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DOCUMENT = yaml.safe_load((Path(__file__).resolve().parents[2] / "schemas" / "openapi.yaml").read_text())
URI = "urn:bastionary:openapi"
REGISTRY = Registry().with_resource(URI, Resource.from_contents(DOCUMENT, default_specification=DRAFT202012))


def _template(path: str) -> str:
    for template in DOCUMENT["paths"]:
        pattern = "^" + re.sub(r"\{[^}]+\}", r"[^/]+", template) + "$"
        if re.match(pattern, path.split("?")[0]):
            return template
    raise AssertionError(f"{path} is not in the OpenAPI document")


def _anchored(schema):
    """The schema with its document-relative references made absolute (to the document)."""
    if isinstance(schema, dict):
        return {k: URI + v if k == "$ref" and v.startswith("#") else _anchored(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_anchored(item) for item in schema]
    return schema


def assert_matches(method: str, path: str, status: int, body) -> None:
    """The documented response for (method, path, status) exists and ``body`` fits its schema."""
    template = _template(path)
    responses = DOCUMENT["paths"][template][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {template} answered {status}, which is not documented"
    response = responses[str(status)]
    if "$ref" in response:
        response = DOCUMENT["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    schema = _anchored(response["content"]["application/json"]["schema"])
    validator = Draft202012Validator(schema, registry=REGISTRY)
    errors = [e.message for e in validator.iter_errors(body)]
    assert not errors, f"{method} {path} {status}: {errors[:3]} in {body}"
