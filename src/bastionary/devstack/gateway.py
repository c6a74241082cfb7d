"""A ClickHouse-compatible HTTP front for the in-process chdb engine.

chdb lets one process hold a data directory, so the process that holds it serves this
gateway and everyone else (CLI, workers, analysts with curl or clickhouse-connect) speaks
ClickHouse's HTTP interface to it. Each request runs on its own short-lived chdb connection
to the same engine: chdb keeps USE/SET state per connection, so a fresh one gives every
request clean settings with nothing to restore, and lets the reader's limits and
``readonly = 1`` be applied last and never undone. Results are buffered rather than
streamed because chdb encodes each block on its own, which breaks formats that have a
header or footer.

A reader's statement is checked by the engine's own parser (see
:mod:`bastionary.storage.readonly_sql`) and then runs the canonical text that was checked.
Readers, inserts and other writes queue separately, so a slow read never holds up the
workers' inserts. Inserts run several at once, as a ClickHouse server takes them from
several workers and flush processes, and the engine parses them in parallel; other writes
(DDL, mutations, ``INSERT ... SELECT``) go one at a time. For one worker's two flush
processes on 2 cores this is within the noise (``bench``'s batch phase, six alternating
pairs: -7.4% to +8.4%, +3.5% on average): the cores, not the queue, are what they wait for.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import re
import secrets
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import chdb
import lz4.frame
import structlog
from aiohttp import web

from bastionary import metrics
from bastionary.devstack import discovery
from bastionary.storage.readonly_sql import NotReadOnly, checked_statement

log = structlog.get_logger(__name__)

READONLY_CODE = 164  # ClickHouse's READONLY: a statement that is not a read
READ_KEYWORDS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN"})
# URL parameters that steer the HTTP transport; chdb rejects most of them as unknown settings.
TRANSPORT_PARAMS = frozenset(
    [
        "query",
        "user",
        "password",
        "database",
        "default_format",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "compress",
        "decompress",
        "buffer_size",
        "wait_end_of_query",
        "client_protocol_version",
        "quota_key",
        "role",
        "stacktrace",
        "close_session",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "enable_http_compression",
    ]
)
_IDENT = r"(?:`[^`]*`|\"[^\"]*\"|[\w$]+)"
# Only plain-table inserts carry a data body; INSERT ... VALUES / SELECT run as ordinary queries.
_INSERT_DATA = re.compile(
    rf"\A\s*(?P<head>INSERT\s+INTO\s+(?:TABLE\s+)?{_IDENT}(?:\s*\.\s*{_IDENT})?"
    rf"(?:\s*\((?:[^()`]|`[^`]*`)*\))?(?:\s+SETTINGS\s+[^\n]*?)?)\s+FORMAT\s+(?P<fmt>\w+)".encode(),
    re.IGNORECASE | re.DOTALL,
)
_LEADING_NOISE = re.compile(r"(?:\s+|--[^\n]*|#[^\n]*|/\*.*?\*/|\()*", re.DOTALL)
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# What a reader may set in the URL: how results are written, never what a query may use.
# Format settings that name files (format_schema, format_template_*) are not among them.
_READER_SETTINGS = re.compile(
    r"^(output_format_\w+|date_time_output_format|session_timezone|extremes|join_use_nulls"
    r"|format_csv_delimiter|format_tsv_null_representation|format_csv_null_representation|max_block_size)$"
)
_HTTP_STATUS = {516: 401, 164: 403, 497: 403, 60: 404, 81: 404, 46: 404, 73: 404}
_HTTP_STATUS.update(dict.fromkeys((6, 26, 27, 36, 47, 53, 62, 115, 117, 271), 400))


@dataclass(frozen=True)
class GatewayCredentials:
    reader_user: str
    reader_password: str = field(repr=False)
    writer_user: str
    writer_password: str = field(repr=False)

    @classmethod
    def generate(cls, reader_user: str = "reader", writer_user: str = "writer") -> GatewayCredentials:
        return cls(reader_user, secrets.token_urlsafe(24), writer_user, secrets.token_urlsafe(24))


class GatewayError(Exception):
    """An error worded the way ClickHouse words it, so every ClickHouse client parses it."""

    def __init__(self, code: int, message: str, name: str = "", status: int | None = None):
        text = message if message.startswith("Code: ") else f"Code: {code}. DB::Exception: {message}"
        super().__init__(f"{text} ({name})" if name and f"({name})" not in text else text)
        self.code = code
        self.status = status or _HTTP_STATUS.get(code, 500)

    @classmethod
    def from_engine(cls, exc: Exception) -> GatewayError:
        text = str(exc).strip()
        text = text[text.find("Code: ") :] if "Code: " in text else text
        match = re.match(r"Code: (\d+)\.", text)
        return cls(int(match.group(1)), text) if match else cls(1001, text, "STD_EXCEPTION")


@dataclass
class _Plan:
    readonly: bool
    database: str | None
    settings: dict[str, str]
    params: dict[str, str]
    default_format: str
    timezone: str
    role: str = "writer"
    sql: str = ""
    insert_head: str = ""
    insert_format: str = ""
    data: bytes = b""


_SYSTEM_DATABASES = frozenset({"system", "information_schema"})


class QueryGateway:
    def __init__(
        self,
        client: Any,
        credentials: GatewayCredentials,
        database: str | None = None,
        *,
        max_concurrent_queries: int = 1,
        max_concurrent_reads: int = 2,
        max_concurrent_inserts: int = 4,
        max_body_bytes: int = 1 << 30,
        reader_limits: dict[str, str] | None = None,
    ):
        if credentials.reader_user == credentials.writer_user:
            raise ValueError("reader and writer must be different users")
        if not (credentials.reader_password and credentials.writer_password):
            raise ValueError("gateway passwords must not be empty")
        # The client's own connection string carries chdb's path normalisation and options.
        backend = getattr(client, "_backend", None)
        conn_str = client if isinstance(client, str) else getattr(backend, "connection_string", None)
        if not conn_str:
            raise TypeError("QueryGateway needs a clickhouse-connect chdb client or a chdb connection string")
        self._conn_str = conn_str
        self._users = {
            "reader": (credentials.reader_user, credentials.reader_password),
            "writer": (credentials.writer_user, credentials.writer_password),
        }
        self._database = database or getattr(client, "database", None)
        self._slots = {
            "writer": asyncio.Semaphore(max_concurrent_queries),
            "reader": asyncio.Semaphore(max_concurrent_reads),
            "insert": asyncio.Semaphore(max_concurrent_inserts),
        }
        # chdb calls block: they run on threads of the gateway's own, one per slot, so that a
        # worker serving this gateway keeps its event loop's default executor for its flushes.
        self._thread_count = max_concurrent_queries + max_concurrent_reads + max_concurrent_inserts
        self._threads: ThreadPoolExecutor | None = None
        # Applied after the reader's own settings and before readonly = 1, which locks them.
        self._reader_limits = reader_limits if reader_limits is not None else READER_LIMITS
        self._max_body = max_body_bytes
        self._runner: web.AppRunner | None = None
        self._anchor: Any = None
        self._server_tz = "UTC"
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        # A connection held open for the gateway's life keeps the engine up between requests
        # even if the host closes its client, and makes a bad path fail here, not per request.
        self._anchor = await asyncio.to_thread(chdb.connect, self._conn_str)
        tz = await asyncio.to_thread(self._anchor.query, "SELECT timezone()", "TabSeparated")
        self._server_tz = tz.bytes().decode().strip() or "UTC"
        self._threads = ThreadPoolExecutor(self._thread_count, thread_name_prefix="query-gateway")
        app = web.Application(client_max_size=self._max_body)
        app.router.add_route("*", "/ping", self._ping)
        app.router.add_route("*", "/", self._handle)
        # aiohttp's access log prints the query string, which can carry password=...
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.port = self._runner.addresses[0][1]
        log.info("query_gateway.started", host=host, port=self.port, database=self._database)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._threads is not None:
            self._threads.shutdown(wait=False)  # a query still running past the cleanup ends on its own
            self._threads = None
        if self._anchor is not None:
            await asyncio.to_thread(self._anchor.close)
            self._anchor = None
            log.info("query_gateway.stopped", port=self.port)

    async def _ping(self, request: web.Request) -> web.Response:
        return web.Response(text="Ok.\n")

    async def _handle(self, request: web.Request) -> web.Response:
        query_id = request.query.get("query_id") or str(uuid.uuid4())
        if request.method in ("GET", "HEAD") and "query" not in request.query and not request.can_read_body:
            return web.Response(text="Ok.\n")
        started = time.monotonic()
        role = "unknown"  # until authenticated
        try:
            role = self._authenticate(request)
            plan = await self._plan(request, role)
            async with self._slots[_slot(plan)]:
                body, summary = await asyncio.get_running_loop().run_in_executor(self._threads, self._execute, plan)
        except Exception as exc:
            refused = isinstance(exc, GatewayError) and exc.code == READONLY_CODE
            outcome = "refused" if refused else "error"
            metrics.GATEWAY_QUERIES.labels(role, outcome).observe(time.monotonic() - started)
            if not isinstance(exc, GatewayError):
                log.exception("query_gateway.internal_error", query_id=query_id)
                exc = GatewayError(1001, f"Query gateway failure: {type(exc).__name__}", "STD_EXCEPTION")
            log.info("query_gateway.error", query_id=query_id, code=exc.code, status=exc.status)
            headers = {"X-ClickHouse-Exception-Code": str(exc.code), "X-ClickHouse-Query-Id": query_id}
            return web.Response(status=exc.status, text=f"{exc}\n", headers=headers)
        summary["elapsed_ns"] = str(int((time.monotonic() - started) * 1e9))
        metrics.GATEWAY_QUERIES.labels(role, "ok").observe(time.monotonic() - started)
        headers = {
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Timezone": plan.timezone,
            "X-ClickHouse-Summary": json.dumps(summary),
        }
        fmt = None if plan.insert_head else _output_format(plan)
        # ClickHouse names a format only for statements that produce a result set.
        if fmt and (body or _first_keyword(plan.sql) in READ_KEYWORDS):
            headers["X-ClickHouse-Format"] = fmt
        log.debug("query_gateway.query", query_id=query_id, role=role, result_bytes=len(body))
        return web.Response(body=body, headers=headers, content_type=_content_type(fmt))

    def _authenticate(self, request: web.Request) -> str:
        headers, url = request.headers, request.query
        user = password = None
        if headers.get("Authorization", "").lower().startswith("basic "):
            try:
                decoded = base64.b64decode(headers["Authorization"][6:].strip(), validate=True).decode()
                user, _, password = decoded.partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise GatewayError(516, "Malformed basic authorization header", "AUTHENTICATION_FAILED") from None
        elif "X-ClickHouse-User" in headers:
            user, password = headers["X-ClickHouse-User"], headers.get("X-ClickHouse-Key", "")
        elif "user" in url:
            user, password = url["user"], url.get("password", "")
        if user is None:
            raise GatewayError(
                516,
                "Authentication required: use HTTP basic auth, X-ClickHouse-User/X-ClickHouse-Key"
                " headers or user/password parameters",
                "AUTHENTICATION_FAILED",
            )
        matched = None
        for role, (name, secret) in self._users.items():
            # Check every pair so timing does not tell which user names exist.
            ok = hmac.compare_digest(user.encode(), name.encode()) & hmac.compare_digest(
                (password or "").encode(), secret.encode()
            )
            matched = matched or (role if ok else None)
        if matched is None:
            log.warning("query_gateway.auth_failed", user=user, peer=request.remote)
            raise GatewayError(
                516,
                f"{user}: Authentication failed: password is incorrect, or there is no user with such name",
                "AUTHENTICATION_FAILED",
            )
        return matched

    async def _plan(self, request: web.Request, role: str) -> _Plan:
        url = request.query
        query_text, params, body = url.get("query", ""), {}, b""
        try:
            if request.content_type.startswith("multipart/"):  # clickhouse-connect's form-encoded queries
                form = await request.post()
                if any(isinstance(value, web.FileField) for value in form.values()):
                    raise GatewayError(48, "External data is not supported by the query gateway", "NOT_IMPLEMENTED")
                query_text = "\n".join(filter(None, (query_text, str(form.get("query", "")))))
                params.update({k[6:]: str(v) for k, v in form.items() if k.startswith("param_")})
            else:
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise GatewayError(1001, f"Request body exceeds {self._max_body} bytes", "STD_EXCEPTION", 413) from None
        except GatewayError:
            raise
        except Exception as exc:  # e.g. a body that does not match its Content-Encoding
            raise GatewayError(271, f"Cannot read request body: {exc}", "CANNOT_DECOMPRESS", 400) from None
        encoding = request.headers.get("Content-Encoding", "identity").lower()
        if encoding == "lz4":  # aiohttp decodes gzip, deflate, br and zstd itself, but not lz4
            body = _lz4_decompress(body)
        elif encoding not in ("identity", "gzip", "deflate", "br", "zstd"):
            raise GatewayError(271, f"Unsupported Content-Encoding {encoding!r}", "CANNOT_DECOMPRESS")
        params.update({k[6:]: v for k, v in url.items() if k.startswith("param_")})
        settings = {k: v for k, v in url.items() if k not in TRANSPORT_PARAMS and not k.startswith("param_")}
        if bad := next((name for name in settings if not _SETTING_NAME.match(name)), None):
            raise GatewayError(115, f"Unknown setting '{bad}'", "UNKNOWN_SETTING")
        # GET implies readonly, as in ClickHouse, so a stray link cannot modify data.
        readonly = role == "reader" or request.method in ("GET", "HEAD")
        if readonly:
            settings.pop("readonly", None)
            if bad := next((name for name in settings if not _READER_SETTINGS.match(name)), None):
                raise GatewayError(164, f"{role}: Cannot modify '{bad}' setting in readonly mode", "READONLY")
        database = url.get("database") or request.headers.get("X-ClickHouse-Database") or self._database
        if role == "reader" and (database or "").lower() in _SYSTEM_DATABASES:
            # A reader may name the database it reads (one served chdb can hold several, each
            # checked as its own), but not a system one: its tables would all count as inside,
            # system.processes (other sessions' statements) and the query log among them.
            raise GatewayError(
                READONLY_CODE,
                f"reader: Cannot execute query in readonly mode: database {database} is not readable;"
                f" name the database that holds the tables (default {self._database}).",
                "READONLY",
            )
        plan = _Plan(
            readonly=readonly,
            settings=settings,
            params=params,
            database=database,
            default_format=url.get("default_format") or request.headers.get("X-ClickHouse-Format") or "TabSeparated",
            timezone=settings.get("session_timezone") or self._server_tz,
            role=role,
        )
        hint = " Method GET implies readonly; use POST for modifying queries." if role == "writer" else ""
        denied = GatewayError(164, f"{role}: Cannot execute query in readonly mode.{hint}", "READONLY")
        # As in ClickHouse, the query parameter and the body read as one text joined by a newline,
        # and an INSERT ... FORMAT takes everything after the format name as its data.
        head = query_text.encode() + b"\n" if query_text else body[:65536]
        if match := _INSERT_DATA.match(head):
            if readonly:
                raise denied
            start = _data_start(head, match.end())
            if not query_text:
                plan.data = body[start:]
            else:  # copy the body only if the parameter itself carried some data
                plan.data = head[start:] + body if start < len(head) else body
            plan.insert_head, plan.insert_format = match["head"].decode(), match["fmt"].decode()
            return plan
        try:
            plan.sql = f"{query_text}\n{body.decode()}" if query_text and body else query_text or body.decode()
        except UnicodeDecodeError:
            raise GatewayError(62, "Query is not valid UTF-8", "SYNTAX_ERROR") from None
        if not plan.sql.strip():
            raise GatewayError(62, "Empty query", "SYNTAX_ERROR")
        return plan

    def _execute(self, plan: _Plan) -> tuple[bytes, dict[str, str]]:
        """Runs in a worker thread, since chdb calls block."""
        try:
            conn = chdb.connect(self._conn_str)  # type: ignore[no-untyped-call]  # chdb's lazy, unannotated wrapper
        except Exception as exc:
            raise GatewayError.from_engine(exc) from exc
        try:
            if plan.database:
                conn.query(f"USE {_quote_ident(plan.database)}", "TabSeparated")
            if plan.settings:
                conn.query("SET " + ", ".join(f"{k} = {_quote(v)}" for k, v in plan.settings.items()), "TabSeparated")
            if plan.readonly:
                if plan.sql:
                    try:
                        plan.sql = checked_statement(lambda q: _text(conn, q, plan.params), plan.sql, plan.database)
                    except NotReadOnly as refused:
                        hint = (
                            " Method GET implies readonly; use POST for modifying queries."
                            if plan.role == "writer"
                            else ""
                        )
                        raise GatewayError(
                            READONLY_CODE,
                            f"{plan.role}: Cannot execute query in readonly mode: {refused}.{hint}",
                            "READONLY",
                        ) from None
                limits = ", ".join(f"{k} = {_quote(v)}" for k, v in self._reader_limits.items())
                # Last: readonly = 1 locks every setting, so nothing in the query can raise a limit.
                conn.query(f"SET {limits}, readonly = 1" if limits else "SET readonly = 1", "TabSeparated")
            if plan.insert_head:
                inserter = conn.send_insert(plan.insert_head, plan.insert_format)
                try:
                    if plan.data:
                        inserter.append(plan.data)
                    done = inserter.finish()
                except Exception:
                    with contextlib.suppress(Exception):
                        inserter.cancel()  # nothing is committed without finish()
                    raise
                return b"", {"written_rows": str(done.rows_written), "written_bytes": str(done.bytes_written)}
            result = conn.query(plan.sql, plan.default_format, params=plan.params)
            body = result.bytes() or b""
            return body, {
                "read_rows": str(result.rows_read()),
                "read_bytes": str(result.bytes_read()),
                "written_rows": str(result.rows_written()),
                "written_bytes": str(result.bytes_written()),
                "result_bytes": str(len(body)),
            }
        except Exception as exc:
            raise GatewayError.from_engine(exc) from exc
        finally:
            conn.close()


READER_LIMITS = {
    "max_execution_time": "30",
    "timeout_overflow_mode": "throw",
    "max_result_bytes": str(100 * 1024 * 1024),
    "result_overflow_mode": "throw",
}


def _slot(plan: _Plan) -> str:
    """Which queue a statement waits in: an ``INSERT ... FORMAT`` with its data is an insert."""
    return "reader" if plan.readonly else "insert" if plan.insert_head else "writer"


def reader_limits(timeout_seconds: float, max_result_bytes: int) -> dict[str, str]:
    return READER_LIMITS | {"max_execution_time": f"{timeout_seconds:g}", "max_result_bytes": str(max_result_bytes)}


def _text(conn: Any, statement: str, params: dict[str, str]) -> str:
    return (conn.query(statement, "TabSeparatedRaw", params=params).bytes() or b"").decode()


def _first_keyword(sql: str) -> str:
    noise = _LEADING_NOISE.match(sql)  # never None: the pattern also matches the empty string
    match = re.match(r"[A-Za-z]+", sql[noise.end() if noise else 0 :])
    return match.group(0).upper() if match else ""


def _output_format(plan: _Plan) -> str:
    match = _TRAILING_FORMAT.search(plan.sql)
    return match.group(1) if match else plan.default_format


def _content_type(fmt: str | None) -> str:
    if fmt and fmt.startswith("JSON"):
        return "application/json"
    if not fmt or fmt.startswith(("TabSeparated", "TSV", "CSV", "Pretty", "Vertical", "Markdown", "Values", "XML")):
        return "text/plain"
    return "application/octet-stream"


def _data_start(text: bytes, pos: int) -> int:
    # ClickHouse's rule: data starts after blanks and at most one line break following the format name.
    while text[pos : pos + 1] in (b" ", b"\t"):
        pos += 1
    pos += text[pos : pos + 1] == b"\r"
    return pos + (text[pos : pos + 1] == b"\n")


def _lz4_decompress(data: bytes) -> bytes:
    chunks = []
    try:
        while data:  # clickhouse-connect compresses each insert block as its own frame
            decompressor = lz4.frame.LZ4FrameDecompressor()
            chunks.append(decompressor.decompress(data))
            data = decompressor.unused_data if decompressor.eof else b""
    except RuntimeError as exc:
        raise GatewayError(271, f"Cannot decompress lz4 body: {exc}", "CANNOT_DECOMPRESS") from None
    return b"".join(chunks)


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _quote_ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def write_gateway_file(path: Path, host: str, port: int, credentials: GatewayCredentials, database: str) -> None:
    """Publish where this gateway listens, and its users (see :mod:`bastionary.devstack.discovery`)."""
    discovery.write_gateway_file(
        path,
        {
            "host": host,
            "port": port,
            "database": database,
            "reader": {"user": credentials.reader_user, "password": credentials.reader_password},
            "writer": {"user": credentials.writer_user, "password": credentials.writer_password},
        },
    )
