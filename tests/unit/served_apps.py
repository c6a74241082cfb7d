"""A real aiohttp server on a free local port, for tests that talk HTTP to a real peer."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web


async def start(app: web.Application) -> tuple[web.AppRunner, str]:
    """Serve ``app`` until ``runner.cleanup()``; returns the runner and the base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def served(app: web.Application) -> AsyncIterator[str]:
    """Serve ``app`` for the block; yields its base URL."""
    runner, base = await start(app)
    try:
        yield base
    finally:
        await runner.cleanup()


def events_view(broker: object) -> Any:
    """The ``POST /v1/events`` view over ``broker`` (a ``post_usage``), with any key allowed."""
    from bastionary.apikeys import ApiKey
    from bastionary.worker.api import events

    views = {}

    class App:
        def page(self, path):
            return lambda view: views.setdefault(path, view)

    class AnyKey:
        def key(self, request, scope):
            return ApiKey("ingest", frozenset({"ingest"}))

    events.install(App(), AnyKey(), broker)
    return views["/v1/events"]
