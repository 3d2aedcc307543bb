"""Vertex AI: Anthropic models via ``:rawPredict`` / ``:streamRawPredict`` (Anthropic Messages bodies,
Anthropic SSE back), Gemini via ``:generateContent`` / ``:streamGenerateContent`` (``adapters/gemini.py``).

Paths name project, location, publisher and model:
``/v1/projects/{p}/locations/{l}/publishers/anthropic/models/{m}:streamRawPredict``. The project and
location that go upstream are the gateway's (``kind: vertex`` upstream config), never the caller's: a
caller must not choose whose Google Cloud project pays. Upstream auth is a Google OAuth bearer token
(``GoogleBearer``); callers present their gateway key (``x-api-key`` or ``Authorization: Bearer``).
"""
from __future__ import annotations

import asyncio
import re
from typing import Any, MutableMapping

import orjson

from ..errors import BadRequest, UpstreamError
from ..types import Call
from ._common import count_url_images, has_web_search, optional_bool, optional_int, parse_object, require_model, take_metadata_tags
from .anthropic_messages import AnthropicMeter, speed_tier
from .gemini import GoogleErrors, valid_model

RAW_PREDICT, STREAM_RAW_PREDICT = "rawPredict", "streamRawPredict"
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_PREFIX = re.compile(r"^/(v1[a-z0-9]*)/projects/[^/]+/locations/[^/]+/")


def checked_segment(value: str, what: str) -> str:
    if not _SEGMENT.match(value):
        raise BadRequest(f"the {what} in the path is not a valid Vertex AI {what}")
    return value


def model_path(version: str, project: str, location: str, publisher: str, model: str, method: str) -> str:
    return (f"/{version}/projects/{checked_segment(project, 'project')}/locations/{checked_segment(location, 'location')}"
            f"/publishers/{publisher}/models/{model}:{method}")


def with_project(path: str, project: str, location: str) -> str:
    """The caller's path with the gateway's own project and location in it."""
    return _PREFIX.sub(lambda m: f"/{m.group(1)}/projects/{project}/locations/{location}/", path, count=1)


class VertexAnthropic(GoogleErrors):
    family = "vertex"
    api = "vertex_messages"

    def __init__(self, model: str, method: str, upstream_path: str) -> None:
        if method not in (RAW_PREDICT, STREAM_RAW_PREDICT):
            raise BadRequest(f"`{method}` is not a Vertex AI method for Anthropic models; use rawPredict or streamRawPredict")
        self.model, self.method, self.upstream_path = valid_model(model), method, upstream_path

    def parse(self, body: bytes) -> Call:
        obj = parse_object(body)
        if self.model == "count-tokens":            # free, like /v1/messages/count_tokens
            return Call(model=require_model(obj), stream=False, body=body, metered=False)
        stream = optional_bool(obj, "stream") or self.method == STREAM_RAW_PREDICT
        tags, changed = take_metadata_tags(obj, string_values_are_tags=False)
        return Call(model=self.model, stream=stream, body=orjson.dumps(obj) if changed else body,
                    max_output_tokens=optional_int(obj, "max_tokens"), image_count=count_url_images(obj.get("messages")),
                    web_search=has_web_search(obj.get("tools")), tags=tags, service_tier=speed_tier(obj.get("speed")))

    def meter(self, call: Call) -> AnthropicMeter:
        return AnthropicMeter(call)


class GoogleBearer:
    """``Authorization: Bearer`` with a Google OAuth access token: a fixed one (``access_token``), or one
    minted from a service-account JSON by google-auth (``credentials_file``), refreshed off the event loop
    before it expires. The caller's own Google credentials never go up."""

    def __init__(self, access_token: str = "", credentials_file: str = "") -> None:
        self._token, self._creds, self._lock = access_token, None, asyncio.Lock()
        if not access_token:
            if not credentials_file:
                raise ValueError("vertex upstream: set `access_token` or `credentials_file`")
            try:
                from google.oauth2 import service_account
            except ImportError:
                raise ValueError("vertex upstream: `credentials_file` needs google-auth "
                                 "(pip install 'llmgw[vertex]')") from None
            self._creds = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
                credentials_file, scopes=["https://www.googleapis.com/auth/cloud-platform"])

    async def token(self) -> str:
        creds = self._creds
        if creds is None:
            return self._token
        if creds.valid:                   # google-auth counts a token as expired minutes before it is
            token: str = creds.token
            return token
        async with self._lock:
            if not creds.valid:
                from google.auth.exceptions import GoogleAuthError
                from google.auth.transport.requests import Request
                try:
                    await asyncio.to_thread(creds.refresh, Request())
                except GoogleAuthError as exc:
                    raise UpstreamError(f"could not get a Google access token: {type(exc).__name__}") from None
            refreshed: str = creds.token
            return refreshed

    async def sign(self, method: str, url: str, headers: MutableMapping[str, str], body: bytes | None) -> None:
        _drop_google_auth(headers)
        headers["Authorization"] = "Bearer " + await self.token()


class GoogleApiKey:
    """The Gemini API's ``x-goog-api-key``; the caller's (its gateway key) is dropped, always."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key

    async def sign(self, method: str, url: str, headers: MutableMapping[str, str], body: bytes | None) -> None:
        _drop_google_auth(headers)
        if self.api_key:
            headers["x-goog-api-key"] = self.api_key


def _drop_google_auth(headers: MutableMapping[str, Any]) -> None:
    for name in [k for k in headers if k.lower() in ("authorization", "x-goog-api-key", "x-goog-user-project")]:
        headers.pop(name, None)
