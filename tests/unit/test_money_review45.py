"""Credits, invoice totals and tax, from the review of 2026-12-07 (forty-fifth session)
against the README ("Rating: plans, subscriptions, credits, invoices")."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bastionary.rating.tax import Invoicing


def test_a_tax_key_given_twice_is_named_in_the_catalog_error():
    """The catalog names a duplicate meter, plan or price key; a duplicate tax key was refused
    as "duplicate tax keys" alone, leaving the operator to search the list."""
    taxes = [
        {"key": "vat", "name": "VAT 19%", "rate": "0.19"},
        {"key": "gst", "name": "GST 10%", "rate": "0.10"},
        {"key": "vat", "name": "VAT 7%", "rate": "0.07"},
    ]
    with pytest.raises(ValidationError) as refused:
        Invoicing.model_validate({"taxes": taxes})
    assert refused.value.errors()[0]["msg"] == "Value error, duplicate tax keys: vat"
