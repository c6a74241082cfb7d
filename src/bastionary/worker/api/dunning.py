"""``POST /v1/dunning/responses``: a response to a notice, through the responses topic."""

from __future__ import annotations

from typing import Any

import faust

from bastionary.rating.events import InvalidBillingEvent
from bastionary.settings import Settings
from bastionary.worker.api.auth import authenticated, json_error
from bastionary.worker.services.dunning import DunningService


def install(app: faust.App, settings: Settings, service: DunningService) -> None:
    @app.page("/v1/dunning/responses")
    class ResponsesView(faust.web.View):
        async def post(self, request: Any) -> Any:
            denied = authenticated(request, settings)
            if denied is not None:
                return denied
            try:
                event_id, _ = await service.accept_response(await request.read())
            except InvalidBillingEvent as error:
                return json_error(400, "invalid_event", str(error))
            return self.json({"accepted": True, "id": event_id}, status=202)
