"""Gemini ``generateContent`` / ``streamGenerateContent``, on the Gemini API and on Vertex AI.

The model is in the path (``models/{model}:generateContent``), so one adapter instance is made per
call. Usage is ``usageMetadata``: ``promptTokenCount`` includes ``cachedContentTokenCount`` (kept apart
here, priced as cache reads), ``thoughtsTokenCount`` is output billed beside ``candidatesTokenCount``,
``toolUsePromptTokenCount`` is input. A stream repeats the cumulative usage on its chunks: the last one
seen counts, never the sum. ``streamGenerateContent`` without ``alt=sse`` answers one JSON array.
"""
from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import orjson

from llmgw.core.events import Tokens

from ..errors import BadRequest, GatewayError
from ..sse import SseSplitter, data_of
from ..types import Call, Usage
from ..usage import UsageReader, sane, settled
from ._common import NO_TOKENS, optional_int, parse_object

GENERATE, STREAM_GENERATE, COUNT_TOKENS = "generateContent", "streamGenerateContent", "countTokens"
METHODS = (GENERATE, STREAM_GENERATE, COUNT_TOKENS)
_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
_GRPC = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
         413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 502: "UNAVAILABLE", 503: "UNAVAILABLE",
         504: "DEADLINE_EXCEEDED"}


def error_object(err: GatewayError) -> dict[str, Any]:
    """Google's error shape (Gemini API and Vertex AI alike)."""
    return {"error": {"code": err.status, "message": err.message, "status": _GRPC.get(err.status, "INTERNAL")}}


class GoogleErrors:
    def error_body(self, err: GatewayError) -> bytes:
        return orjson.dumps(error_object(err))


def valid_model(model: str) -> str:
    if not _MODEL.match(model):
        raise BadRequest("the model name in the path is not a model id")
    return model


def gemini_tokens(u: dict[str, Any], r: UsageReader | None = None) -> Tokens:
    r = r or UsageReader()
    prompt = (r.count(u, "promptTokenCount", name="input") or 0) + (r.count(u, "toolUsePromptTokenCount", name="input") or 0)
    cached = r.count(u, "cachedContentTokenCount", name="cache_read") or 0
    thoughts = r.count(u, "thoughtsTokenCount", name="reasoning") or 0
    return Tokens(input=max(prompt - cached, 0), cache_read=cached,
                  output=(r.count(u, "candidatesTokenCount", name="output") or 0) + thoughts, reasoning=thoughts)


class GeminiMeter:
    __slots__ = ("usage", "_split", "_output_seen", "_chunks", "_chunk_bytes", "_call", "_read")

    def __init__(self, call: Call | None = None) -> None:
        self.usage = Usage(tokens=NO_TOKENS)
        self._split = SseSplitter()
        self._output_seen = False
        self._chunks = 0
        self._chunk_bytes = 0
        self._call = call
        self._read = UsageReader()

    def feed(self, chunk: bytes) -> bytes:
        for event in self._split.feed(chunk):
            obj = data_of(event)
            if obj is not None:
                self._take(obj, len(event))
        return chunk

    def _take(self, obj: dict[str, Any], size: int = 0) -> None:
        if isinstance(obj.get("candidates"), list) and obj["candidates"]:
            self._output_seen = True
            self._chunks += 1
            self._chunk_bytes += size
        if isinstance(obj.get("error"), dict):
            self.usage.error_type = str(obj["error"].get("status") or "error")
        u = obj.get("usageMetadata")
        if isinstance(u, dict):
            self._read = UsageReader()                    # only the latest block's anomalies count
            self.usage.tokens = gemini_tokens(u, self._read)          # cumulative: the latest replaces, never adds
            # the chunk with the finish reason carries the final count; earlier ones are a floor
            self.usage.complete = self.usage.complete or _finished(obj)
        version = obj.get("modelVersion")
        if isinstance(version, str):
            self.usage.model_served = version

    def finish_json(self, body: bytes) -> None:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return
        for item in obj if isinstance(obj, list) else [obj]:     # streamGenerateContent without alt=sse
            if isinstance(item, dict):
                self._take(item)
        if self.usage.tokens.total:
            self.usage.complete = True

    def result(self) -> Usage:
        usage = self.usage
        if not usage.complete and self._chunks:
            # Cut mid-stream: the usage seen so far is a floor; the text streamed bounds the output too.
            est = max(self._chunks, (self._chunk_bytes - 200 * self._chunks) // 3)
            if self._call is not None and self._call.max_output_tokens:
                est = min(est, self._call.max_output_tokens * max(self._call.choices, 1))
            usage = replace(usage, tokens=replace(usage.tokens, output=max(usage.tokens.output, est)))
        return sane(settled(usage, self._read), self._call)

    def tail(self) -> bytes:
        return b""

    def saw_output(self) -> bool:
        return self._output_seen


def _finished(obj: dict[str, Any]) -> bool:
    cands = obj.get("candidates")
    return isinstance(cands, list) and any(isinstance(c, dict) and c.get("finishReason") for c in cands)


class GeminiGenerate(GoogleErrors):
    """``models/{model}:generateContent``, ``:streamGenerateContent`` and the free ``:countTokens``; ``family`` is the upstream kind
    that serves it (``gemini`` for the Gemini API, ``vertex`` for Vertex AI)."""

    api = "gemini_generate"

    def __init__(self, family: str, model: str, method: str, upstream_path: str) -> None:
        self.family, self.model, self.method = family, valid_model(model), method
        self.upstream_path = upstream_path

    def parse(self, body: bytes) -> Call:
        obj = parse_object(body)
        if self.method == COUNT_TOKENS:               # free: authenticated and routed, never metered
            return Call(model=self.model, stream=False, body=body, metered=False)
        cfg = obj.get("generationConfig")
        if cfg is not None and not isinstance(cfg, dict):
            raise BadRequest("`generationConfig` must be an object")
        cfg = cfg or {}
        n = optional_int(cfg, "candidateCount") or 1
        tools = obj.get("tools")
        search = isinstance(tools, list) and any(isinstance(t, dict) and ("googleSearch" in t or "google_search" in t)
                                                 for t in tools)
        return Call(model=self.model, stream=self.method == STREAM_GENERATE, body=body,
                    max_output_tokens=optional_int(cfg, "maxOutputTokens"), web_search=search, choices=n)

    def meter(self, call: Call) -> GeminiMeter:
        return GeminiMeter(call)
