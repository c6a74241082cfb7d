-- The spans of the period a line bills, each with its quantity (a prorated fee's share, or a
-- plan segment's usage) and amount: on a fee's or a usage line, its segment's span; on an
-- adjustment, a deduction or a refund, the spans it replaces (negated) and those it bills
-- instead. The spans a (period, line key) still bills are its lines' spans less exact
-- opposites, so a fee's share given back is credited at what was paid for that span, and a key
-- with two segments in one period is compared segment by segment, not by its sums.
-- Empty on true-ups, on a fee with prorate: false and on lines stored before this column: a key
-- with an empty line that bills something is compared by its sums, as before.
ALTER TABLE invoice_lines ADD COLUMN IF NOT EXISTS windows
    Array(Tuple(service_start DateTime64(6, 'UTC'), service_end DateTime64(6, 'UTC'),
                quantity Decimal(38, 9), amount Decimal(38, 9)));
