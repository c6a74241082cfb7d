-- A percentage price charges its fixed amount per event, which a line's quantity does not
-- count: its lines keep their events (or, on an adjustment, the change in them), so the rater
-- can tell a period whose usage did not move from one whose price changed in the catalog.
-- NULL on other lines and on lines stored before this column: their periods are compared by
-- amount, as before.
ALTER TABLE invoice_lines ADD COLUMN IF NOT EXISTS events Nullable(Int64);
