"""Anthropic Messages API (``POST /v1/messages``), as Claude Code and the SDK speak it.

Usage arrives in ``message_start`` (input side, cache writes split 5m/1h,
cache reads) and cumulatively in ``message_delta`` (output, and on newer API
versions the input side again). Only events that carry ``"usage"`` are parsed.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson

from llmgw.core.events import Tokens

from ..errors import GatewayError
from ..sse import SseSplitter, event_name, fields_of, loads_object
from ..types import Call, Usage
from ..usage import UsageReader, sane
from ._common import (NO_TOKENS, count_url_images, has_web_search, optional_bool, parse_object, require_messages,
                      require_model, require_positive_int, take_metadata_tags)

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                502: "api_error", 503: "overloaded_error", 504: "timeout_error"}


def speed_tier(speed: object) -> str:
    """Fast mode (``speed: "fast"``) bills at the model's ``fast`` tier. Anthropic has no
    project-wide speed, so a request without it is ``standard``, never held at fast rates."""
    return "fast" if speed == "fast" else "standard"


def error_object(err: GatewayError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": _ERROR_TYPES.get(err.status, "api_error"), "message": err.message}}


class AnthropicMeter:
    """Reads usage from ``message_start`` (input side) and ``message_delta`` (cumulative totals).

    What an event is comes from its ``event:`` line, which Anthropic always
    sends: a ``content_block_delta`` (the bulk of a stream) is counted without
    being parsed, ``message_start``, ``message_delta`` and ``error`` are
    parsed and checked by their JSON ``type``, the rest is relayed untouched.
    An event without an ``event:`` line is parsed and judged by its ``type``.
    """

    __slots__ = ("usage", "_call", "_read", "_split", "_output_seen", "_delta_bytes", "_deltas",
                 "_got_input", "_final")

    def __init__(self, call: Call | None = None) -> None:
        self.usage = Usage(tokens=NO_TOKENS)
        self._call = call
        self._read = UsageReader()
        self._split = SseSplitter()
        self._output_seen = False
        self._delta_bytes = 0
        self._deltas = 0
        self._got_input = self._final = False

    def feed(self, chunk: bytes) -> bytes:
        for event in self._split.feed(chunk):
            name = event_name(event)
            if name == b"content_block_delta":
                self._delta(event)
            elif name in _PARSED or not name:
                obj = loads_object(fields_of(event)[1])
                if obj is not None and obj.get("type") == "content_block_delta":
                    self._delta(event)
                else:
                    self._observe(obj)
        return chunk

    def _delta(self, event: bytes) -> None:
        self._output_seen = True
        self._deltas += 1
        self._delta_bytes += len(event)

    def _observe(self, obj: dict[str, Any] | None) -> None:
        if obj is None:
            return
        t = obj.get("type")
        if t == "message_start":
            message = obj.get("message")
            msg = message if isinstance(message, dict) else {}
            model = msg.get("model")
            self.usage.model_served = model if isinstance(model, str) and model else self.usage.model_served
            self._take(msg.get("usage"), final=False)
        elif t == "message_delta":
            self._take(obj.get("usage"), final=True)
        elif t == "error":
            err = obj.get("error")
            self.usage.error_type = str(err.get("type", "error") if isinstance(err, dict) else "error")

    def _take(self, u: object, final: bool) -> None:
        """Merge a usage block: message_delta counts are cumulative, and on
        older API versions it carries output only, so keep earlier input counts.
        The call is complete once a final block with an output count was read."""
        if not isinstance(u, dict):
            if final:
                self._read.flag("missing_usage")
            return
        r, old = self._read, self.usage.tokens
        cw_5m, cw_1h = old.cache_write_5m, old.cache_write_1h
        if isinstance(u.get("cache_creation"), dict):
            cw_5m = r.count(u, "cache_creation", "ephemeral_5m_input_tokens", name="cache_write") or 0
            cw_1h = r.count(u, "cache_creation", "ephemeral_1h_input_tokens", name="cache_write") or 0
        total = r.count(u, "cache_creation_input_tokens", name="cache_write")
        if total is not None and total != cw_5m + cw_1h:
            # no split given, or a partial one: the rest is 5-minute (the default TTL)
            cw_1h = min(cw_1h, total)
            cw_5m = total - cw_1h
        inp = r.count(u, "input_tokens", name="input")
        read = r.count(u, "cache_read_input_tokens", name="cache_read")
        out = r.count(u, "output_tokens", name="output")
        self.usage.tokens = Tokens(
            input=inp if inp is not None else old.input,
            cache_write_5m=cw_5m, cache_write_1h=cw_1h,
            cache_read=read if read is not None else old.cache_read,
            output=max(out or 0, old.output),
        )
        self._got_input = self._got_input or inp is not None
        searches = r.count(u, "server_tool_use", "web_search_requests", name="web_search")
        self.usage.web_search_calls = max(self.usage.web_search_calls, searches or 0)
        if isinstance(u.get("speed"), str):
            self.usage.service_tier = speed_tier(u["speed"])
        if final:
            self._final = True
            if out is None:
                r.flag("missing_output")
            else:
                self.usage.complete = True

    def finish_json(self, body: bytes) -> None:
        obj = loads_object(body)
        if obj is not None and obj.get("type") == "message":
            model = obj.get("model")
            self.usage.model_served = model if isinstance(model, str) else ""
            self._take(obj.get("usage"), final=True)

    def result(self) -> Usage:
        usage = self.usage
        if not usage.complete and self._deltas:
            # Client left mid-stream: the provider bills what it generated.
            # Each delta is at least one token; past the ~90 bytes of framing per
            # event, count ~3 bytes of text per token (errs high, like a budget should).
            est = max(self._deltas, (self._delta_bytes - 90 * self._deltas) // 3)
            if self._call is not None and self._call.max_output_tokens is not None:
                est = min(est, self._call.max_output_tokens)   # the provider never generates past max_tokens
            usage = replace(usage, tokens=replace(usage.tokens, output=max(usage.tokens.output, est)))
        extra = ["missing_input"] if self._final and not self._got_input else []
        if self._read.unknown or extra:
            usage = replace(usage, complete=False)      # an estimate, not the provider's word
        return sane(usage, self._call, [*self._read.anomalies, *extra])

    def tail(self) -> bytes:
        return b""

    def saw_output(self) -> bool:
        return self._output_seen


_PARSED = frozenset({b"message_start", b"message_delta", b"error"})


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
        return AnthropicMeter(call)

    def error_body(self, err: GatewayError) -> bytes:
        return orjson.dumps(error_object(err))


class AnthropicCountTokens(AnthropicMessages):
    """Free: counted for nobody's budget, but still authenticated and routed."""

    api = "count_tokens"
    upstream_path = "/v1/messages/count_tokens"

    def parse(self, body: bytes) -> Call:
        obj = parse_object(body)
        model = require_model(obj)
        require_messages(obj)
        return Call(model=model, stream=False, body=body, metered=False)
