"""OpenAI Responses API (``POST /v1/responses``), what Codex speaks.

Usage arrives once, in the terminal event (``response.completed``,
``response.incomplete`` or ``response.failed``); everything else is relayed
without being parsed. The WebSocket mode carries the same event objects as
text frames, so ``observe_event`` serves both transports.
"""
from __future__ import annotations

import orjson

from ..errors import GatewayError
from ..sse import SseSplitter, data_of
from ..types import Call, Usage
from ._common import (count_url_images, has_web_search, optional_bool, optional_input, optional_int, parse_object,
                      require_model, take_metadata_tags)
from .openai_chat import error_object, openai_usage_tokens

TERMINAL = ("response.completed", "response.incomplete", "response.failed")


class ResponsesMeter:
    __slots__ = ("usage", "_split", "_output_seen")

    def __init__(self) -> None:
        self.usage = Usage()
        self._split = SseSplitter()
        self._output_seen = False

    def feed(self, chunk: bytes) -> bytes:
        for event in self._split.feed(chunk):
            self.observe_event(event, None)
        return chunk

    def observe_event(self, raw: bytes, obj: dict | None) -> None:
        if not self._output_seen and (b"output_text.delta" in raw or b"function_call_arguments.delta" in raw):
            self._output_seen = True
        if b'"usage":{' not in raw and b'"type":"error"' not in raw:
            return
        obj = obj if obj is not None else data_of(raw) if raw.startswith((b"event:", b"data:")) else _loads(raw)
        if not obj:
            return
        if obj.get("type") == "error":
            self.usage.error_type = str(obj.get("code") or "error")
            return
        resp = obj.get("response") if isinstance(obj.get("response"), dict) else obj
        self._take(resp, terminal=obj.get("type") in TERMINAL or obj.get("object") == "response")

    def _take(self, resp: dict, terminal: bool) -> None:
        u = resp.get("usage")
        if not isinstance(u, dict):
            return
        self.usage.tokens = openai_usage_tokens(u, "input_tokens", "output_tokens")
        self.usage.model_served = resp.get("model") or self.usage.model_served
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
        obj = _loads(body)
        if obj:
            self._take(obj, terminal=True)

    def result(self) -> Usage:
        return self.usage

    def tail(self) -> bytes:
        return b""

    def saw_output(self) -> bool:
        return self._output_seen


def _loads(raw: bytes) -> dict | None:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def parse_create(obj: dict, body: bytes | None) -> Call:
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
        tags=tags,
    )


class OpenAIResponses:
    api = "responses"
    family = "openai"
    upstream_path = "/responses"

    def parse(self, body: bytes) -> Call:
        return parse_create(parse_object(body), body)

    def meter(self, call: Call) -> ResponsesMeter:
        return ResponsesMeter()

    def error_body(self, err: GatewayError) -> bytes:
        return orjson.dumps(error_object(err))

    def stream_error_event(self, err: GatewayError) -> bytes:
        e = error_object(err)["error"]
        payload = {"type": "error", "code": e["code"], "message": e["message"], "param": None}
        return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"
