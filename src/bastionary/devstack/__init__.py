"""The embedded stack for one machine, and the local peers the tests and the demo talk to.

The Tansu Kafka-protocol broker as a child process (``broker``, ``processes``), the HTTP
gateway that lets several processes share one chdb directory (``gateway``, ``discovery``),
and a real local webhook receiver and SMTP server (``local_peers``). ClickHouse needs no
process of its own: chdb runs inside the process that holds the directory.
"""
