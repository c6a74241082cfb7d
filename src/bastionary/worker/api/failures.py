"""What a request that fails past its view answers: JSON, never aiohttp's plain text. And
every request's route, status and time, in ``bastionary_api_request_seconds``.

Storage or broker trouble (a connection refused, a timeout, ClickHouse refusing a query for
its load) is ``503 unavailable`` with ``Retry-After``: the request may be retried as it is.
A read ClickHouse stops at its result's limits (rows or bytes), or a usage query stopped at its
time limit, is the caller's ``400 invalid_query``: asked again as it is, it is stopped again.
Anything else is a bug of ours, ``500 internal_error``, logged with its traceback. A body
over the size limit is ``413``; a path the API does not serve is ``404 not_found``, a method
it does not take there ``405 method_not_allowed`` (with ``Allow``), and a body that cannot be
read (its Content-Encoding does not decode) ``400 invalid_encoding``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from aiokafka.errors import KafkaError
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from bastionary import metrics
from bastionary.worker.api.auth import json_error

log = structlog.get_logger(__name__)
RETRY_AFTER_S = 1
UNAVAILABLE = (OperationalError, KafkaError, ConnectionError, TimeoutError)
# ClickHouse's answers for a server too busy now, not for a wrong query: as a 500 they read
# as a bug of ours, logged with a traceback, and told clients not to retry.
CLICKHOUSE_BUSY = {
    159: "TIMEOUT_EXCEEDED",
    173: "CANNOT_ALLOCATE_MEMORY",
    201: "QUOTA_EXCEEDED",
    202: "TOO_MANY_SIMULTANEOUS_QUERIES",
    203: "NO_FREE_CONNECTION",
    209: "SOCKET_TIMEOUT",
    210: "NETWORK_ERROR",
    241: "MEMORY_LIMIT_EXCEEDED",
    279: "ALL_CONNECTION_TRIES_FAILED",
    439: "CANNOT_SCHEDULE_TASK",
}
# ClickHouse's answers for a read larger than its limits (the result's rows or bytes, or an
# estimate past the time limit): asked again as it is, it fails the same way. A 500 logged as
# our bug, it was retried by clients as well.
CLICKHOUSE_READ_TOO_LARGE = {
    158: "TOO_MANY_ROWS",
    160: "TOO_SLOW",
    307: "TOO_MANY_BYTES",
    396: "TOO_MANY_ROWS_OR_BYTES",
}
READ_METHODS = frozenset({"GET", "HEAD"})
# Only the usage query's size is the caller's choice (from/to, window, group_by): there a read
# past BASTIONARY_QUERY_TIMEOUT is most likely too large, and was a 503 that clients honouring
# Retry-After asked again, each time for the whole limit. Elsewhere (an entitlement's state, one
# invoice) a timeout is storage's load: still 503.
CALLER_SIZED_READS = {"/v1/meters/{meter}/query": {159: "TIMEOUT_EXCEEDED"}}
# Any token is a method to aiohttp's Python parser (and llhttp knows dozens): as a label, a
# caller without a key could grow a new series per request.
METHOD_LABELS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@web.middleware
async def failures_as_json(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await _answered(request, handler)
        status = response.status
        return response
    except web.HTTPException as refused:  # aiohttp's own answers (no route, wrong method)
        status = refused.status
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"  # bounded labels: never the raw path
        method = request.method if request.method in METHOD_LABELS else "other"
        metrics.API_REQUESTS.labels(route, method, str(status)).observe(time.perf_counter() - started)


async def _answered(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge as too_large:
        return json_error(413, "record_too_large", too_large.text or "the body is too large")
    except web.HTTPNotFound:
        # aiohttp's own answer is plain text: a client that reads the documented error body
        # failed on it, or took it for a proxy's page.
        return json_error(404, "not_found", f"no API path {request.path[:200]!r}; schemas/openapi.yaml lists them")
    except web.HTTPMethodNotAllowed as not_allowed:
        allowed = ", ".join(sorted(not_allowed.allowed_methods))
        response = json_error(
            405, "method_not_allowed", f"{request.method[:20]} is not allowed here; allowed: {allowed}"
        )
        response.headers["Allow"] = not_allowed.headers["Allow"]
        return response
    except web.HTTPException:
        raise
    except RequestPayloadError:
        # A body its Content-Encoding does not decode, or a malformed chunked transfer: the
        # sender's to fix. As a bug of ours (500, a traceback) a client retried it as it was.
        coding = (request.headers.get("Content-Encoding") or "")[:40]
        return json_error(
            400,
            "invalid_encoding",
            f"the body could not be read: it does not decode as its Content-Encoding ({coding!r}) says,"
            " or its transfer is malformed",
        )
    except UNAVAILABLE as exc:
        log.warning("request failed on storage or the broker", path=request.path, error=str(exc)[:300])
        return unavailable("storage or the broker did not answer; retry shortly")
    except DatabaseError as exc:
        code = exc.code if isinstance(exc.code, int) else -1
        # A write's queries are small: one stopped at a limit is the server's load, not its size.
        limit_hit = None
        if request.method in READ_METHODS:
            resource = request.match_info.route.resource
            sized_by_caller = CALLER_SIZED_READS.get(resource.canonical if resource is not None else "", {})
            limit_hit = CLICKHOUSE_READ_TOO_LARGE.get(code) or sized_by_caller.get(code)
        if limit_hit is not None:
            log.warning("read stopped at storage's limits", path=request.path, error=str(exc)[:300])
            return json_error(
                400,
                "invalid_query",
                f"the read is larger than storage's limits ({limit_hit}): asked again as it is, it fails the"
                " same way; narrow from/to, ask a coarser window or fewer group_by, or read one customer's"
                " (customer=)",
            )
        busy = CLICKHOUSE_BUSY.get(code)
        if busy is None:
            log.exception("request failed", path=request.path)
            return json_error(500, "internal_error", "the request failed; see the worker's log")
        log.warning("request refused by a busy ClickHouse", path=request.path, error=str(exc)[:300])
        return unavailable(f"storage is too busy to answer now ({busy}); retry shortly")
    except Exception:
        log.exception("request failed", path=request.path)
        return json_error(500, "internal_error", "the request failed; see the worker's log")


def unavailable(message: str) -> web.Response:
    response = json_error(503, "unavailable", message)
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response
