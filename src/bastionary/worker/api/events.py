"""``POST /v1/events``: usage over HTTP, published to ``usage.events`` like a producer's own.

202 once the broker has acknowledged every accepted event. 400 when the usage contract
rejects any member: the body names each rejected member (index, id, code, reason) and the
ids of the members that were published anyway. A retry of the whole request is safe: a
published event is a repeat of itself, and the dedupe counts it once.
"""

from __future__ import annotations

from typing import Any

import faust
import structlog
from aiokafka.errors import MessageSizeTooLargeError

from bastionary import metrics
from bastionary.apikeys import ApiKey
from bastionary.worker.api.auth import Guard, json_error
from bastionary.worker.api.failures import RETRY_AFTER_S
from bastionary.worker.services.api import ApiBackend

log = structlog.get_logger(__name__)

CONTENT_TYPES = {
    "application/cloudevents+json": False,
    "application/cloudevents-batch+json": True,
    "application/json": None,  # one event or a batch, by the body's shape
}


def install(app: faust.App, guard: Guard, backend: ApiBackend) -> None:
    @app.page("/v1/events")
    class EventsView(faust.web.View):
        async def post(self, request: Any) -> Any:
            key = guard.key(request, "ingest")
            if not isinstance(key, ApiKey):
                return key
            media = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if media not in CONTENT_TYPES:
                return json_error(
                    415, "unsupported_media_type", f"send one of: {', '.join(CONTENT_TYPES)} (got {media or 'none'!r})"
                )
            # A body that does not decode is failures.py's 400 invalid_encoding, as for every view.
            body = await request.read()
            try:
                posted = await backend.post_usage(body, CONTENT_TYPES[media], key.customer)
            except MessageSizeTooLargeError as too_large:
                # Within BASTIONARY_MAX_RECORD_BYTES, but a customer's record is larger than the
                # producer (max request 1,000,000 bytes) or the broker (message.max.bytes) takes:
                # final, so not a 503, which a client would retry for ever.
                log.warning("posted usage is larger than the broker takes", error=str(too_large))
                return json_error(
                    413,
                    "record_too_large",
                    "a customer's events in this request make a Kafka record larger than the producer or"
                    " the broker takes; send them in smaller requests",
                )
            except Exception:
                log.exception("posted usage could not be published")
                response = json_error(503, "broker_unavailable", "the events could not be published; retry the request")
                # As every 503 of the API: a client backs off by it rather than hammering the broker.
                response.headers["Retry-After"] = str(RETRY_AFTER_S)
                return response
            metrics.API_EVENTS.labels("accepted").inc(len(posted.accepted))
            metrics.API_EVENTS.labels("rejected").inc(len(posted.rejected))
            if posted.refused is not None:
                status = 413 if posted.refused.code.value in ("record_too_large", "batch_too_large") else 400
                return json_error(status, posted.refused.code.value, posted.refused.message)
            answer = {"accepted": len(posted.accepted), "ids": posted.accepted}
            if posted.rejected:
                answer["rejected"] = [member.to_json() for member in posted.rejected]
                return self.json(
                    {
                        "error": {
                            "code": "rejected_events",
                            "message": f"{len(posted.rejected)} event(s) rejected; {len(posted.accepted)} accepted",
                        },
                        **answer,
                    },
                    status=400,
                )
            return self.json(answer, status=202)
