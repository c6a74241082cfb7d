"""The bench's mark of the last event landed: the worker's own counters, read off /metrics."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import generate_latest

from bastionary import metrics
from bastionary.tools.bench.landed import LandedWatch, events_counted


def test_events_are_counted_off_the_worker_s_own_exposition():
    before = events_counted(generate_latest(metrics.REGISTRY).decode())
    metrics.EVENTS_ACCEPTED.inc(7)
    metrics.EVENTS_DUPLICATE.inc(2)
    metrics.EVENTS_DEAD_LETTERED.labels("invalid_json").inc(1)
    metrics.RECORDS_RECEIVED.inc(100)  # records are not events, and are not landed
    assert events_counted(generate_latest(metrics.REGISTRY).decode()) == before + 10


def test_a_line_that_is_not_a_count_of_landed_events_is_skipped():
    text = "\n".join(
        [
            "# TYPE bastionary_usage_events_accepted_total counter",
            "bastionary_usage_events_accepted_total 5.0",
            "bastionary_usage_events_accepted_created 1.7e9",
            'bastionary_usage_dead_lettered_total{error_class="invalid_json"} 2.0',
            "bastionary_usage_events_duplicate_total not-a-number",
            "bastionary_usage_records_received_total 99.0",
        ]
    )
    assert events_counted(text) == 7


class _Worker(BaseHTTPRequestHandler):
    accepted = 0

    def do_GET(self) -> None:
        body = f"bastionary_usage_events_accepted_total {type(self).accepted}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


def _serve() -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Worker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_the_mark_is_the_first_poll_that_counts_every_event():
    _Worker.accepted = 0
    server = _serve()
    try:
        with LandedWatch(server.server_address[1], 10, poll_seconds=0.01) as watch:
            time.sleep(0.1)
            assert watch.landed_at is None
            _Worker.accepted = 10
            landed_when = time.time()
            deadline = time.monotonic() + 5
            while watch.landed_at is None and time.monotonic() < deadline:
                time.sleep(0.01)
        assert watch.landed_at is not None and watch.landed_at >= landed_when
    finally:
        server.shutdown()


def test_no_mark_without_an_answer():
    server = _serve()
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    with LandedWatch(port, 1, poll_seconds=0.01) as watch:
        time.sleep(0.1)
    assert watch.landed_at is None
