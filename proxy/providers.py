"""HTTP routes of the cloud providers' own wires: Bedrock runtime under ``/bedrock``.

A caller points its SDK's base URL at ``{gateway}/bedrock`` and authenticates with its gateway key
(``Authorization: Bearer``, or ``x-api-key``); the gateway routes the call to a ``kind: bedrock``
upstream and signs it there (docs/providers.md).
"""
from __future__ import annotations

from aiohttp import web

from . import pipeline
from .adapters import bedrock
from .errors import NotFound

ADAPTER: Any = None     # the app's request key for the call's adapter (its error edge renders with it)

_BEDROCK_ERRORS = bedrock.BedrockErrors()


def _bedrock(action: str):  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.StreamResponse:
        request[ADAPTER] = _BEDROCK_ERRORS                 # a bad model id is refused in Bedrock's shape
        adapter = bedrock.for_path(request.match_info["model"], action)
        request[ADAPTER] = adapter
        return await pipeline.handle(request, adapter)
    return handler


async def _bedrock_unknown(request: web.Request) -> web.StreamResponse:
    """Other Bedrock operations (Claude Code asks ``GET /inference-profiles`` first): a 404 it tolerates."""
    request[ADAPTER] = _BEDROCK_ERRORS
    raise NotFound(f"{request.method} {request.path} is not a Bedrock operation this gateway serves")


def add_routes(r: web.UrlDispatcher, adapter_key: Any) -> None:
    global ADAPTER
    ADAPTER = adapter_key
    for action in bedrock.ACTIONS:
        r.add_post(f"/bedrock/model/{{model:.+}}/{action}", _bedrock(action))
    r.add_route("*", "/bedrock/{tail:.*}", _bedrock_unknown)
