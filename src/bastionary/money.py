"""Currencies and rounding: shared by rating, credits and dunning, so it depends on none of them."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation, getcontext

# ISO 4217 minor units for the currencies we accept. A currency missing here is rejected
# when the catalog loads, rather than rounded with a guess.
MINOR_UNITS = {
    "USD": 2,
    "EUR": 2,
    "GBP": 2,
    "CHF": 2,
    "CAD": 2,
    "AUD": 2,
    "NZD": 2,
    "SEK": 2,
    "NOK": 2,
    "DKK": 2,
    "PLN": 2,
    "CZK": 2,
    "HUF": 2,
    "INR": 2,
    "BRL": 2,
    "MXN": 2,
    "CNY": 2,
    "HKD": 2,
    "SGD": 2,
    "ZAR": 2,
    "ILS": 2,
    "TRY": 2,
    "AED": 2,
    "SAR": 2,
    "JPY": 0,
    "KRW": 0,
    "CLP": 0,
    "ISK": 0,
    "VND": 0,
    "BHD": 3,
    "KWD": 3,
    "OMR": 3,
    "JOD": 3,
    "TND": 3,
}

# Where money is computed before it is rounded once to the minor unit (prices, tax lines): a
# usage total and a catalog amount have up to 38 digits each, so their product, and sums of
# such products, stay exact in 100. Decimal's default 28 would round them first: rounded twice,
# 10^19 + 4.999999999 units at 0.001 billed 10000000000000000.01 where the exact amount rounds
# to .00, and a subtotal past 10^20 could round its tax up a cent.
EXACT = Context(prec=100)


def minor_unit(currency: str) -> Decimal:
    return Decimal(1).scaleb(-MINOR_UNITS[currency])


def round_money(amount: Decimal, currency: str) -> Decimal:
    """Round to the currency's minor unit, half away from zero (as Kill Bill does)."""
    try:
        rounded = amount.quantize(minor_unit(currency), rounding=ROUND_HALF_UP)
    except InvalidOperation:
        # Decimal says only "[<class 'decimal.InvalidOperation'>]", which is all the log of an
        # invoice that could not be priced would show: name the amount and the limit it passed.
        why = f"more than {getcontext().prec} digits at it" if amount.is_finite() else "not a finite amount"
        raise InvalidOperation(f"{amount} {currency} cannot be rounded to its minor unit: {why}") from None
    # -0.004 rounds to Decimal's -0.00, which every document would print as "-0.00" (the tax of
    # a -0.02 correction at 19%): no finance team books a negative zero.
    return rounded.copy_abs() if rounded.is_zero() else rounded


def format_money(amount: Decimal, currency: str) -> str:
    return str(round_money(amount, currency))


def plain_decimal(value: Decimal) -> str:
    """``value`` in plain notation (``100000``, not ``1E+5``) with no trailing zeros, every
    digit kept: normalize() would round to its context's 28 digits, and a Decimal(38, 9)
    total has up to 38."""
    # A share under 10^-9 below zero, kept to 9 decimals, is -0E-9: written "-0" otherwise.
    text = format(value.copy_abs() if value.is_zero() else value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text
