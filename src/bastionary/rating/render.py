"""Invoices and credit notes as a customer reads them: HTML and PDF from one Jinja2 template
(``templates/invoice.html.j2``), from the published document alone.

The page shows amounts at the currency's precision with thousands separators and no
negative zero, quantities at up to 4 decimals (the exact value stays in the JSON), periods
as dates ("1-30 Nov 2026" with an en dash; the stored end is exclusive, the page shows the last day), and
leaves off lines of zero quantity and amount unless told to keep them. The PDF is drawn by
fpdf2 with Source Sans Pro (Latin, Greek, Cyrillic), both from PyPI.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, localcontext
from functools import cache
from typing import Any

import jinja2

from bastionary.money import EXACT, MINOR_UNITS
from bastionary.rating.service_windows import ZERO, ServiceWindow, net_windows

QUANTITY_PLACES = Decimal("0.0001")
DASH = "\u2013"  # an en dash between the ends of a range
TITLES = {
    "period": "Invoice",
    "advance": "Invoice (fees in advance)",
    "progressive": "Progressive invoice (usage so far)",
    "final_adjustment": "Final adjustment invoice",
}


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("bastionary.rating", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def money(text: str | None, currency: str) -> str:
    """``"1234.5"`` -> ``"1,234.50 USD"``; zero is never negative."""
    value = Decimal(text or 0)
    places = MINOR_UNITS.get(currency, 2)
    if value == 0:
        value = abs(value)
    return f"{value:,.{places}f} {currency}"


def price(text: str | None, currency: str) -> str:
    """A unit price, exact: at least the currency's decimals, more when it has them."""
    value = Decimal(text or 0)
    places = max(MINOR_UNITS.get(currency, 2), -min(value.normalize().as_tuple().exponent, 0))  # type: ignore[operator]
    return f"{value:,.{places}f} {currency}"


def quantity(text: str | None) -> str:
    value = Decimal(text or 0)
    # A quantity has up to 38 digits (the JSON keeps them all): rounded in the default 28-digit
    # context, one of 10^26 or more would stop the page with a bare InvalidOperation.
    with localcontext(EXACT):
        shown = value.quantize(QUANTITY_PLACES, rounding=ROUND_HALF_UP)
    if shown.is_zero():
        return "0"  # -0.00004 shows as 0, not a negative zero
    if shown == shown.to_integral_value():
        return f"{shown:,.0f}"
    return f"{shown:,f}".rstrip("0")


def day(moment: datetime) -> str:
    return f"{moment.day} {moment:%b %Y}"


def period_label(start_text: str, end_text: str) -> str:
    """The period as a customer reads it: whole days as dates, the exclusive end shown as the
    last day; a period that does not run midnight to midnight as times (instants, end
    exclusive, as times are read)."""
    start, end = datetime.fromisoformat(start_text), datetime.fromisoformat(end_text)
    if (start.hour, start.minute, start.second, end.hour, end.minute, end.second) != (0,) * 6:
        until = "" if end.date() == start.date() else day(end) + " "
        return f"{day(start)} {start:%H:%M}{DASH}{until}{end:%H:%M} UTC"
    last = end - timedelta(days=1)
    if last <= start:
        return day(start)
    if (start.year, start.month) == (last.year, last.month):
        return f"{start.day}{DASH}{last.day} {last:%b %Y}"
    if start.year == last.year:
        return f"{start.day} {start:%b} {DASH} {day(last)}"
    return f"{day(start)} {DASH} {day(last)}"


def _party(details: dict[str, Any], fallback: str = "") -> list[str]:
    address = details.get("address") or {}
    if isinstance(address, dict):
        city = " ".join(p for p in (address.get("postal_code", ""), address.get("city", "")) if p)
        where = [address.get("line1", ""), address.get("line2", ""), city, address.get("region", "")]
        where.append(address.get("country", ""))
    else:
        where = list(address)
    lines = [details.get("name") or fallback, *where, details.get("email", "")]
    if details.get("tax_id"):
        lines.append(f"Tax id {details['tax_id']}")
    return [line for line in lines if line]


def _line_notes(line: dict[str, Any], currency: str) -> list[str]:
    notes = []
    if line.get("billing_timing") == "advance":
        service = period_label(line["service_period_start"], line["service_period_end"])
        notes.append(f"In advance, for {service}")
    if line.get("adjusts_period_start"):
        notes.append(f"Adjusts the period from {day(datetime.fromisoformat(line['adjusts_period_start']))}")
    for tier in line.get("tiers") or []:
        if "tier" in tier:
            upper = f"up to {quantity(tier['up_to'])}" if tier.get("up_to") else "above"
            flat = f" + {price(tier['flat_amount'], currency)} flat" if Decimal(tier.get("flat_amount") or 0) else ""
            at = price(tier["unit_amount"], currency)
            notes.append(f"Tier {tier['tier']} ({upper}): {quantity(tier['units'])} at {at}{flat}")
        elif "packages" in tier:
            notes.append(f"{quantity(tier['packages'])} packages")
    if terms := line.get("percentage"):
        rate = format((Decimal(terms["rate"]) * 100).normalize(), "f")
        fixed = Decimal(terms.get("fixed_amount") or 0)
        per_event = f" + {price(terms['fixed_amount'], currency)} x {terms['events']} events" if fixed else ""
        notes.append(f"{rate}% of {quantity(terms.get('value'))}{per_event}")
    return notes + _span_notes(line, currency)


def _span_notes(line: dict[str, Any], currency: str) -> list[str]:
    """The spans a line bills or gives back, where they tell more than its period: several, or
    an adjustment's. A span it replaces with the same span at the same amount nets out."""
    left = net_windows(
        ServiceWindow(
            datetime.fromisoformat(span["start"]),
            datetime.fromisoformat(span["end"]),
            Decimal(span["quantity"]),
            Decimal(span["amount"]),
        )
        for span in line.get("service_spans") or []
    )
    if len(left) < 2 and not line.get("adjusts_period_start"):
        return []
    return [
        f"{'Given back for' if (w.quantity, w.amount) < (ZERO, ZERO) else 'For'}"
        f" {period_label(w.start.isoformat(), w.end.isoformat())}: {money(str(w.amount), currency)}"
        for w in left
    ]


def invoice_view(data: dict[str, Any], hide_zero_lines: bool = True) -> dict[str, Any]:
    currency = data["currency"]
    lines = [
        {
            "description": line["description"],
            "notes": _line_notes(line, currency),
            "quantity": quantity(line["quantity"]),
            "unit_price": price(line["unit_price"], currency) if line.get("unit_price") is not None else "",
            "amount": money(line["amount"], currency),
        }
        for line in data["lines"]
        if not (hide_zero_lines and Decimal(line["quantity"]) == 0 and Decimal(line["amount"]) == 0)
    ]
    totals: list[dict[str, Any]] = [{"label": "Subtotal", "amount": money(data["subtotal"], currency)}]
    for tax in data.get("tax_lines", []):
        how = "included" if tax["inclusive"] else "on"
        label = f"{tax['name']} ({how} {money(tax['taxable'], currency)})"
        totals.append({"label": label, "amount": money(tax["amount"], currency)})
    if Decimal(data["credits_applied"]) > 0:
        totals.append({"label": "Credits applied", "amount": "-" + money(data["credits_applied"], currency)})
    totals.append({"label": "Total due", "amount": money(data["total"], currency), "grand": True})
    if Decimal(data.get("carried_forward", "0")) > 0:
        totals.append({"label": "Credited to your balance", "amount": money(data["carried_forward"], currency)})
    issuer = data.get("issuer") or {}
    title = TITLES.get(data["kind"], "Invoice")
    return {
        "title": f"{title} (preview)" if data["status"] == "preview" else title,
        "number": data["invoice_id"],
        "issuer_lines": _party(issuer),
        "bill_to_lines": _party(data.get("bill_to") or {}, data["customer_id"]),
        "dates": [
            f"Issued: {day(datetime.fromisoformat(data['issued_at']))}",
            f"Due: {day(datetime.fromisoformat(data['due_at']))}",
        ],
        "period": period_label(data["period_start"], data["period_end"]),
        "plan": " \u2192 ".join(data.get("plans") or [data["plan"]]),
        "lines": lines,
        "totals": totals,
        "payment_instructions": [p for p in (issuer.get("payment_instructions") or "").splitlines() if p],
    }


def credit_note_view(data: dict[str, Any], invoice: dict[str, Any] | None = None) -> dict[str, Any]:
    """An issued credit note, on the page of the invoice it credits (issuer and customer from it)."""
    currency = data["currency"]
    invoice = invoice or {}
    lines = [
        {"description": line["description"], "notes": [], "quantity": "", "unit_price": "",
         "amount": money(line["amount"], currency)}
        for line in data["lines"]
    ]  # fmt: skip
    totals: list[dict[str, Any]] = [{"label": "Credit total", "amount": money(data["amount"], currency), "grand": True}]
    # The tax inside the credit total, for the customer's books: a note issued before notes
    # carried tax_lines shows none, its tax part not being known.
    for tax in data.get("tax_lines", []):
        label = f"of which {tax['name']} (on {money(tax['taxable'], currency)})"
        totals.append({"label": label, "amount": money(tax["amount"], currency)})
    for key, label in (
        ("reduces_amount_due", "Taken off the amount due"),
        ("refunded", "Refunded to your payment method"),
        ("credited_to_balance", "Credited to your balance"),
    ):
        if Decimal(data[key]) > 0:
            totals.append({"label": label, "amount": money(data[key], currency)})
    issued = day(datetime.fromisoformat(data["issued_at"]))
    period = period_label(invoice["period_start"], invoice["period_end"]) if invoice.get("period_start") else ""
    return {
        "title": "Credit note" + (" (void)" if data.get("voids_invoice") else ""),
        "number": data["credit_note_id"],
        "issuer_lines": _party(invoice.get("issuer") or {}),
        "bill_to_lines": _party(invoice.get("bill_to") or {}, data["customer_id"]),
        "dates": [f"Issued: {issued}", f"Credits invoice {data['invoice_id']}"],
        "period": period,
        "plan": invoice.get("plan", ""),
        "lines": lines,
        "totals": totals,
        "payment_instructions": [],
    }


def render_view(view: dict[str, Any], pdf: bool = False) -> str:
    return _environment().get_template("invoice.html.j2").render(doc=view, pdf=pdf)


def render_html(data: dict[str, Any], hide_zero_lines: bool = True) -> str:
    return render_view(invoice_view(data, hide_zero_lines))


def render_pdf_view(view: dict[str, Any]) -> bytes:
    from font_source_sans_pro import font_files_ttf
    from fpdf import FPDF, FontFace

    pdf = FPDF(format="A4")
    pdf.set_margins(18, 18, 18)
    pdf.add_page()
    for style, name in (("", "SourceSansPro"), ("B", "SourceSansProBold"), ("I", "SourceSansProIt")):
        pdf.add_font("SourceSans", style, font_files_ttf[name])
    pdf.add_font("SourceSans", "BI", font_files_ttf["SourceSansProBoldIt"])
    pdf.set_font("SourceSans", size=10)
    heading = FontFace(color=(29, 36, 48), size_pt=22, emphasis="BOLD")
    pdf.write_html(
        render_view(view, pdf=True),
        font_family="SourceSans",
        table_line_separators=True,
        tag_styles={"h1": heading},
    )
    return bytes(pdf.output())


def render_invoice_pdf(data: dict[str, Any], hide_zero_lines: bool = True) -> bytes:
    return render_pdf_view(invoice_view(data, hide_zero_lines))
