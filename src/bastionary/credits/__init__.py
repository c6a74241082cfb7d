"""Prepaid credits: grants, and which grant pays how much of an invoice.

Pure Python. A grant's balance is its amount minus what invoices have drawn from it; it is
derived from the invoices already finalized, never kept as a mutable counter.
"""
