"""`api-key new`: make a key with scopes, print it once, and the line that stores its hash."""

from __future__ import annotations

import click

from bastionary.apikeys import SCOPES, new_key, read_key_file
from bastionary.cli.common import fail_cleanly
from bastionary.entitlements.auth import CUSTOMER_ID_RULE, valid_customer_id


@click.group("api-key")
def api_key() -> None:
    """API keys for the HTTP API (stored hashed in BASTIONARY_API_KEY_FILE)."""


@api_key.command("new")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, required=True, type=click.Choice(SCOPES), help="Repeatable.")
@click.option("--customer", default=None, help="Limit the key to one customer (a customer portal's key).")
@click.option(
    "--append",
    "key_file",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Append the hashed entry to this key file (workers re-read it when it changes).",
)
@fail_cleanly
def api_key_new(name: str, scopes: tuple[str, ...], customer: str | None, key_file: str | None) -> None:
    """Create key NAME. The key itself is shown once and stored nowhere; only its SHA-256 is."""
    if customer is not None and not valid_customer_id(customer):
        raise click.BadParameter(CUSTOMER_ID_RULE, param_hint="--customer")
    try:
        key, entry = new_key(name, scopes, customer)  # type: ignore[arg-type]  # click checked the choices
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    line = entry.model_dump_json()
    if key_file is not None:
        from pathlib import Path

        path = Path(key_file)
        if path.exists() and any(e.name == name for e in read_key_file(path)):
            raise click.ClickException(f"{key_file} already has a key named {name!r}; revoke it first")
        with path.open("a") as out:
            out.write(line + "\n")
        click.echo(f"appended {name!r} to {key_file}", err=True)
    else:
        click.echo(line, err=True)
    click.echo(key)
