"""The files in ``schemas/``: each a valid Draft 2020-12 JSON Schema, and none left unchecked."""

from __future__ import annotations

import pytest
from jsonschema import Draft202012Validator

from tests.unit.schema_helpers import SCHEMA_FILES, SCHEMAS, load_schema


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_schema_is_valid_draft_2020_12(name):
    schema = load_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_every_json_file_in_schemas_is_checked_here():
    assert sorted(p.name for p in SCHEMAS.glob("*.json")) == sorted(SCHEMA_FILES)
