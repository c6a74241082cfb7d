"""`bastionary entitlements check CUSTOMER [FEATURE]`: the check API's answer, from ClickHouse."""

from __future__ import annotations

from datetime import UTC, datetime

import click
import orjson

from bastionary.cli.common import reader_client, settings_or_exit


@click.group()
def entitlements() -> None:
    """Feature access and usage limits."""


@entitlements.command("check")
@click.argument("customer")
@click.argument("feature", required=False)
def check_cmd(customer: str, feature: str | None) -> None:
    """What GET /v1/customers/CUSTOMER/entitlements[/FEATURE] answers, as JSON.

    Computed by the same functions from the same ClickHouse tables the workers load their
    state from; usage still in a worker's buffer (not yet flushed) is not counted."""
    from bastionary.catalog import load_catalog
    from bastionary.entitlements.auth import CUSTOMER_ID_RULE, valid_customer_id, valid_feature
    from bastionary.entitlements.evaluate import check, check_all
    from bastionary.entitlements.state import build_state, known_features, named_by_override
    from bastionary.storage.entitlements import ClickHouseEntitlementStore

    settings = settings_or_exit()
    catalog = load_catalog(settings.catalog)
    if not valid_customer_id(customer):
        raise click.BadParameter(CUSTOMER_ID_RULE, param_hint="CUSTOMER")
    if feature is not None and not valid_feature(feature):
        raise click.BadParameter("features are lowercase letters, digits and _", param_hint="FEATURE")
    now = datetime.now(UTC)
    loaded = build_state(
        ClickHouseEntitlementStore(reader_client(settings), catalog.plans),
        {p.key: p for p in catalog.plans},
        {m.key: m for m in catalog.meters},
        customer,
        now,
    )
    if loaded is None:
        raise click.ClickException(f"unknown customer {customer!r}")
    if feature is None:
        body = {"customer_id": customer, "entitlements": [d.to_json() for d in check_all(loaded.state, now)]}
    else:
        decision = check(loaded.state, feature, now)
        named = feature in known_features(catalog.plans) or named_by_override(loaded.state, feature)
        if decision.reason == "not_in_plan" and not named:  # as the API's 404 unknown_feature
            raise click.ClickException(f"no plan or override has a feature {feature!r}")
        body = decision.to_json()
    click.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2))
    if feature is not None and not body["has_access"]:
        raise SystemExit(3)  # scripts can branch on access: 0 allowed, 3 denied
