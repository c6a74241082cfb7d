"""Money bugs found by the review of 2026-12-05 and not fixed yet: each test states the right
result and is expected to fail (strict, so a fix makes it fail until its marker goes). The
README lists them under "Rating", "Known bug". (The second, a share given back credited at
the average fee billed, was fixed on 2026-12-06: tests/unit/test_fee_windows.py.)"""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.unit.test_catalog_changes import one_plan_twice, percentage_fees
from tests.unit.test_minimum_adjustments import per_period
from tests.unit.test_rater import FEB

D = Decimal


@pytest.mark.xfail(
    strict=True, reason="known bug: a key with two segments in a period is compared by amount unless priced linearly"
)
def test_a_bounded_percentage_rate_changed_does_not_reach_back_to_a_period_with_one_plan_twice():
    """February: a (1-10), b (10-20), a again (20-); 10,000 on 5 Feb at a's 2.9% (a minimum of
    1.00 per segment's line, which a's second segment, without events, does not owe): 290.00.
    a's rate then goes to 3.9%: no usage of February moved, so it should stay 290.00. A bound
    applies to each segment apart, and what was billed is kept per key, summed, so a split
    moved between the segments cannot be told from one that did not: the key is compared by
    amount, and March bills February +100.00 (390.00). Linear prices (per_unit, percentage
    without bounds) are fixed (tests/unit/test_catalog_changes.py); tiers and packages are not."""
    invoices = one_plan_twice(percentage_fees("0.029", min_amount="1"), percentage_fees("0.039", min_amount="1"))
    assert per_period(invoices)[FEB.isoformat()] == D("290.00")
