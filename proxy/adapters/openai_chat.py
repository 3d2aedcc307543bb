"""OpenAI Chat Completions (``POST /v1/chat/completions``), also Azure and
OpenAI-compatible servers.

A streamed chat call only reports usage when ``stream_options.include_usage``
is set. The gateway sets it when the client did not, and then hides that
extra final chunk (empty ``choices``) so the client sees what it asked for.
"""
from __future__ import annotations

import orjson

from ledger.events import Tokens

from ..errors import GatewayError
from ..sse import SseSplitter, data_of
from ..types import Call, Usage
from ._common import count_url_images, has_web_search, int_of, optional_bool, optional_int, parse_object, require_model, take_metadata_tags

_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error",
                404: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_exceeded",
                502: "server_error", 503: "server_error", 504: "timeout"}
_ERROR_CODES = {401: "invalid_api_key", 404: "model_not_found", 413: "request_too_large",
                502: "upstream_unreachable", 504: "upstream_timeout"}


def error_object(err: GatewayError) -> dict:
    code = {"budget": "budget_exceeded", "rate": "rate_limit_exceeded", "no_route": "no_route"}.get(err.kind) or _ERROR_CODES.get(err.status, err.kind)
    etype = "insufficient_quota" if err.kind == "budget" else _ERROR_TYPES.get(err.status, "server_error")
    return {"error": {"message": err.message, "type": etype, "param": None, "code": code}}


def openai_usage_tokens(u: dict, prompt_key: str, completion_key: str) -> Tokens:
    """OpenAI counts cache reads and cache writes inside the prompt total; we keep them apart.

    Cache writes (billed from GPT-5.6 on) land in ``cache_write_5m``, where the
    catalog keeps OpenAI's short-retention write rate.
    """
    details = u.get(prompt_key.replace("tokens", "tokens_details")) or u.get("input_tokens_details") or {}
    prompt = int_of(u, prompt_key)
    cached = int_of(details, "cached_tokens")
    written = int_of(details, "cache_write_tokens")
    out = int_of(u, completion_key)
    reasoning = int_of(u, completion_key.replace("tokens", "tokens_details"), "reasoning_tokens") or int_of(
        u, "output_tokens_details", "reasoning_tokens")
    return Tokens(input=max(prompt - cached - written, 0), cache_write_5m=written, cache_read=cached,
                  output=out, reasoning=reasoning)


class ChatMeter:
    __slots__ = ("usage", "_split", "_hide_usage", "_output_seen")

    def __init__(self, hide_usage_chunk: bool) -> None:
        self.usage = Usage()
        self._split = SseSplitter()
        self._hide_usage = hide_usage_chunk
        self._output_seen = False

    def feed(self, chunk: bytes) -> bytes:
        if not self._hide_usage:
            for event in self._split.feed(chunk):
                self._look(event)
            return chunk
        # Forward whole events only, so the usage chunk can be left out.
        kept = []
        for event in self._split.feed(chunk):
            if not self._look(event):
                kept.append(event)
        return b"".join(kept)

    def _look(self, event: bytes) -> bool:
        """Observe one event; True if it is the usage-only chunk."""
        if not self._output_seen and (b'"content":"' in event or b'"tool_calls"' in event):
            self._output_seen = b'"content":""' not in event or b'"tool_calls"' in event
        if b'"usage"' not in event or b'"usage":null' in event:
            return False
        obj = data_of(event)
        if not obj or not isinstance(obj.get("usage"), dict):
            return False
        self._take(obj)
        return not obj.get("choices")

    def _take(self, obj: dict) -> None:
        self.usage.tokens = openai_usage_tokens(obj["usage"], "prompt_tokens", "completion_tokens")
        self.usage.model_served = obj.get("model") or self.usage.model_served
        if isinstance(obj.get("service_tier"), str):
            self.usage.service_tier = obj["service_tier"]
        self.usage.complete = True

    def finish_json(self, body: bytes) -> None:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return
        if isinstance(obj, dict) and isinstance(obj.get("usage"), dict):
            self._take(obj)

    def result(self) -> Usage:
        return self.usage

    def saw_output(self) -> bool:
        return self._output_seen

    def tail(self) -> bytes:
        return self._split.pending if self._hide_usage else b""


class OpenAIChat:
    api = "chat"
    family = "openai"
    upstream_path = "/chat/completions"

    def parse(self, body: bytes) -> Call:
        obj = parse_object(body)
        model = require_model(obj)
        tags, changed = take_metadata_tags(obj, string_values_are_tags=True)
        stream = optional_bool(obj, "stream")
        hide = False
        if stream:
            opts = obj.get("stream_options")
            if not (isinstance(opts, dict) and opts.get("include_usage") is True):
                obj["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
                hide = changed = True
        n = optional_int(obj, "n") or 1
        max_out = optional_int(obj, "max_completion_tokens", "max_tokens")
        return Call(
            model=model, stream=stream, body=orjson.dumps(obj) if changed else body,
            max_output_tokens=max_out,
            service_tier=obj.get("service_tier") if isinstance(obj.get("service_tier"), str) else None,
            image_count=count_url_images(obj.get("messages")),
            web_search=has_web_search(obj.get("tools")) or "web_search_options" in obj,
            tags=tags, hide_usage_chunk=hide, choices=n,
        )

    def meter(self, call: Call) -> ChatMeter:
        return ChatMeter(hide_usage_chunk=call.hide_usage_chunk)

    def error_body(self, err: GatewayError) -> bytes:
        return orjson.dumps(error_object(err))

    def stream_error_event(self, err: GatewayError) -> bytes:
        return b"data: " + orjson.dumps(error_object(err)) + b"\n\n"
