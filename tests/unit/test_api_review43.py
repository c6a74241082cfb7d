"""The API's request metric stays bounded whatever a caller sends (a real aiohttp server)."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from bastionary import metrics
from bastionary.worker.api.failures import failures_as_json
from tests.unit.served_apps import served


async def listed(request: web.Request) -> web.Response:
    return web.json_response({"invoices": []})


def method_labels() -> set[str]:
    return {
        sample.labels["method"]
        for metric in metrics.REGISTRY.collect()
        if metric.name == "bastionary_api_request_seconds"
        for sample in metric.samples
    }


async def test_an_unusual_method_is_counted_as_other_not_as_a_series_of_its_own():
    # Every method the parser takes (dozens with llhttp, any token with aiohttp's Python
    # parser) was a label value: a caller without a key could grow the series at will.
    app = web.Application(middlewares=[failures_as_json])
    app.router.add_get("/v1/invoices", listed)
    async with served(app) as base, aiohttp.ClientSession() as session:
        for method in ("PROPFIND", "MKCOL", "PURGE", "GET"):
            async with session.request(method, f"{base}/v1/invoices") as response:
                assert response.status == (200 if method == "GET" else 405)
    labels = method_labels()
    assert {"GET", "other"} <= labels
    assert not {"PROPFIND", "MKCOL", "PURGE"} & labels
