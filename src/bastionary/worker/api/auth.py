"""What every HTTP view of the workers shares: API keys with scopes, and JSON errors."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bastionary.apikeys import ApiKey, AuthError, KeyRing, Scope
from bastionary.entitlements.auth import CUSTOMER_ID_RULE, valid_customer_id


def json_error(status: int, code: str, message: str, **details: Any) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message, **details}}, status=status)


class Guard:
    """Checks a request's key for a scope, and a customer-limited key for its customer."""

    def __init__(self, keys: KeyRing):
        self.keys = keys

    def key(self, request: web.Request, scope: Scope) -> ApiKey | web.Response:
        """The request's key when it has ``scope``, else the 401/403 response to return."""
        try:
            key = self.keys.authenticate(request.headers.get("Authorization"))
        except AuthError as error:
            response = json_error(error.status, error.code, error.message)
            if error.status == 401:
                response.headers["WWW-Authenticate"] = "Bearer"
            return response
        if not key.allows(scope):
            return json_error(403, "missing_scope", f"the API key has no {scope!r} scope")
        return key

    def customer(self, request: web.Request, scope: Scope, customer_id: str | None) -> ApiKey | web.Response:
        """As :meth:`key`, and the key may act for ``customer_id`` (None: every customer)."""
        key = self.key(request, scope)
        if isinstance(key, ApiKey) and not key.may_see(customer_id):
            return forbidden_customer(key)
        return key

    def customer_query(self, request: web.Request, scope: Scope) -> tuple[ApiKey, str | None] | web.Response:
        """The key and the ``customer`` query parameter: a customer-limited key's own customer
        when the request names none, 403 when it names another."""
        key = self.key(request, scope)
        if not isinstance(key, ApiKey):
            return key
        customer = request.query.get("customer", key.customer)
        return (key, customer) if key.may_see(customer) else forbidden_customer(key)

    def customer_path(self, request: web.Request, scope: Scope, customer_id: str) -> ApiKey | web.Response:
        """As :meth:`customer`, for a customer id taken from the path (checked for shape)."""
        key = self.key(request, scope)
        if not isinstance(key, ApiKey):
            return key
        if not valid_customer_id(customer_id):
            return json_error(400, "invalid_customer_id", CUSTOMER_ID_RULE)
        return key if key.may_see(customer_id) else forbidden_customer(key)


def forbidden_customer(key: ApiKey) -> web.Response:
    return json_error(403, "other_customer", f"the API key may act only for customer {key.customer!r}")
