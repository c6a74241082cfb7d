"""Entitlements: which features a customer may use now, and the events when that changes."""
