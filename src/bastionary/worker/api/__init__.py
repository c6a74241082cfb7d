"""The worker's HTTP API, on Faust's web server: one module per resource, installed here.

The next endpoint goes beside these: a module with an ``install(app, ...)`` that registers
its views, called from :func:`install`.
"""

from __future__ import annotations

import faust

from bastionary.settings import Settings
from bastionary.worker.api import dunning, entitlements, health
from bastionary.worker.services.dunning import DunningService
from bastionary.worker.services.entitlements import EntitlementService
from bastionary.worker.services.usage import UsageService


def install(
    app: faust.App,
    settings: Settings,
    worker_id: str,
    *,
    usage: UsageService,
    dunning_service: DunningService | None,
    entitlement_service: EntitlementService | None,
) -> None:
    health.install(app, settings, worker_id, usage)
    if dunning_service is not None:
        dunning.install(app, settings, dunning_service)
    if entitlement_service is not None:
        entitlements.install(app, settings, entitlement_service)
