"""Rating: plans and prices from the catalog, billing periods, and invoices priced to the cent.

Pure Python: quantities come in, amounts come out. Money is Decimal throughout; each line
is rounded once, to the currency's minor unit with ROUND_HALF_UP, and the subtotal is the
sum of the rounded lines, so an invoice always adds up.
"""
