"""OpenAI Chat Completions (``POST /v1/chat/completions``), also Azure and
OpenAI-compatible servers.

A streamed chat call only reports usage when ``stream_options.include_usage``
is set. The gateway sets it when the client did not, and then hides that
extra final chunk (empty ``choices``) so the client sees what it asked for.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import orjson

from llmgw.core.events import Tokens

from ..errors import GatewayError
from ..sse import SseSplitter, data_of, loads_object
from ..types import Call, Usage
from ..usage import UsageReader, sane, settled
from ._common import (NO_TOKENS, count_url_images, has_web_search, optional_bool, optional_int, parse_object,
                      require_messages, require_model, take_metadata_tags)

_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error",
                404: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_exceeded",
                502: "server_error", 503: "server_error", 504: "timeout"}
_ERROR_CODES = {401: "invalid_api_key", 404: "model_not_found", 413: "request_too_large",
                502: "upstream_unreachable", 504: "upstream_timeout"}


def error_object(err: GatewayError) -> dict[str, Any]:
    code = {"budget": "budget_exceeded", "rate": "rate_limit_exceeded", "no_route": "no_route"}.get(err.kind) or _ERROR_CODES.get(err.status, err.kind)
    etype = "insufficient_quota" if err.kind == "budget" else _ERROR_TYPES.get(err.status, "server_error")
    if err.client == "codex" and err.codex_final:
        # Codex shows a fixed text for insufficient_quota; for usage_limit_reached it shows the reset
        # time (resets_at) and the x-codex-promo-message header (GatewayError.response_headers)
        return {"error": {"message": err.message, "type": "usage_limit_reached", "param": None, "code": code,
                          "resets_at": err.resets_at_s, "resets_in_seconds": err.retry_after_s}}
    return {"error": {"message": err.message, "type": etype, "param": None, "code": code}}


_USAGE_OBJECT = re.compile(rb'usage"(?:\s|data:)*:(?:\s|data:)*\{')
_ERROR_OBJECT = re.compile(rb'error"(?:\s|data:)*:(?:\s|data:)*\{')


# How OpenAI ends every chunk once usage was asked for: an event whose one "usage" is this one holds none.
_NULL_USAGE_LAST = b'"usage":null}\n\n'


def _may_hold_usage(event: bytes) -> bool:
    """False only for an event that cannot hold a ``usage`` object (see ``ChatMeter``)."""
    if event.find(b"\\u00") >= 0:
        return True
    n = event.count(b"usage")
    if n == 0 or (n == 1 and event.endswith(_NULL_USAGE_LAST)) or n == event.count(b'"usage":null'):
        return False
    return _USAGE_OBJECT.search(event) is not None


def _may_hold_error(event: bytes) -> bool:
    """False only for an event that cannot be an in-stream error ``{"error": {...}}`` (its key is
    written as those five letters or with a ``\\u00`` escape, which ``_may_hold_usage`` takes)."""
    return event.find(b"error") >= 0 and _ERROR_OBJECT.search(event) is not None


def is_codex(headers: Mapping[str, str]) -> bool:
    """Codex CLI (and its IDE extension) names itself in ``originator`` and its user agent."""
    return headers.get("originator", "").startswith("codex") or headers.get("user-agent", "").startswith("codex")


def openai_usage_tokens(u: dict[str, Any], prompt_key: str, completion_key: str, r: UsageReader | None = None,
                        output_required: bool = True) -> Tokens:
    """OpenAI counts cache reads and cache writes inside the prompt total; we keep them apart.

    Cache writes (billed from GPT-5.6 on) land in ``cache_write_5m``, where the
    catalog keeps OpenAI's short-retention write rate. A missing prompt or
    completion count is flagged on ``r`` (``missing_input``/``missing_output``),
    as are cached tokens above the prompt total (``cache_above_prompt``).
    """
    r = r if r is not None else UsageReader()
    details_key = prompt_key.replace("tokens", "tokens_details")
    details = u.get(details_key) if isinstance(u.get(details_key), dict) else u.get("input_tokens_details")
    prompt = r.count(u, prompt_key, name="input")
    cached = r.count(details, "cached_tokens", name="cache_read") or 0
    written = r.count(details, "cache_write_tokens", name="cache_write") or 0
    out = r.count(u, completion_key, name="output")
    if prompt is None:
        r.flag("missing_input", unknown=True)
    if out is None and output_required:
        r.flag("missing_output", unknown=True)
    prompt = prompt or 0
    if cached + written > prompt:
        r.flag("cache_above_prompt")
    reasoning = r.count(u, completion_key.replace("tokens", "tokens_details"), "reasoning_tokens", name="reasoning")
    if reasoning is None:
        reasoning = r.count(u, "output_tokens_details", "reasoning_tokens", name="reasoning")
    return Tokens(input=max(prompt - cached - written, 0), cache_write_5m=written, cache_read=cached,
                  output=out or 0, reasoning=reasoning or 0)


_SHORT_RETENTION = frozenset({"30m", "in_memory", "in-memory"})


def asks_long_cache_retention(obj: dict[str, Any]) -> bool:
    """Whether the request keeps its prompt-cache writes past the 30-minute default:
    ``prompt_cache_options.ttl`` (GPT-5.6 and later, e.g. ``"12h"``) or
    ``prompt_cache_retention`` (``"24h"``, earlier models). Usage reports every write
    in one ``cache_write_tokens``, so the request is what says which rate they bill at."""
    opts = obj.get("prompt_cache_options")
    ttl = opts.get("ttl") if isinstance(opts, dict) else None
    return any(isinstance(v, str) and v and v not in _SHORT_RETENTION
               for v in (ttl, obj.get("prompt_cache_retention")))


class ChatMeter:
    """Chat streams have no ``event:`` lines, so events are told apart by their parsed JSON.

    Parsing every chunk would cost a JSON decode per token, so a chunk is
    parsed only when it may matter:

    * until the first output is seen (the role chunk, then the first content
      or tool-call chunk), every chunk, so ``saw_output`` comes from the
      parsed ``delta``;
    * after that, a chunk that may hold a usage object: one whose bytes have
      ``usage"`` then ``:`` then ``{`` with only whitespace (or the
      ``data:`` of a new line) between, or any ``\\u00`` escape. That cannot
      miss the usage chunk: its key ``usage`` is written either as those five
      letters or with a letter escaped (``\\uXXXX`` is the only escape a
      letter has, ``\\u0061`` to ``\\u007a``), and only whitespace may
      stand between a key, its colon and its value, whatever the key order or
      pretty-printing. The ``"usage":null`` every chunk carries once usage was
      asked for, and text that mentions usage (its quotes are escaped), are
      not parsed. ``tests/test_meter_properties.py`` checks this over
      re-serialized and re-chunked streams;
    * an in-stream error (``{"error": {...}}``, which OpenAI and compatible
      servers send when a stream fails after it began), found the same way
      by its key, so the call is recorded as an upstream error.

    The usage chunk the gateway asked for (``stream_options.include_usage``,
    ``hide_usage_chunk``) is the one whose parsed JSON has a ``usage`` object
    and no choices; only that event is held back from the client.
    """

    __slots__ = ("usage", "_call", "_read", "_split", "_hide_usage", "_output_seen")

    def __init__(self, hide_usage_chunk: bool, call: Call | None = None) -> None:
        self.usage = Usage(tokens=NO_TOKENS)
        self._call = call
        self._read = UsageReader()
        self._split = SseSplitter()
        self._hide_usage = hide_usage_chunk
        self._output_seen = False

    def feed(self, chunk: bytes) -> bytes:
        hide, kept = self._hide_usage, []
        for event in self._split.feed(chunk):
            # after the first output, most events (text deltas) can hold neither usage nor an error
            if self._output_seen and not _may_hold_usage(event) and not _may_hold_error(event):
                usage_only = False
            else:
                usage_only = self._look(event)
            # Forward whole events only, so the usage chunk can be left out.
            if hide and not usage_only:
                kept.append(event)
        return b"".join(kept) if hide else chunk

    def _look(self, event: bytes) -> bool:
        """Observe one event (``feed`` skipped those that cannot matter); True if it is the usage-only
        chunk."""
        obj = data_of(event)
        if obj is None:
            return False
        err = obj.get("error")
        if isinstance(err, dict):              # an OpenAI-compatible server's in-stream failure
            kind = err.get("type") or err.get("code")
            self.usage.error_type = kind if isinstance(kind, str) and kind else "error"
        if not self._output_seen:
            self._output_seen = _has_output(obj.get("choices"))
        if not isinstance(obj.get("usage"), dict):
            return False
        self._take(obj)
        return not obj.get("choices")

    def _take(self, obj: dict[str, Any]) -> None:
        self.usage.tokens = openai_usage_tokens(obj["usage"], "prompt_tokens", "completion_tokens", self._read)
        model = obj.get("model")
        self.usage.model_served = model if isinstance(model, str) and model else self.usage.model_served
        if isinstance(obj.get("service_tier"), str):
            self.usage.service_tier = obj["service_tier"]
        self.usage.complete = True

    def finish_json(self, body: bytes) -> None:
        obj = loads_object(body)
        if obj is not None and isinstance(obj.get("usage"), dict):
            self._take(obj)

    def result(self) -> Usage:
        return sane(settled(self.usage, self._read), self._call)

    def saw_output(self) -> bool:
        return self._output_seen

    def tail(self) -> bytes:
        return self._split.pending if self._hide_usage else b""


def _has_output(choices: object) -> bool:
    """A chunk with text or a tool call in some choice's delta (the role chunk's empty content is not)."""
    if not isinstance(choices, list):
        return False
    for c in choices:
        delta = c.get("delta") if isinstance(c, dict) else None
        if isinstance(delta, dict) and (delta.get("content") or delta.get("tool_calls")
                                        or delta.get("refusal") or delta.get("function_call")):
            return True
    return False


class OpenAIChat:
    api = "chat"
    family = "openai"
    upstream_path = "/chat/completions"

    def parse(self, body: bytes) -> Call:
        obj = parse_object(body)
        model = require_model(obj)
        require_messages(obj)
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
            tags=tags, hide_usage_chunk=hide, choices=n, cache_writes_long=asks_long_cache_retention(obj),
        )

    def meter(self, call: Call) -> ChatMeter:
        return ChatMeter(hide_usage_chunk=call.hide_usage_chunk, call=call)

    def error_body(self, err: GatewayError) -> bytes:
        return orjson.dumps(error_object(err))
