"""OpenAI Responses API (``POST /v1/responses``), what Codex speaks.

Usage arrives once, in the terminal event (``response.completed``,
``response.incomplete`` or ``response.failed``); everything else is relayed
without being parsed. The WebSocket mode carries the same event objects as
text frames, one event per frame: ``observe_frame``.
"""
from __future__ import annotations

import re
from typing import Any

import orjson

from ..errors import GatewayError
from ..sse import SseSplitter, event_name, fields_of, loads_object
from ..types import Call, Usage
from ..usage import UsageReader, estimate_missing, sane, settled
from ._common import (NO_TOKENS, count_url_images, has_web_search, optional_bool, optional_input, optional_int,
                      parse_object, require_model, take_metadata_tags)
from .openai_chat import asks_long_cache_retention, error_object, openai_usage_tokens

TERMINAL = ("response.completed", "response.incomplete", "response.failed")
_TERMINAL_B = frozenset(t.encode() for t in TERMINAL)
_OUTPUT_B = frozenset({b"response.output_text.delta", b"response.function_call_arguments.delta",
                       b"response.refusal.delta", b"response.custom_tool_call_input.delta"})
_OUTPUT = frozenset(t.decode() for t in _OUTPUT_B)
_DELTA_FRAME = b'{"type":"response.output_text.delta",'
_ERROR_TYPE = re.compile(rb'"type"\s*:\s*"error"')


class ResponsesMeter:
    """Usage arrives in the terminal event; over SSE the ``event:`` line names every event.

    Over SSE an event is judged by its ``event:`` name: the terminal events
    and ``error`` are parsed (and must agree in their JSON ``type``), output
    deltas mark the first output without being parsed, everything else is
    relayed unread. An event without an ``event:`` line, and every WebSocket
    frame (``observe_frame``: one text frame is one JSON event, no name
    outside it), is judged by its parsed ``type``, but only parsed when its
    bytes say it may matter (the ``response.created`` frames echo the whole
    request, and deltas are most frames):

    * until the first output, a frame holding ``delta`` (every output event's
      type ends in ``.delta``);
    * a frame holding ``response.completed``, ``response.incomplete``,
      ``response.failed`` or ``"type"`` ``:`` ``"error"`` with any whitespace;
    * any frame holding a ``\\u00`` escape.

    A frame that begins ``{"type":"response.output_text.delta",`` (OpenAI's
    own spelling) is a delta whatever follows, bar a duplicate ``type`` key,
    which JSON leaves undefined: after the first output it is skipped at once.

    That cannot miss an output, terminal or error event: its ``type`` value is
    one of those strings, written out or with some character escaped, and
    the only JSON escape of a letter, a dot or an underscore is ``\\u00XX``.
    An answer quoting an event name only costs a parse, which finds a delta.

    ``finished`` turns True when this call's terminal or error event was parsed.
    """

    __slots__ = ("usage", "_call", "_read", "_split", "_output_seen", "_finished", "_bytes")

    def __init__(self, call: Call | None = None) -> None:
        self.usage = Usage(tokens=NO_TOKENS)
        self._call = call
        self._read = UsageReader()
        self._split = SseSplitter()
        self._output_seen = False
        self._finished = False
        self._bytes = 0

    def feed(self, chunk: bytes) -> bytes:
        self._bytes += len(chunk)
        for event in self._split.feed(chunk):
            name = event_name(event)
            if name in _OUTPUT_B:
                self._output_seen = True
            elif name in _TERMINAL_B or name == b"error":
                self._observe(loads_object(fields_of(event)[1]))
            elif not name:
                data = fields_of(event)[1]
                if data is not None:
                    self.observe_frame(data)
        return chunk

    def observe_frame(self, data: bytes | str) -> None:
        """One WebSocket text frame (or one SSE payload with no ``event:`` name): one JSON event."""
        raw = data.encode() if isinstance(data, str) else data
        self._bytes += len(raw)
        if self._output_seen and raw.startswith(_DELTA_FRAME):
            return                  # OpenAI's own spelling of a text delta: nothing to read
        find = raw.find             # not ``in``: see proxy/sse.py
        if (find(b"\\u00") >= 0 or (not self._output_seen and find(b"delta") >= 0)
                or find(b"response.completed") >= 0 or find(b"response.incomplete") >= 0
                or find(b"response.failed") >= 0
                or (find(b'"error"') >= 0 and _ERROR_TYPE.search(raw) is not None)):
            self._observe(loads_object(raw))

    @property
    def finished(self) -> bool:
        return self._finished

    def _observe(self, obj: dict[str, Any] | None) -> None:
        if obj is None:
            return
        t = obj.get("type")
        if t in _OUTPUT:
            self._output_seen = True
        elif t == "error":
            self._finished = True
            error = obj.get("error")
            err = error if isinstance(error, dict) else obj
            code = err.get("code") or err.get("type")
            self.usage.error_type = str(code) if isinstance(code, str) and code else "error"
        elif t in TERMINAL:
            self._finished = True
            resp = obj.get("response")
            self._take(resp if isinstance(resp, dict) else {}, terminal=True)

    def _take(self, resp: dict[str, Any], terminal: bool) -> None:
        u = resp.get("usage")
        if not isinstance(u, dict):
            if terminal:
                self._read.flag("missing_usage")
            return
        self.usage.tokens = openai_usage_tokens(u, "input_tokens", "output_tokens", self._read)
        model = resp.get("model")
        self.usage.model_served = model if isinstance(model, str) and model else self.usage.model_served
        if isinstance(resp.get("service_tier"), str):
            self.usage.service_tier = resp["service_tier"]
        out = resp.get("output")
        if isinstance(out, list):
            self.usage.web_search_calls = sum(1 for i in out if isinstance(i, dict) and i.get("type") == "web_search_call")
        if resp.get("status") == "failed":
            err = resp.get("error")
            self.usage.error_type = str(err.get("code") if isinstance(err, dict) else "failed")
        self.usage.complete = self.usage.complete or terminal

    def finish_json(self, body: bytes) -> None:
        obj = loads_object(body)
        if obj is not None:
            self._take(obj, terminal=True)

    def result(self) -> Usage:
        usage = sane(settled(self.usage, self._read), self._call)
        if self._finished and not usage.complete and not usage.error_type and self._call is not None:
            # The response ended without usage the gateway could read (over WebSocket no
            # other layer estimates it): bound it by the bytes each way, flagged estimated.
            usage = estimate_missing(usage, self._call, self._bytes)
        return usage

    def tail(self) -> bytes:
        return b""

    def saw_output(self) -> bool:
        return self._output_seen


def parse_create(obj: dict[str, Any], body: bytes | None) -> Call:
    """A Responses create request, from an HTTP body or a WebSocket frame."""
    model = require_model(obj)
    optional_input(obj)
    tags, changed = take_metadata_tags(obj, string_values_are_tags=True)
    return Call(
        model=model,
        stream=optional_bool(obj, "stream"),
        body=orjson.dumps(obj) if changed or body is None else body,
        max_output_tokens=optional_int(obj, "max_output_tokens"),
        service_tier=obj.get("service_tier") if isinstance(obj.get("service_tier"), str) else None,
        image_count=count_url_images(obj.get("input")),
        web_search=has_web_search(obj.get("tools")),
        tags=tags, cache_writes_long=asks_long_cache_retention(obj),
    )


class OpenAIResponses:
    api = "responses"
    family = "openai"
    upstream_path = "/responses"

    def parse(self, body: bytes) -> Call:
        return parse_create(parse_object(body), body)

    def meter(self, call: Call) -> ResponsesMeter:
        return ResponsesMeter(call)

    def error_body(self, err: GatewayError) -> bytes:
        return orjson.dumps(error_object(err))
