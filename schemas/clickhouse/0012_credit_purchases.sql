-- Paid credit (bastionary.credit.purchased.v1): a `purchased` credit_ledger row keeps what was
-- paid for its amount of credit and the payment it came from. Other rows leave them NULL / ''.
-- Customers may carry auto top-up rules (JSON array of {currency, threshold, amount}).
ALTER TABLE credit_ledger ADD COLUMN IF NOT EXISTS price_paid Nullable(Decimal(38, 9));
ALTER TABLE credit_ledger ADD COLUMN IF NOT EXISTS payment_reference String DEFAULT '';
ALTER TABLE customers ADD COLUMN IF NOT EXISTS auto_topup String DEFAULT '[]'
