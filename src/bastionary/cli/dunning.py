"""`bastionary dunning ...` and `bastionary clock ...`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click

from bastionary.cli.common import emit, reader_client, require_customer, required_time, settings_or_exit
from bastionary.dunning.clock import (
    ClockError,
    FileClock,
    clock_from_setting,
)
from bastionary.settings import Settings, parse_iso_duration
from bastionary.storage.reports import jsonable

MAX_WITHIN_DAYS = 36_500


@click.group()
def dunning() -> None:
    """Overdue invoices: open cases and the reminder funnel."""


@dunning.command("status")
@click.option("--customer", default=None, help="Only this customer's cases.")
@click.option("--all", "show_all", is_flag=True, help="Include settled cases.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
def status(customer: str | None, show_all: bool, fmt: str) -> None:
    """Open cases: state, amount due, the last step taken and what comes next."""
    from bastionary.catalog import load_catalog
    from bastionary.dunning.engine import overdue_for, paused_at, state_of
    from bastionary.storage.dunning import ClickHouseDunningStore

    settings = settings_or_exit()
    catalog = load_catalog(settings.catalog)
    now = _now(settings)
    rows = []
    client = reader_client(settings)
    if customer is not None:
        require_customer(client, customer)
    for case in ClickHouseDunningStore(client).cases({customer} if customer else None):
        state = state_of(case, now)
        if state in ("paid", "void") and not show_all:
            continue
        policy = catalog.dunning.policy_for(case.invoice.plan)
        last = max(case.steps_done, default=0)
        upcoming = [(n, s) for n, s in enumerate(policy.steps, 1) if n > last] if policy else []
        pause = paused_at(case, now)
        if upcoming and pause is None:
            n, step = upcoming[0]
            next_step = f"{n} {step.action.value} {in_words(step.after - overdue_for(case, now))}"
        else:
            next_step = f"paused ({pause.reason})" if pause else "-"
        rows.append(
            [
                case.invoice.invoice_id,
                case.invoice.customer_id,
                state,
                jsonable(case.amount_due),
                case.invoice.currency,
                jsonable(case.invoice.due_at),
                policy.key if policy else "-",
                last or "-",
                "yes" if case.suspended else "",
                next_step,
            ]
        )
    emit(
        [
            "invoice_id",
            "customer_id",
            "state",
            "amount_due",
            "currency",
            "due_at",
            "policy",
            "last_step",
            "suspended",
            "next",
        ],
        rows,
        fmt,
    )


@dunning.command("report")
@click.option(
    "--within",
    "within_days",
    default=7,
    show_default=True,
    # The query takes the days as a UInt32: past it, N wrapped round silently (2**32 + 1 counted
    # as 1 day). A century is more than any invoice waits; paid_ever counts the rest.
    type=click.IntRange(min=0, max=MAX_WITHIN_DAYS),
    help="Paid within N days of the notice.",
)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
def report(within_days: int, fmt: str) -> None:
    """The funnel: notices sent per step, and how many of those invoices were paid within N days."""
    from bastionary.storage.dunning import ClickHouseDunningStore

    settings = settings_or_exit()
    rows = []
    for step, action, sent, paid_within, paid_ever in ClickHouseDunningStore(reader_client(settings)).funnel(
        within_days
    ):
        rate = f"{100 * paid_within / sent:.1f}%" if sent else "-"
        rows.append([step, action, sent, paid_within, rate, paid_ever])
    emit(["step", "action", "sent", f"paid_within_{within_days}d", "rate", "paid_ever"], rows, fmt)


@click.group()
def clock() -> None:
    """The dunning clock, when BASTIONARY_CLOCK=file:PATH (tests and demos)."""


@clock.command("show")
def clock_show() -> None:
    click.echo(_now(settings_or_exit()).isoformat())


@clock.command("set")
@click.argument("moment")
def clock_set(moment: str) -> None:
    """Set the clock to MOMENT (ISO 8601, e.g. 2026-03-01T00:00:00Z, or 'now')."""
    try:
        target = datetime.now(UTC) if moment == "now" else _parse(moment)
        click.echo(_file_clock().set(target).isoformat())
    except OverflowError:  # 9999-12-31T23:59:59-05:00 is past the last moment Python holds in UTC
        raise click.BadParameter(f"{moment} is out of range in UTC", param_hint="MOMENT") from None


@clock.command("advance")
@click.argument("duration")
def clock_advance(duration: str) -> None:
    """Move the clock forward by DURATION (ISO 8601, e.g. P7D, PT12H)."""
    try:
        delta = parse_iso_duration(duration)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    try:
        click.echo(_file_clock().advance(delta).isoformat())
    except ClockError as exc:
        raise click.ClickException(str(exc)) from None
    except OverflowError:
        raise click.BadParameter(f"{duration} moves the clock past 9999-12-31", param_hint="DURATION") from None


def _file_clock() -> FileClock:
    chosen = clock_from_setting(settings_or_exit().clock)
    if not isinstance(chosen, FileClock):
        raise click.ClickException("BASTIONARY_CLOCK is 'system': only a file:PATH clock can be set")
    return chosen


def _now(settings: Settings) -> datetime:
    try:
        return clock_from_setting(settings.clock).now()
    except ClockError as exc:
        raise click.ClickException(str(exc)) from None


def _parse(text: str) -> datetime:
    """As every command reads a time: ISO 8601, UTC when it has no offset."""
    return required_time(text)


def in_words(delta: timedelta) -> str:
    """A wait as a person says it: "in 6 days", "in 3 hours", "now" once it is due."""
    seconds = int(delta.total_seconds())
    if seconds <= 0:
        return "now"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size:
            count = round(seconds / size) if size > 1 else seconds
            return f"in {count} {unit}{'s' if count != 1 else ''}"
    return "now"
