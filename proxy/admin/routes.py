"""Routes of the governance part: ``/admin/...``, the LiteLLM-compatible calls, and the one
client-key call (``/v1/llmgw/increase-requests``). ``create_app`` adds ``admin_errors`` to its
middlewares, ``runtime.admin_ctx`` to its cleanup contexts and ``add_routes`` to its router.

Every route here answers errors as ``{"error": {"message", "type", "code"}}``
(``errors.render``), whatever API shape the rest of the gateway speaks.
"""
from __future__ import annotations

import logging
from typing import Awaitable, Callable

import yaml
from aiohttp import web

from llmgw.ledger.kafka_config import ConfigLogUnavailable
from llmgw.proxy.errors import GatewayError

from . import (http_budgets, http_entities, http_governance, http_keys, http_limits, http_local, litellm,
               litellm_spend, litellm_teams)
from .errors import BadRequest, ConfigUnavailable, NotFound, render

LITELLM_PREFIXES = ("/key/", "/team/", "/user/", "/spend/", "/global/", "/budget/", "/customer/", "/organization/",
                    "/model/")
PREFIXES = ("/admin", "/key/", "/team/", "/user/", "/v1/llmgw/", "/spend/", "/global/", "/budget/", "/customer/",
            "/organization/", "/model/")
log = logging.getLogger("llmgw.admin")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_admin_path(path: str) -> bool:
    return path.startswith(PREFIXES)       # in C: this runs on every request ("/admin" is a prefix too)


@web.middleware
async def admin_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render this part's errors in its own JSON shape; other paths pass through untouched."""
    if not is_admin_path(request.path):
        return await handler(request)
    litellm = request.path.startswith(LITELLM_PREFIXES)
    try:
        return await handler(request)
    except GatewayError as err:
        return render(err, litellm)
    except ConfigLogUnavailable as exc:                # a read of the config log while Kafka is away
        log.error("%s %s: config log unavailable: %s", request.method, request.path, exc,
                  extra={"event": "admin_config_unavailable"})
        return render(ConfigUnavailable(f"the config log is unreachable ({exc}); retry once it is back",
                                        retry_after_s=5), litellm)
    except (ValueError, yaml.YAMLError) as exc:        # validation in the pure functions
        return render(BadRequest(str(exc)), litellm)
    except web.HTTPNotFound:
        return render(NotFound(f"no route for {request.method} {request.path}"), litellm)
    except web.HTTPMethodNotAllowed:
        return render(NotFound(f"{request.method} is not supported on {request.path}"), litellm)


def add_routes(router: web.UrlDispatcher) -> None:
    for module in (http_entities, http_keys, http_budgets, http_limits, http_governance, http_local, litellm,
                   litellm_teams, litellm_spend):
        router.add_routes(module.routes)
