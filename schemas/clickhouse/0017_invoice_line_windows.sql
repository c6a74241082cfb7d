-- A prorated fee's spans of the period: on a fee's first line, the span it bills; on an
-- adjustment, the spans it replaces (negated) and those it bills instead. The spans a
-- (period, line key) still bills are its lines' spans less exact opposites, so a share given
-- back is credited at what was paid for that span, not at the average of the key's lines.
-- Empty on other lines and on lines stored before this column: a key with an empty line that
-- bills something is priced from its sums, as before.
ALTER TABLE invoice_lines ADD COLUMN IF NOT EXISTS windows
    Array(Tuple(service_start DateTime64(6, 'UTC'), service_end DateTime64(6, 'UTC'),
                quantity Decimal(38, 9), amount Decimal(38, 9)));
