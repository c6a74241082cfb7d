"""Dunning: overdue invoices chased on a policy."""
