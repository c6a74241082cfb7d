-- A percentage price's events span by span, beside `windows` (one element per window, in its
-- order): its fixed amount is charged per event and a minimum or maximum bounds each plan
-- segment apart, so events of no value moving between two segments of one plan (A -> B -> A)
-- move its amount without moving any span's usage. NULL elements on every other line's
-- windows; empty on lines stored before this column, whose spans are then compared by usage
-- alone, as before.
ALTER TABLE invoice_lines ADD COLUMN IF NOT EXISTS window_events Array(Nullable(Int64));
