"""Errors of the admin surface, and the one JSON shape they are rendered in.

    GatewayError (proxy/errors.py)
    ├── BadRequest     400 invalid_request   malformed JSON, unknown field value
    ├── AuthError      401 auth              no credential, a client key, a bad token
    ├── Forbidden      403 forbidden         the role or the scope does not allow it   (here)
    ├── NotFound       404 not_found         no such org, workspace, user, key, request
    ├── Conflict       409 conflict          already exists, already decided           (here)
    └── ConfigUnavailable 503 unavailable    the config log cannot take the change (Kafka away)  (here)

Every admin and increase-request route answers errors as
``{"error": {"message", "type", "code"}}``; the LiteLLM-compatible routes answer
in LiteLLM's ``ProxyException`` shape, ``{"error": {"message", "type", "param",
"code": "<status as a string>"}}`` (litellm/proxy/_types.py ``ProxyException.to_dict``),
with its types: ``auth_error`` for a refused caller (401, 403),
``not_found_error`` for 404, ``invalid_request_error`` for the rest below 500.
``render`` is the only place that builds either body.
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


_LITELLM_TYPES = {401: "auth_error", 403: "auth_error", 404: "not_found_error"}


def render(err: GatewayError, litellm: bool = False) -> web.Response:
    if litellm:
        body = {"error": {"message": err.message,
                          "type": _LITELLM_TYPES.get(err.status, "invalid_request_error" if err.status < 500
                                                     else "internal_server_error"),
                          "param": None, "code": str(err.status)}}
    else:
        body = {"error": {"message": err.message, "type": _TYPES.get(err.kind, "api_error"),
                          "code": getattr(err, "code", None) or err.kind}}
    resp = web.Response(status=err.status, body=orjson.dumps(body), content_type="application/json",
                        headers=err.response_headers())
    if err.close_connection:
        resp.force_close()
    return resp
