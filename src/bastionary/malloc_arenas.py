"""How many malloc arenas a process of the worker keeps: the worker's own and its flush processes'."""

from __future__ import annotations

import ctypes
import os
import sys

import structlog

log = structlog.get_logger(__name__)

_M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_malloc_arenas(arenas: int = 2) -> None:
    """At most two malloc arenas, as ``MALLOC_ARENA_MAX=2`` would set; called before the
    process starts any thread. glibc gives each thread that allocates its own arena (up to 8
    per core), and each keeps the peak of what its thread once held.

    In the worker, the flush threads allocate a whole plan's objects; with their own arenas
    the worker's peak RSS after 1M distinct ids over HTTP was 627 MB, with two 544 MB (bench's
    rss phase, 2026-11-30, both with a flush's cyclic collection paused, since dropped: without
    the pause, 449 MB). In a flush process, RocksDB's background threads allocate: the rss-http
    phase alone with two flush processes gave children of 295-312 MB with two arenas against
    303-343 without (two and three runs, 2026-12-05).

    No-op where the C library is not glibc, or when ``MALLOC_ARENA_MAX`` is set (the
    operator's value stands, and glibc has applied it already)."""
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_ARENA_MAX, arenas)
    except (OSError, AttributeError):  # musl or another C library: nothing to set
        log.debug("mallopt unavailable; malloc arenas left as they are")
