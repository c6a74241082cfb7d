"""A clean, printable HTML invoice from the published invoice data (no external assets)."""

from __future__ import annotations

from html import escape
from typing import Any

_STYLE = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;color:#1d2430;margin:40px auto;max-width:820px}
h1{font-size:28px;margin:0}.muted{color:#6b7380}table{width:100%;border-collapse:collapse;margin-top:24px}
th,td{padding:8px 6px;border-bottom:1px solid #e3e6ea;text-align:left;vertical-align:top}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}.totals td{border:none}
.totals tr.grand td{font-weight:700;font-size:18px;border-top:2px solid #1d2430}
header{display:flex;justify-content:space-between;align-items:flex-start}
@media print{body{margin:0}}
"""


def render_html(data: dict[str, Any]) -> str:
    cur = escape(data["currency"])
    rows = "".join(
        f"<tr><td>{escape(line['description'])}</td><td class=num>{escape(line['quantity'])}</td>"
        f"<td class=num>{escape(line['amount'])} {cur}</td></tr>"
        for line in data["lines"]
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Invoice {escape(data["invoice_id"])}</title>
<style>{_STYLE}</style></head><body>
<header><div><h1>Invoice</h1><div class=muted>{escape(data["invoice_id"])}</div></div>
<div style="text-align:right"><div><b>Customer</b> {escape(data["customer_id"])}</div>
<div><b>Plan</b> {escape(data["plan"])}</div><div><b>Issued</b> {escape(data["issued_at"][:10])}</div>
<div><b>Due</b> {escape(data["due_at"][:10])}</div></div></header>
<p class=muted>Billing period {escape(data["period_start"])} to {escape(data["period_end"])}</p>
<table><thead><tr><th>Description</th><th class=num>Quantity</th><th class=num>Amount</th></tr></thead>
<tbody>{rows}</tbody></table>
<table class=totals>
<tr><td></td><td class=num>Subtotal</td><td class=num>{escape(data["subtotal"])} {cur}</td></tr>
<tr><td></td><td class=num>Credits applied</td><td class=num>-{escape(data["credits_applied"])} {cur}</td></tr>
<tr class=grand><td></td><td class=num>Total due</td><td class=num>{escape(data["total"])} {cur}</td></tr>
</table></body></html>
"""
