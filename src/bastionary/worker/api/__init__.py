"""The worker's HTTP API, on Faust's web server: one module per resource, installed here.

The next endpoint goes beside these: a module with an ``install(app, ...)`` that registers
its views, called from :func:`install`. ``schemas/openapi.yaml`` documents every one.
"""

from __future__ import annotations

import faust

from bastionary.apikeys import KeyRing
from bastionary.settings import Settings
from bastionary.worker.api import entitlements, events, health, reads, writes
from bastionary.worker.api.auth import Guard
from bastionary.worker.services.api import ApiBackend
from bastionary.worker.services.dunning import DunningService
from bastionary.worker.services.entitlements import EntitlementService
from bastionary.worker.services.usage import UsageService


def install(
    app: faust.App,
    settings: Settings,
    worker_id: str,
    *,
    usage: UsageService,
    backend: ApiBackend | None,
    dunning_service: DunningService | None,
    entitlement_service: EntitlementService | None,
) -> None:
    health.install(app, settings, worker_id, usage)
    guard = Guard(KeyRing(settings.api_key_list, settings.api_key_file))
    if backend is not None:
        events.install(app, guard, backend)
        reads.install(app, guard, backend)
        writes.install(app, guard, backend, dunning_service)
    if entitlement_service is not None:
        entitlements.install(app, guard, entitlement_service)
