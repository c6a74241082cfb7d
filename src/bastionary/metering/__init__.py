"""Metering: which meters an event feeds, with what value, and 1-minute tumbling rollups.

Pure Python. Values are Decimal with 9 fractional digits (ROUND_HALF_EVEN at ingest), the
precision of the ClickHouse columns, so a rollup always equals the sum of its raw events.
"""
