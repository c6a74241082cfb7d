"""The embedded stack for one machine: the Tansu Kafka-protocol broker as a child process.

ClickHouse needs no process of its own: chdb runs inside the worker (see storage).
"""
