"""Errors of the admin surface, and the one JSON shape they are rendered in.

    GatewayError (proxy/errors.py)
    ├── BadRequest     400 invalid_request   malformed JSON, unknown field value
    ├── AuthError      401 auth              no credential, a client key, a bad token
    ├── Forbidden      403 forbidden         the role or the scope does not allow it   (here)
    ├── NotFound       404 not_found         no such org, workspace, user, key, request
    ├── Conflict       409 conflict          already exists, already decided           (here)
    └── ConfigUnavailable 503 unavailable    the config log cannot take the change (Kafka away)  (here)

Every admin, LiteLLM-compatible and increase-request route answers errors as
``{"error": {"message", "type", "code"}}``; ``render`` is the only place that
builds that body.
"""
from __future__ import annotations

import orjson
from aiohttp import web

from llmgw.proxy.errors import AuthError, BadRequest, GatewayError, NotFound

__all__ = ["AuthError", "BadRequest", "ConfigUnavailable", "Conflict", "Forbidden", "NotFound", "render"]


class Forbidden(GatewayError):
    status, kind, should_retry = 403, "forbidden", False


class Conflict(GatewayError):
    status, kind, should_retry = 409, "conflict", False


class ConfigUnavailable(GatewayError):
    """A write the config log did not take: nothing changed, and the same request may be retried."""
    status, kind, should_retry = 503, "unavailable", True


_TYPES = {"invalid_request": "invalid_request_error", "auth": "authentication_error",
          "forbidden": "permission_error", "not_found": "not_found_error", "conflict": "conflict_error",
          "unavailable": "service_unavailable_error"}


def render(err: GatewayError) -> web.Response:
    body = {"error": {"message": err.message, "type": _TYPES.get(err.kind, "api_error"),
                      "code": getattr(err, "code", None) or err.kind}}
    resp = web.Response(status=err.status, body=orjson.dumps(body), content_type="application/json",
                        headers=err.response_headers())
    if err.close_connection:
        resp.force_close()
    return resp
