"""Anthropic Messages API (``POST /v1/messages``), as Claude Code and the SDK speak it.

Usage arrives in ``message_start`` (input side, cache writes split 5m/1h,
cache reads) and cumulatively in ``message_delta`` (output, and on newer API
versions the input side again). Only events that carry ``"usage"`` are parsed.
"""
from __future__ import annotations

import orjson

from ledger.events import Tokens

from ..errors import GatewayError
from ..sse import SseSplitter, data_of
from ..types import Call, Usage
from ._common import (count_url_images, has_web_search, int_of, optional_bool, parse_object, require_messages,
                      require_model, require_positive_int, take_metadata_tags)

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                502: "api_error", 503: "overloaded_error", 504: "timeout_error"}


def speed_tier(speed: object) -> str:
    """Fast mode (``speed: "fast"``) bills at the model's ``fast`` tier. Anthropic has no
    project-wide speed, so a request without it is ``standard``, never held at fast rates."""
    return "fast" if speed == "fast" else "standard"


def error_object(err: GatewayError) -> dict:
    return {"type": "error", "error": {"type": _ERROR_TYPES.get(err.status, "api_error"), "message": err.message}}


class AnthropicMeter:
    __slots__ = ("usage", "_split", "_output_seen", "_delta_bytes", "_deltas", "_max_output")

    def __init__(self, max_output_tokens: int | None = None) -> None:
        self.usage = Usage()
        self._max_output = max_output_tokens
        self._split = SseSplitter()
        self._output_seen = False
        self._delta_bytes = 0
        self._deltas = 0

    def feed(self, chunk: bytes) -> bytes:
        for event in self._split.feed(chunk):
            if b"content_block_delta" in event:
                self._output_seen = True
                self._deltas += 1
                self._delta_bytes += len(event)
            elif b'"usage"' in event or b"event: error" in event:
                self._observe(data_of(event))
        return chunk

    def _observe(self, obj: dict | None) -> None:
        if obj is None:
            return
        t = obj.get("type")
        if t == "message_start":
            msg = obj.get("message") or {}
            self.usage.model_served = msg.get("model") or self.usage.model_served
            self._take(msg.get("usage") or {}, final=False)
        elif t == "message_delta":
            self._take(obj.get("usage") or {}, final=True)
        elif t == "error":
            self.usage.error_type = str((obj.get("error") or {}).get("type", "error"))

    def _take(self, u: dict, final: bool) -> None:
        """Merge a usage block: message_delta counts are cumulative, and on
        older API versions it carries output only, so keep earlier input counts."""
        old = self.usage.tokens
        cw_5m, cw_1h = old.cache_write_5m, old.cache_write_1h
        if "cache_creation" in u:
            cw_5m = int_of(u, "cache_creation", "ephemeral_5m_input_tokens")
            cw_1h = int_of(u, "cache_creation", "ephemeral_1h_input_tokens")
        if "cache_creation_input_tokens" in u:
            total = int_of(u, "cache_creation_input_tokens")
            if total != cw_5m + cw_1h:   # no split given, or a partial one: the rest is 5-minute (the default TTL)
                cw_1h = min(cw_1h, total)
                cw_5m = total - cw_1h
        tokens = Tokens(
            input=int_of(u, "input_tokens") if "input_tokens" in u else old.input,
            cache_write_5m=cw_5m,
            cache_write_1h=cw_1h,
            cache_read=int_of(u, "cache_read_input_tokens") if "cache_read_input_tokens" in u else old.cache_read,
            output=max(int_of(u, "output_tokens"), old.output),
        )
        self.usage.tokens = tokens
        self.usage.web_search_calls = max(self.usage.web_search_calls,
                                          int_of(u, "server_tool_use", "web_search_requests"))
        if isinstance(u.get("speed"), str):
            self.usage.service_tier = speed_tier(u["speed"])
        if final:
            self.usage.complete = True

    def finish_json(self, body: bytes) -> None:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return
        if isinstance(obj, dict) and obj.get("type") == "message":
            self.usage.model_served = obj.get("model") or ""
            self._take(obj.get("usage") or {}, final=True)

    def result(self) -> Usage:
        if not self.usage.complete and self._deltas:
            # Client left mid-stream: the provider bills what it generated.
            # Each delta is at least one token; past the ~90 bytes of framing
            # per event, count ~3 bytes of text per token (errs high, like a budget should).
            est = max(self._deltas, (self._delta_bytes - 90 * self._deltas) // 3)
            if self._max_output:
                est = min(est, self._max_output)      # the provider never generates past max_tokens
            self.usage.tokens = Tokens(**{**_as_dict(self.usage.tokens), "output": max(self.usage.tokens.output, est)})
        return self.usage

    def tail(self) -> bytes:
        return b""

    def saw_output(self) -> bool:
        return self._output_seen


def _as_dict(t: Tokens) -> dict[str, int]:
    return {"input": t.input, "cache_write_5m": t.cache_write_5m, "cache_write_1h": t.cache_write_1h,
            "cache_read": t.cache_read, "output": t.output, "reasoning": t.reasoning}


class AnthropicMessages:
    api = "messages"
    family = "anthropic"
    upstream_path = "/v1/messages"

    def parse(self, body: bytes) -> Call:
        obj = parse_object(body)
        model = require_model(obj)
        require_messages(obj)
        max_tokens = require_positive_int(obj, "max_tokens")
        tags, changed = take_metadata_tags(obj, string_values_are_tags=False)
        return Call(
            model=model,
            stream=optional_bool(obj, "stream"),
            body=orjson.dumps(obj) if changed else body,
            max_output_tokens=max_tokens,
            image_count=count_url_images(obj.get("messages")),
            web_search=has_web_search(obj.get("tools")),
            tags=tags,
            service_tier=speed_tier(obj.get("speed")),
        )

    def meter(self, call: Call) -> AnthropicMeter:
        return AnthropicMeter(call.max_output_tokens)

    def error_body(self, err: GatewayError) -> bytes:
        return orjson.dumps(error_object(err))

    def stream_error_event(self, err: GatewayError) -> bytes:
        return b"event: error\ndata: " + orjson.dumps(error_object(err)) + b"\n\n"


class AnthropicCountTokens(AnthropicMessages):
    """Free: counted for nobody's budget, but still authenticated and routed."""

    api = "count_tokens"
    upstream_path = "/v1/messages/count_tokens"

    def parse(self, body: bytes) -> Call:
        obj = parse_object(body)
        model = require_model(obj)
        require_messages(obj)
        return Call(model=model, stream=False, body=body, metered=False)
