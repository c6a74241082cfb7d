"""Ingest: turning Kafka records into validated CloudEvents, or dead letters with a reason.

Pure Python: nothing here talks to Kafka or ClickHouse, so every rule is unit-testable.
"""
