"""HTTP routes of the cloud providers' own wires, each under its own prefix.

    /bedrock/model/{modelId}/{invoke,invoke-with-response-stream,converse,converse-stream}
    /vertex/{v1,v1beta1}/projects/{p}/locations/{l}/publishers/{anthropic,google}/models/{m}:{method}
    /gemini/{v1,v1beta,v1alpha}/models/{m}:{generateContent,streamGenerateContent,countTokens}

A caller points its SDK's base URL at the prefix and authenticates with its gateway key
(``Authorization: Bearer`` or ``x-api-key``; ``x-goog-api-key`` on the Gemini API); the gateway
routes the call to an upstream of that kind and authenticates there with its own credential
(docs/providers.md). The model is in the path, so each call gets its own adapter instance.
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable

from aiohttp import web

from . import pipeline
from .adapters import bedrock
from .adapters.gemini import METHODS, STREAM_GENERATE, GeminiGenerate, GoogleErrors
from .adapters.vertex import VertexAnthropic, model_path
from .errors import NotFound

_BEDROCK_ERRORS = bedrock.BedrockErrors()
_GOOGLE_ERRORS = GoogleErrors()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _model_and_method(target: str) -> tuple[str, str]:
    model, sep, method = target.rpartition(":")
    if not sep:
        raise NotFound("expected models/{model}:{method} in the path")
    return model, method


def _alt(method: str, request: web.Request) -> str:
    """Streams go up as SSE when the caller asked: ``alt=sse`` is the one query parameter passed on."""
    return "?alt=sse" if method == STREAM_GENERATE and request.query.get("alt") == "sse" else ""


def add_routes(r: web.UrlDispatcher, adapter_key: Any) -> None:
    """``adapter_key`` is the app's request key for the call's adapter: its error edge renders with it."""

    def bedrock_action(action: str) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            request[adapter_key] = _BEDROCK_ERRORS             # a bad model id is refused in Bedrock's shape
            adapter = bedrock.for_path(request.match_info["model"], action)
            request[adapter_key] = adapter
            return await pipeline.handle(request, adapter)
        return handler

    async def vertex(request: web.Request) -> web.StreamResponse:
        request[adapter_key] = _GOOGLE_ERRORS
        m = request.match_info
        model, method = _model_and_method(m["target"])
        publisher = m["publisher"]
        path = model_path(m["version"], m["project"], m["location"], publisher, model, method)
        if publisher == "anthropic":
            adapter: Any = VertexAnthropic(model, method, path)
        elif method in METHODS:
            adapter = GeminiGenerate("vertex", model, method, path + _alt(method, request))
        else:
            raise NotFound(f"{publisher} models' `{method}` is not served by this gateway")
        request[adapter_key] = adapter
        return await pipeline.handle(request, adapter)

    async def gemini(request: web.Request) -> web.StreamResponse:
        request[adapter_key] = _GOOGLE_ERRORS
        model, method = _model_and_method(request.match_info["target"])
        if method not in METHODS:
            raise NotFound(f"`{method}` is not served by this gateway")
        path = f"/{request.match_info['version']}/models/{model}:{method}{_alt(method, request)}"
        adapter = GeminiGenerate("gemini", model, method, path)
        request[adapter_key] = adapter
        goog = request.headers.get("x-goog-api-key")
        if goog and "x-api-key" not in request.headers:    # google-genai sends its API key there
            request = request.clone(headers={**request.headers, "x-api-key": goog})
        return await pipeline.handle(request, adapter)

    def unknown(errors: Any) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            """Other operations (Claude Code asks Bedrock for ``GET /inference-profiles`` first): a 404 it tolerates."""
            request[adapter_key] = errors
            raise NotFound(f"{request.method} {request.path} is not an operation this gateway serves")
        return handler

    for action in bedrock.ACTIONS:
        r.add_post(f"/bedrock/model/{{model:.+}}/{action}", bedrock_action(action))
    r.add_route("*", "/bedrock/{tail:.*}", unknown(_BEDROCK_ERRORS))
    r.add_post("/vertex/{version:v1|v1beta1}/projects/{project}/locations/{location}/publishers/"
               "{publisher:anthropic|google}/models/{target}", vertex)
    r.add_route("*", "/vertex/{tail:.*}", unknown(_GOOGLE_ERRORS))
    r.add_post("/gemini/{version:v1|v1beta|v1alpha}/models/{target}", gemini)
    r.add_route("*", "/gemini/{tail:.*}", unknown(_GOOGLE_ERRORS))
