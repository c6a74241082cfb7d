"""`api-key new`: make a key with scopes, print it once, and the line that stores its hash."""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import click
from pydantic import ValidationError

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
    except ValidationError as exc:
        # pydantic's own text is several lines and a URL; the rule broken is what the user needs.
        problem = exc.errors()[0]
        field = str(problem["loc"][0]) if problem["loc"] else ""
        raise click.BadParameter(problem["msg"], param_hint={"customer": "--customer"}.get(field, "NAME")) from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    line = entry.model_dump_json()
    if key_file is not None:
        path = Path(key_file)
        if path.exists() and any(e.name == name for e in read_key_file(path)):
            raise click.ClickException(f"{key_file} already has a key named {name!r}; revoke it first")
        # A file edited by hand may end without a newline: appended to that last line, the new
        # entry made it unreadable, so the worker kept its old keys and refused the file at start.
        existing = path.read_bytes() if path.exists() else b""
        separator = "\n" if existing and not existing.endswith(b"\n") else ""
        # Opened before the key is shown, so a file we cannot write fails with no key out; the
        # key shown before it is stored: stored but shown nowhere (stdout closed or full), it was
        # a live key no one holds, under a name now taken.
        created = not existing and not path.exists()
        try:
            with path.open("ab", buffering=0) as out:  # one write, nothing left to fail at close
                _print_key(key)
                try:
                    out.write(f"{separator}{line}\n".encode())
                except OSError as exc:
                    raise click.ClickException(
                        f"cannot write {key_file}: {exc.strerror or exc}; the key printed is not stored, discard it"
                    ) from None
        except click.ClickException:
            # Opened to fail early, the file was created: left empty, a worker started on it took
            # it for no keys at all (every call refused), where a missing file stops the start.
            if created:
                path.unlink(missing_ok=True)
            raise
        click.echo(f"appended {name!r} to {key_file}", err=True)
    else:
        click.echo(line, err=True)
        _print_key(key)


def _print_key(key: str) -> None:
    try:
        if sys.stdout is None:  # started with stdout closed: click.echo prints nowhere, silently
            raise OSError(errno.EBADF, "stdout is closed")
        click.echo(key)
        sys.stdout.flush()
    except OSError as exc:
        raise click.ClickException(
            f"cannot print the key ({exc.strerror or exc}); nothing was stored: run it again with stdout open"
        ) from None
