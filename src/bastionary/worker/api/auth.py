"""What every HTTP view of the workers shares: API-key checks and JSON errors."""

from __future__ import annotations

from aiohttp import web

from bastionary.entitlements.auth import AuthError, authenticate
from bastionary.settings import Settings


def json_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def authenticated(request: web.Request, settings: Settings) -> web.Response | None:
    """None when the request carries a valid key, else the 401/403 response to return."""
    try:
        authenticate(request.headers.get("Authorization"), settings.api_key_list)
    except AuthError as error:
        code = "missing_api_key" if error.status == 401 else "invalid_api_key"
        response = json_error(error.status, code, error.message)
        if error.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response
    return None
