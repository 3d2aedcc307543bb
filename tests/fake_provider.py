"""The fake LLM provider: the project's only fake. One aiohttp app on loopback speaks both wire families.

    {base}/anthropic/v1/messages               POST  Anthropic Messages, SSE or JSON (`?beta=true` accepted)
    {base}/anthropic/v1/messages/count_tokens  POST
    {base}/anthropic/v1/models                 GET
    {base}/openai/v1/chat/completions          POST  `data:` SSE + `data: [DONE]`, or JSON
    {base}/openai/v1/responses                 POST  `event:`/`data:` SSE or JSON;  GET = WebSocket mode
    {base}/openai/v1/embeddings                POST
    {base}/openai/v1/models                    GET

A gateway's upstream base URLs are `fake.anthropic_base_url` ({base}/anthropic) and `fake.openai_base_url`
({base}/openai/v1). Anthropic needs the key in `x-api-key` (Claude Code, the docs) or `Authorization: Bearer`
(what the anthropic 2.x SDK sends for `api_key`) plus any `anthropic-version`; OpenAI needs
`Authorization: Bearer`. A refusal gets the provider's real error body.

Scripting: `fake.script(Reply(...), ..., api=None)` queues replies FIFO. With `api=None` they go to the global
queue, which only generating APIs consume (messages, chat, responses over HTTP or WebSocket, embeddings). With
`api=OPENAI_CHAT` etc. they go to that API's own queue, which is served first; count_tokens and the model lists
consume only their own queue. An empty queue means a default reply built from the request: the default text,
one text delta per word, `input = max(1, len(body bytes) // 4)`, `output = number of text deltas`, no caching.
A WebSocket frame with `generate: false` never consumes a reply; it gets a response with no output and
`output_tokens = 0`.

Usage is scripted in neutral units (`Usage`) and mapped per wire:
    Anthropic  input_tokens=input, cache_read_input_tokens=cache_read,
               cache_creation_input_tokens=cache_write_5m+cache_write_1h, cache_creation={5m, 1h},
               output_tokens=output, output_tokens_details.thinking_tokens=reasoning (only when > 0).
               message_start carries output_tokens=min(output, 1); message_delta carries cumulative totals.
    OpenAI     prompt/input tokens = input+cache_read+cache_write_5m+cache_write_1h, cached_tokens=cache_read,
               cache_write_tokens=cache_write_5m+cache_write_1h, completion/output tokens=output (reasoning
               included, as OpenAI counts it), reasoning_tokens=reasoning.
A reply with reasoning > 0 also carries a thinking block (Anthropic) or a reasoning output item (Responses).

Recording: every request, refused ones included, is appended to `fake.requests` as a `RecordedRequest`; each
`response.create` WebSocket frame is recorded too, with method "WS". `fake.abandoned_streams` counts streams
whose client went away before the last event was written.

Wire style: `fake.style` (reset to "compact" by `reset()`) is how the JSON and SSE are written, as real
providers and proxies vary it: "compact" (orjson, today's default) or "+"-joined parts of
    spaced    `", "` and `": "` separators            pretty    indented, so one SSE event has many `data:` lines
    shuffled  every object's keys in a random order     escaped   letters of keys and strings as `\\u00XX`, non-ASCII as `\\uXXXX`
    crlf      SSE lines end in CRLF                      nospace   `data:{...}` without the space
    allman    a nested object's `{` on a line of its own (with pretty: `"usage":` and `{` on two `data:` lines)
`fake.split_bytes = n` writes every SSE event in n-byte pieces. `Reply.usage_patch` overrides keys of every
usage object the reply writes (`MISSING` removes one; hostile values welcome), `Reply.omit_usage` leaves usage
out entirely. `fake.served` lists the neutral `Usage` of every reply that reached the wire, in order, and
`fake.sent` what was written for it (the body bytes, or the list of WebSocket text frames).

By hand: `python -m tests.fake_provider --port 9999`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import random
import secrets
import string
import struct
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import orjson
from aiohttp import WSMsgType, web

__all__ = [
    "ANTHROPIC_COUNT_TOKENS", "ANTHROPIC_KEY", "ANTHROPIC_MESSAGES", "ANTHROPIC_MODELS", "DEFAULT_TEXT",
    "FakeProvider", "MISSING", "OPENAI_CHAT", "OPENAI_EMBEDDINGS", "OPENAI_KEY", "OPENAI_MODELS", "OPENAI_RESPONSES",
    "RecordedRequest", "Reply", "Usage",
]

ANTHROPIC_KEY = "sk-ant-upstream-test"
OPENAI_KEY = "sk-openai-upstream-test"

ANTHROPIC_MESSAGES = "anthropic.messages"
ANTHROPIC_COUNT_TOKENS = "anthropic.count_tokens"
ANTHROPIC_MODELS = "anthropic.models"
OPENAI_CHAT = "openai.chat"
OPENAI_RESPONSES = "openai.responses"
OPENAI_EMBEDDINGS = "openai.embeddings"
OPENAI_MODELS = "openai.models"
_GENERATING = frozenset({ANTHROPIC_MESSAGES, OPENAI_CHAT, OPENAI_RESPONSES, OPENAI_EMBEDDINGS})

DEFAULT_TEXT = "Hello from the fake provider."
ANTHROPIC_MODEL_IDS = {  # id -> (display_name, created_at)
    "claude-opus-4-7": ("Claude Opus 4.7", "2026-04-16T00:00:00Z"),
    "claude-sonnet-4-6": ("Claude Sonnet 4.6", "2026-02-17T00:00:00Z"),
    "claude-haiku-4-5-20251001": ("Claude Haiku 4.5", "2025-10-15T00:00:00Z"),
}
OPENAI_MODEL_IDS = ("gpt-5.5", "gpt-5.4-mini", "gpt-5", "gpt-4o", "text-embedding-3-small")


@dataclass(frozen=True, slots=True)
class Usage:
    """Neutral token counts; see the module docstring for how each wire spells them."""

    input: int = 0  # billed at the base input rate: neither read from nor written to a cache
    output: int = 0  # all output, reasoning included
    cache_read: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    reasoning: int = 0  # part of `output`


@dataclass(frozen=True, slots=True)
class Reply:
    """One scripted reply. Defaults give a normal success built from the request."""

    text: str | None = None  # None: DEFAULT_TEXT, or `chunks` words cycled from it
    usage: Usage | None = None  # None: derived from the request (module docstring)
    chunks: int | None = None  # number of text deltas; None: one per word of `text`
    status: int = 200  # >= 400: the wire's own error body with this status, no generation
    error_type: str | None = None  # None: the wire's usual type for `status`
    error_message: str | None = None
    error_code: str | None = None  # OpenAI `error.code`
    retry_after_s: float | None = None  # `retry-after` header; a 429 gets "1" when None
    headers: Mapping[str, str] = field(default_factory=dict)  # extra response headers, e.g. x-should-retry
    delay_s: float = 0.0  # before the response headers
    chunk_delay_s: float = 0.0  # between generated deltas of a stream (the model's pace)
    fail_mid_stream: bool = False  # stream: the wire's in-stream error event after half the deltas, then end
    drop_mid_stream: bool = False  # stream or JSON: cut the connection after half the deltas / bytes
    # "failed": response.failed on Responses, the in-stream error event elsewhere; JSON replies get a 500
    finish: Literal["end", "max_tokens", "failed"] = "end"
    model_served: str | None = None  # None: echo the requested model
    # the tier the provider says it served (OpenAI `service_tier`, Anthropic `usage.speed`);
    # None: what was asked (OpenAI: "default" unless the request named one; Anthropic: the request's speed)
    served_tier: str | None = None
    usage_patch: Mapping[str, Any] | None = None  # keys set in every usage object written; MISSING removes one
    omit_usage: bool = False  # write no usage at all (message_delta, the chat usage chunk, the response's usage)


def _generated(event: str | None, payload: Any) -> bool:
    """A frame that carries newly generated output. Only these wait for the model's pace; the
    frames around them (starts, stops, the usage chunk, [DONE]) follow at once, as from a provider."""
    if event is not None:
        return event == "content_block_delta" or event.endswith(".delta")
    choices = payload.get("choices") if isinstance(payload, dict) else None
    return bool(choices) and bool((choices[0].get("delta") or {}).get("content"))


class _Pace:
    """Generated frame i of a stream is due ``i * delay_s`` after the stream began, as a model
    generates on its own clock: a busy event loop here delays one frame, not every later one."""

    __slots__ = ("_delay", "_due")

    def __init__(self, delay_s: float) -> None:
        self._delay, self._due = delay_s, asyncio.get_running_loop().time()

    async def next(self) -> None:
        if self._delay:
            self._due += self._delay
            await asyncio.sleep(max(0.0, self._due - asyncio.get_running_loop().time()))


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    api: str  # one of the API constants, or "<family>.unknown"
    method: str  # "GET", "POST", or "WS" for one WebSocket frame
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    json: Any  # parsed body, or None


Frame = tuple[str | None, Any]  # (SSE event name or None, payload dict or verbatim str)
MISSING: Any = object()  # a `usage_patch` value that removes the key
_PING: Frame = ("ping", '{"type": "ping"}')
_B62 = string.ascii_letters + string.digits


def _b62(n: int) -> str:
    return "".join(secrets.choice(_B62) for _ in range(n))


def _dumps(payload: Any, style: str = "compact", rng: random.Random | None = None) -> bytes:
    if isinstance(payload, str):
        return payload.encode()
    if style == "compact":
        try:
            return orjson.dumps(payload)
        except TypeError:   # an integer beyond 64 bits (a hostile usage count): JSON allows it
            return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    parts = set(style.split("+"))
    unknown = parts - STYLE_PARTS
    if unknown:
        raise ValueError(f"unknown wire style part(s) {sorted(unknown)}")
    out: list[str] = []
    _encode(json.loads(json.dumps(payload)), parts, rng or random.Random(0), 0, out)
    return "".join(out).encode()


STYLE_PARTS = frozenset({"compact", "spaced", "pretty", "shuffled", "escaped", "crlf", "nospace", "allman"})
_ESCAPED_LETTERS = frozenset("aeioustcd")   # enough to hit `usage`, `type`, event names and most text


def _encode(v: Any, parts: set[str], rng: random.Random, level: int, out: list[str]) -> None:
    pretty, spaced = "pretty" in parts, "spaced" in parts
    if isinstance(v, dict):
        items = list(v.items())
        if "shuffled" in parts:
            rng.shuffle(items)
        if not items:
            out.append("{}")
            return
        out.append("{")
        for i, (k, val) in enumerate(items):
            if i:
                out.append("," if pretty or not spaced else ", ")
            if pretty:
                out.append("\n" + "  " * (level + 1))
            _string(k, parts, out)
            out.append(": " if spaced or pretty else ":")
            if "allman" in parts and isinstance(val, (dict, list)) and val:
                out.append("\n" + "  " * (level + 1))    # the value's bracket on a line of its own
            _encode(val, parts, rng, level + 1, out)
        if pretty:
            out.append("\n" + "  " * level)
        out.append("}")
    elif isinstance(v, list):
        if not v:
            out.append("[]")
            return
        out.append("[")
        for i, val in enumerate(v):
            if i:
                out.append("," if pretty or not spaced else ", ")
            if pretty:
                out.append("\n" + "  " * (level + 1))
            _encode(val, parts, rng, level + 1, out)
        if pretty:
            out.append("\n" + "  " * level)
        out.append("]")
    elif isinstance(v, str):
        _string(v, parts, out)
    else:
        out.append(json.dumps(v))


def _string(s: str, parts: set[str], out: list[str]) -> None:
    if "escaped" not in parts:
        out.append(orjson.dumps(s).decode())
        return
    buf = ['"']
    for ch in s:
        o = ord(ch)
        if ch in _ESCAPED_LETTERS or o < 0x20 or o == 0x7f:
            buf.append(f"\\u{o:04x}")
        elif ch == '"' or ch == "\\":
            buf.append("\\" + ch)
        elif o > 0xFFFF:
            o -= 0x10000
            buf.append(f"\\u{0xD800 + (o >> 10):04x}\\u{0xDC00 + (o & 0x3FF):04x}")
        elif o > 0x7e:
            buf.append(f"\\u{o:04x}")
        else:
            buf.append(ch)
    buf.append('"')
    out.append("".join(buf))


def sse_event(event: str | None, data: bytes, style: str = "compact") -> bytes:
    """One SSE event in a wire style: an optional `event:` line, one `data:` line per line of data."""
    parts = set(style.split("+"))
    nl = b"\r\n" if "crlf" in parts else b"\n"
    field = b"data:" if "nospace" in parts else b"data: "
    head = (b"event:" if "nospace" in parts else b"event: ") + event.encode() + nl if event else b""
    return head + b"".join(field + line + nl for line in data.split(b"\n")) + nl


def _half(n: int) -> int:
    return max(1, n // 2) if n else 0


def _pieces(reply: Reply) -> list[str]:
    if reply.text is None:
        words = [w if i == 0 else " " + w for i, w in enumerate(DEFAULT_TEXT.split())]
        n = reply.chunks if reply.chunks is not None else len(words)
        return [words[i % len(words)] for i in range(n)]
    if reply.chunks is None:
        words = reply.text.split(" ")
        return [p for p in (w if i == 0 else " " + w for i, w in enumerate(words)) if p]
    n = min(reply.chunks, len(reply.text))
    if n <= 0:
        return []
    size, extra = divmod(len(reply.text), n)
    bounds = [i * size + min(i, extra) for i in range(n + 1)]
    return [reply.text[a:b] for a, b in zip(bounds, bounds[1:])]


@dataclass(slots=True)
class _Turn:
    """Everything one reply needs: the request, the script, and the ids minted for it."""

    reply: Reply
    body: dict[str, Any]
    usage: Usage
    pieces: list[str]
    model: str
    generate: bool = True
    created: int = field(default_factory=lambda: int(time.time()))
    anthropic_request_id: str = field(default_factory=lambda: "req_011C" + _b62(20))
    openai_request_id: str = field(default_factory=lambda: "req_" + secrets.token_hex(16))

    @classmethod
    def build(cls, reply: Reply, raw: bytes, body: dict[str, Any], *, generate: bool = True) -> _Turn:
        pieces = _pieces(reply) if generate else []
        usage = reply.usage or Usage(input=max(1, len(raw) // 4), output=len(pieces))
        if not generate:
            usage = replace(usage, output=0, reasoning=0)
        model = reply.model_served or str(body.get("model") or "unknown")
        return cls(reply=reply, body=body, usage=usage, pieces=pieces, model=model, generate=generate)

    @property
    def failed(self) -> bool:
        return self.reply.fail_mid_stream or self.reply.finish == "failed"

    @property
    def openai_tier(self) -> str:
        asked = self.body.get("service_tier")
        return self.reply.served_tier or (asked if isinstance(asked, str) and asked != "auto" else "default")

    @property
    def anthropic_speed(self) -> str | None:
        """Usage reports ``speed`` when the request chose one (fast mode)."""
        asked = self.body.get("speed")
        return self.reply.served_tier or (asked if isinstance(asked, str) else None)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


# ---------------------------------------------------------------- errors, per wire family

_ANTHROPIC_ERRORS = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                     403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                     429: "rate_limit_error", 500: "api_error", 504: "timeout_error", 529: "overloaded_error"}
_ANTHROPIC_MESSAGES_BY_TYPE = {
    "rate_limit_error": "Number of request tokens has exceeded your per-minute rate limit",
    "overloaded_error": "Overloaded", "api_error": "Internal server error",
}
_OPENAI_ERRORS = {400: ("invalid_request_error", None, "Invalid request."),
                  401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
                  403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden."),
                  404: ("invalid_request_error", None, "Not found."),
                  429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
                  500: ("server_error", None,
                        "The server had an error while processing your request. Sorry about that!"),
                  503: ("server_error", None, "The server is overloaded or not ready yet.")}


def _anthropic_error(status: int, request_id: str, etype: str | None = None,
                     message: str | None = None) -> dict[str, Any]:
    etype = etype or _ANTHROPIC_ERRORS.get(status, "api_error")
    message = message or _ANTHROPIC_MESSAGES_BY_TYPE.get(etype, etype.replace("_", " "))
    return {"type": "error", "error": {"type": etype, "message": message}, "request_id": request_id}


def _openai_error(status: int, etype: str | None = None, message: str | None = None,
                  code: str | None = None, param: str | None = None) -> dict[str, Any]:
    d_type, d_code, d_message = _OPENAI_ERRORS.get(status, ("server_error", None, "Server error."))
    return {"error": {"message": message or d_message, "type": etype or d_type, "param": param,
                      "code": code if code is not None else (None if etype else d_code)}}


def _mask(key: str) -> str:
    return key[:3] + "*" * max(0, len(key) - 7) + key[-4:] if len(key) > 8 else "*" * len(key)


def _without_none(d: dict[str, Any]) -> dict[str, Any]:
    """A usage the reply omits is left out of the object, not written as null."""
    if d.get("usage") is None:
        d.pop("usage", None)
    return d


def _patched(reply: Reply, usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """The usage object as this reply writes it: left out, or with `usage_patch` applied."""
    if usage is None or reply.omit_usage:
        return None
    if not reply.usage_patch:
        return usage
    out = dict(usage)
    for k, v in reply.usage_patch.items():
        if v is MISSING:
            out.pop(k, None)
        else:
            out[k] = v
    return out


# ---------------------------------------------------------------- Anthropic Messages

def _anthropic_usage(u: Usage, output: int, speed: str | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {
        "input_tokens": u.input, "cache_creation_input_tokens": u.cache_write_5m + u.cache_write_1h,
        "cache_read_input_tokens": u.cache_read,
        "cache_creation": {"ephemeral_5m_input_tokens": u.cache_write_5m,
                           "ephemeral_1h_input_tokens": u.cache_write_1h},
        "output_tokens": output, "service_tier": "standard",
    }
    if speed is not None:
        d["speed"] = speed
    if u.reasoning:
        d["output_tokens_details"] = {"thinking_tokens": u.reasoning}
    return d


def _anthropic_delta_usage(u: Usage) -> dict[str, Any]:
    d: dict[str, Any] = {"input_tokens": u.input, "cache_creation_input_tokens": u.cache_write_5m + u.cache_write_1h,
                         "cache_read_input_tokens": u.cache_read, "output_tokens": u.output}
    if u.reasoning:
        d["output_tokens_details"] = {"thinking_tokens": u.reasoning}
    return d


_THINKING = "Let me think about that."


class _Anthropic:
    """Builds Messages bodies and SSE frames for one turn."""

    def __init__(self, t: _Turn) -> None:
        self.t = t
        self.msg_id = "msg_01" + _b62(22)
        self.signature = base64.b64encode(secrets.token_bytes(48)).decode()
        self.stop_reason = "max_tokens" if t.reply.finish == "max_tokens" else "end_turn"

    def message(self, *, streaming: bool) -> dict[str, Any]:
        u, blocks = self.t.usage, []
        if not streaming:
            if u.reasoning:
                blocks.append({"type": "thinking", "thinking": _THINKING, "signature": self.signature})
            blocks.append({"type": "text", "text": self.t.text})
        return {"id": self.msg_id, "type": "message", "role": "assistant", "model": self.t.model,
                "content": blocks, "stop_reason": None if streaming else self.stop_reason,
                "stop_sequence": None, "usage": _patched(self.t.reply, _anthropic_usage(
                    u, min(u.output, 1) if streaming else u.output, self.t.anthropic_speed))}

    def frames(self) -> tuple[list[Frame], int]:
        frames: list[Frame] = [("message_start", {"type": "message_start", "message": self.message(streaming=True)})]
        index = 0
        if self.t.usage.reasoning:
            frames += [self._block_start(0, {"type": "thinking", "thinking": "", "signature": ""}), _PING,
                       self._delta(0, {"type": "thinking_delta", "thinking": _THINKING}),
                       self._delta(0, {"type": "signature_delta", "signature": self.signature}),
                       ("content_block_stop", {"type": "content_block_stop", "index": 0})]
            index = 1
        frames.append(self._block_start(index, {"type": "text", "text": ""}))
        if index == 0:
            frames.append(_PING)
        cut = len(frames) + _half(len(self.t.pieces))
        frames += [self._delta(index, {"type": "text_delta", "text": p}) for p in self.t.pieces]
        frames += [("content_block_stop", {"type": "content_block_stop", "index": index}),
                   ("message_delta", _without_none({"type": "message_delta",
                                      "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
                                      "usage": _patched(self.t.reply, _anthropic_delta_usage(self.t.usage))})),
                   ("message_stop", {"type": "message_stop"})]
        return frames, cut

    def error_frame(self) -> Frame:
        r = self.t.reply
        return ("error", _anthropic_error(529, self.t.anthropic_request_id, r.error_type, r.error_message))

    @staticmethod
    def _block_start(index: int, block: dict[str, Any]) -> Frame:
        return ("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})

    @staticmethod
    def _delta(index: int, delta: dict[str, Any]) -> Frame:
        return ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


# ---------------------------------------------------------------- OpenAI Chat Completions

def _openai_prompt_tokens(u: Usage) -> int:
    return u.input + u.cache_read + u.cache_write_5m + u.cache_write_1h


def _chat_usage(u: Usage) -> dict[str, Any]:
    prompt = _openai_prompt_tokens(u)
    details: dict[str, Any] = {"cached_tokens": u.cache_read, "audio_tokens": 0}
    if u.cache_write_5m + u.cache_write_1h:
        details["cache_write_tokens"] = u.cache_write_5m + u.cache_write_1h
    return {"prompt_tokens": prompt, "completion_tokens": u.output, "total_tokens": prompt + u.output,
            "prompt_tokens_details": details,
            "completion_tokens_details": {"reasoning_tokens": u.reasoning, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


class _Chat:
    def __init__(self, t: _Turn) -> None:
        self.t = t
        self.id = "chatcmpl-" + _b62(29)
        self.fingerprint = "fp_" + secrets.token_hex(5)
        self.finish_reason = "length" if t.reply.finish == "max_tokens" else "stop"
        self.include_usage = bool((t.body.get("stream_options") or {}).get("include_usage"))

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.t.created, "model": self.t.model,
                "service_tier": self.t.openai_tier, "system_fingerprint": self.fingerprint}

    def body(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.t.text, "refusal": None, "annotations": []}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason}
        return _without_none({**self._head("chat.completion"), "choices": [choice],
                              "usage": _patched(self.t.reply, _chat_usage(self.t.usage))})

    def _chunk(self, delta: dict[str, Any] | None, finish: str | None = None) -> Frame:
        chunk = self._head("chat.completion.chunk")
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        chunk["choices"] = [] if delta is None else [choice]
        if self.include_usage:
            chunk["usage"] = _patched(self.t.reply, _chat_usage(self.t.usage)) if delta is None else None
        return (None, chunk)

    def frames(self) -> tuple[list[Frame], int]:
        frames = [self._chunk({"role": "assistant", "content": "", "refusal": None})]
        cut = 1 + _half(len(self.t.pieces))
        frames += [self._chunk({"content": p}) for p in self.t.pieces]
        frames.append(self._chunk({}, self.finish_reason))
        if self.include_usage and not self.t.reply.omit_usage:
            frames.append(self._chunk(None))
        frames.append((None, "[DONE]"))
        return frames, cut

    def error_frame(self) -> Frame:
        r = self.t.reply
        return (None, _openai_error(500, r.error_type, r.error_message, r.error_code))


# ---------------------------------------------------------------- OpenAI Responses

def _responses_usage(u: Usage) -> dict[str, Any]:
    prompt = _openai_prompt_tokens(u)
    return {"input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": u.cache_read,
                                     "cache_write_tokens": u.cache_write_5m + u.cache_write_1h},
            "output_tokens": u.output, "output_tokens_details": {"reasoning_tokens": u.reasoning},
            "total_tokens": prompt + u.output}


class _Responses:
    def __init__(self, t: _Turn) -> None:
        self.t = t
        self.id = "resp_" + secrets.token_hex(24)
        self.msg_id = "msg_" + secrets.token_hex(24)
        self.rs_id = "rs_" + secrets.token_hex(24)

    def response(self, status: str, output: list[dict[str, Any]], *, final: bool) -> dict[str, Any]:
        b, r = self.t.body, self.t.reply
        instructions = b.get("instructions")
        return {
            "id": self.id, "object": "response", "created_at": self.t.created, "status": status,
            "background": False, "completed_at": int(time.time()) if status == "completed" else None,
            "error": {"code": r.error_code or "server_error", "message": r.error_message or "An error occurred."}
            if status == "failed" else None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": instructions if isinstance(instructions, str) else None,
            "max_output_tokens": b.get("max_output_tokens"), "model": self.t.model, "output": output,
            "parallel_tool_calls": True, "previous_response_id": b.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None}, "service_tier": self.t.openai_tier,
            "store": b.get("store", True), "temperature": 1.0,
            "text": {"format": {"type": "text"}, "verbosity": "medium"}, "tool_choice": "auto", "tools": [],
            "top_p": 1.0, "truncation": "disabled",
            "usage": _patched(r, _responses_usage(self.t.usage)) if final else None, "user": None, "metadata": {},
        }

    def _status(self) -> str:
        return {"end": "completed", "max_tokens": "incomplete", "failed": "failed"}[self.t.reply.finish]

    def _items(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        reasoning = [{"id": self.rs_id, "type": "reasoning", "summary": []}] if self.t.usage.reasoning else []
        part = {"type": "output_text", "annotations": [], "logprobs": [], "text": self.t.text}
        status = "incomplete" if self.t.reply.finish == "max_tokens" else "completed"
        message = {"id": self.msg_id, "type": "message", "status": status, "content": [part], "role": "assistant"}
        return (reasoning + [message] if self.t.generate else []), part

    def body(self) -> dict[str, Any]:
        return self.response(self._status(), self._items()[0], final=True)

    def frames(self) -> tuple[list[Frame], int]:
        pending = self.response("in_progress", [], final=False)
        frames: list[Frame] = [("response.created", {"type": "response.created", "response": pending}),
                               ("response.in_progress", {"type": "response.in_progress", "response": pending})]
        output, part = self._items()
        cut = len(frames)
        for index, item in enumerate(output):
            if item["type"] == "message":
                frames, cut = self._message_frames(frames, index, item, part)
            else:
                frames += [self._item("response.output_item.added", index, item),
                           self._item("response.output_item.done", index, item)]
        status = self._status()
        frames.append((f"response.{status}", {"type": f"response.{status}",
                                               "response": self.response(status, output, final=True)}))
        return frames, cut

    def _message_frames(self, frames: list[Frame], index: int, item: dict[str, Any],
                        part: dict[str, Any]) -> tuple[list[Frame], int]:
        ids = {"item_id": self.msg_id, "output_index": index, "content_index": 0}
        added = {**item, "status": "in_progress", "content": []}
        frames = frames + [self._item("response.output_item.added", index, added),
                           ("response.content_part.added", {"type": "response.content_part.added", **ids,
                                                            "part": {**part, "text": ""}})]
        cut = len(frames) + _half(len(self.t.pieces))
        frames += [("response.output_text.delta", {"type": "response.output_text.delta", **ids, "delta": p,
                                                   "logprobs": []}) for p in self.t.pieces]
        frames += [("response.output_text.done", {"type": "response.output_text.done", **ids,
                                                  "text": self.t.text, "logprobs": []}),
                   ("response.content_part.done", {"type": "response.content_part.done", **ids, "part": part}),
                   self._item("response.output_item.done", index, item)]
        return frames, cut

    @staticmethod
    def _item(event: str, index: int, item: dict[str, Any]) -> Frame:
        return (event, {"type": event, "output_index": index, "item": item})

    def error_frame(self) -> Frame:
        r = self.t.reply
        return ("error", {"type": "error", "code": r.error_code or r.error_type or "server_error",
                          "message": r.error_message or "The server had an error while processing your request.",
                          "param": None})


def _numbered(frames: list[Frame]) -> list[Frame]:
    for n, (_, payload) in enumerate(frames):
        payload["sequence_number"] = n
    return frames


class _Builder(Protocol):
    def frames(self) -> tuple[list[Frame], int]: ...
    def error_frame(self) -> Frame: ...


def _cut(frames: list[Frame], cut: int, t: _Turn, builder: _Builder) -> list[Frame]:
    """Apply the failure knobs: an error event (or response.failed) after half the deltas, or a bare cut."""
    if t.reply.finish == "failed" and isinstance(builder, _Responses):
        return frames[:cut] + frames[-1:]
    if t.failed:
        return frames[:cut] + [builder.error_frame()]
    return frames[:cut] if t.reply.drop_mid_stream else frames


# ---------------------------------------------------------------- embeddings and model lists

def _embedding(text: str, dims: int) -> list[float]:
    digest = b""
    while len(digest) < dims:
        digest += hashlib.sha256(text.encode() + len(digest).to_bytes(4, "big")).digest()
    return [round(b / 255.0 - 0.5, 6) for b in digest[:dims]]


def _embeddings_body(t: _Turn) -> dict[str, Any]:
    inputs = t.body.get("input")
    if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
        inputs = [inputs]
    dims = int(t.body.get("dimensions") or 8)
    data = []
    for i, item in enumerate(inputs or []):
        vector = _embedding(str(item), dims)
        encoded: Any = vector
        if t.body.get("encoding_format") == "base64":
            encoded = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": encoded})
    tokens = _openai_prompt_tokens(t.usage)
    return _without_none({"object": "list", "data": data, "model": t.model,
                          "usage": _patched(t.reply, {"prompt_tokens": tokens, "total_tokens": tokens})})


def _anthropic_models(models: Mapping[str, tuple[str, str]]) -> dict[str, Any]:
    data = [{"type": "model", "id": m, "display_name": name, "created_at": created}
            for m, (name, created) in models.items()]
    ids = list(models)
    return {"data": data, "has_more": False, "first_id": ids[0] if ids else None, "last_id": ids[-1] if ids else None}


def _openai_models(ids: tuple[str, ...]) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": m, "object": "model", "created": 1_715_367_049, "owned_by": "system"}
                                       for m in ids]}


# ---------------------------------------------------------------- the server

class FakeProvider:
    """Start with `await fake.start()`; see the module docstring for routes, scripting and recording."""

    def __init__(self, *, anthropic_key: str = ANTHROPIC_KEY, openai_key: str = OPENAI_KEY,
                 host: str = "127.0.0.1", port: int = 0,
                 anthropic_models: Mapping[str, tuple[str, str]] = ANTHROPIC_MODEL_IDS,
                 openai_models: tuple[str, ...] = OPENAI_MODEL_IDS) -> None:
        self.anthropic_key, self.openai_key = anthropic_key, openai_key
        self._host, self._port = host, port
        self._anthropic_model_ids, self._openai_model_ids = anthropic_models, openai_models
        self.requests: list[RecordedRequest] = []
        self.abandoned_streams = 0
        self._queues: dict[str | None, deque[Reply]] = {}
        self._stored_response_ids: set[str] = set()
        self._runner: web.AppRunner | None = None
        self.base_url = ""
        self.default_reply = Reply()  # served when no reply is scripted (benchmarks pace streams with it)
        self.style = "compact"  # how JSON and SSE are written (module docstring)
        self.split_bytes: int | None = None  # write SSE events in pieces of this many bytes
        self.served: list[Usage] = []  # the usage of every reply that reached the wire, in order
        self.sent: list[bytes | list[str]] = []  # each generated reply's body bytes, or its WebSocket frames
        self._rng = random.Random(15)

    # ---- lifecycle and test API

    async def start(self) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/anthropic/v1/messages", self._anthropic_messages)
        app.router.add_post("/anthropic/v1/messages/count_tokens", self._anthropic_count_tokens)
        app.router.add_get("/anthropic/v1/models", self._anthropic_models)
        app.router.add_post("/openai/v1/chat/completions", self._openai_chat)
        app.router.add_post("/openai/v1/responses", self._openai_responses)
        app.router.add_get("/openai/v1/responses", self._openai_responses_ws)
        app.router.add_post("/openai/v1/embeddings", self._openai_embeddings)
        app.router.add_get("/openai/v1/models", self._openai_models)
        app.router.add_post("/_fake/default_reply", self._set_default_reply)
        app.router.add_route("*", "/anthropic/{tail:.*}", self._anthropic_unknown)
        app.router.add_route("*", "/openai/{tail:.*}", self._openai_unknown)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, backlog=4096)   # benchmarks open 512 at once
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://{self._host}:{port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeProvider:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def anthropic_base_url(self) -> str:
        return f"{self.base_url}/anthropic"

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/openai/v1"

    def script(self, *replies: Reply, api: str | None = None) -> None:
        """Queue replies FIFO: globally (api=None, generating APIs only) or for one API constant."""
        self._queues.setdefault(api, deque()).extend(replies)

    def pending(self, api: str | None = None) -> int:
        return len(self._queues.get(api, ()))

    def reset(self) -> None:
        self._queues.clear()
        self.requests.clear()
        self._stored_response_ids.clear()
        self.abandoned_streams = 0
        self.style = "compact"
        self.split_bytes = None
        self.served.clear()
        self.sent.clear()

    def requests_for(self, api: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.api == api]

    async def wait_for_abandoned(self, n: int = 1, timeout_s: float = 5.0) -> int:
        """Wait until at least `n` streams were abandoned by their client; returns the count."""
        async with asyncio.timeout(timeout_s):
            while self.abandoned_streams < n:
                await asyncio.sleep(0.01)
        return self.abandoned_streams

    async def _set_default_reply(self, request: web.Request) -> web.Response:
        """Not a provider route: lets a benchmark in another process pace the default reply."""
        body = await request.json()
        self.default_reply = Reply(chunks=body.get("chunks"), chunk_delay_s=float(body.get("chunk_delay_s", 0)),
                                   delay_s=float(body.get("delay_s", 0)))
        return web.json_response({"ok": True})

    # ---- plumbing shared by the handlers

    def _next_reply(self, api: str) -> Reply:
        for key in (api, None) if api in _GENERATING else (api,):
            queue = self._queues.get(key)
            if queue:
                return queue.popleft()
        return self.default_reply

    async def _record(self, request: web.Request, api: str) -> tuple[bytes, Any]:
        raw = await request.read() if request.can_read_body else b""
        try:
            parsed = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            parsed = None
        self.requests.append(RecordedRequest(
            api=api, method=request.method, path=request.path, query=dict(request.query),
            headers={k.lower(): v for k, v in request.headers.items()}, body=raw, json=parsed))
        return raw, parsed

    def _json(self, status: int, payload: Any, headers: Mapping[str, str]) -> web.Response:
        return web.Response(status=status, body=self._dumps(payload), content_type="application/json",
                            headers=headers)

    def _dumps(self, payload: Any) -> bytes:
        return _dumps(payload, self.style, self._rng)

    def _anthropic_refusal(self, request: web.Request, parsed: Any, *, needs_body: bool) -> web.Response | None:
        rid = "req_011C" + _b62(20)
        headers = {"request-id": rid}
        key, bearer = request.headers.get("x-api-key"), request.headers.get("authorization", "")
        offered = {key, bearer.removeprefix("Bearer ") if bearer.startswith("Bearer ") else None}
        if self.anthropic_key not in offered:
            message = "x-api-key header is required" if offered == {None} else "invalid x-api-key"
            return self._json(401, _anthropic_error(401, rid, message=message), headers)
        if "anthropic-version" not in request.headers:
            message = "anthropic-version: header is required"
            return self._json(400, _anthropic_error(400, rid, message=message), headers)
        if needs_body and not isinstance(parsed, dict):
            message = "There was an error parsing the body of your request"
            return self._json(400, _anthropic_error(400, rid, message=message), headers)
        return None

    def _openai_refusal(self, request: web.Request, parsed: Any, *, needs_body: bool) -> web.Response | None:
        headers = {"x-request-id": "req_" + secrets.token_hex(16)}
        auth = request.headers.get("authorization", "")
        if not auth:
            body = _openai_error(401, message="You didn't provide an API key. You need to provide your API key in an "
                                 "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
            body["error"]["code"] = None
            return self._json(401, body, headers)
        given = auth.removeprefix("Bearer ").strip()
        if not auth.startswith("Bearer ") or given != self.openai_key:
            message = (f"Incorrect API key provided: {_mask(given)}. You can find your API key at "
                       "https://platform.openai.com/account/api-keys.")
            return self._json(401, _openai_error(401, message=message, code="invalid_api_key"), headers)
        if needs_body and not isinstance(parsed, dict):
            message = "We could not parse the JSON body of your request."
            return self._json(400, _openai_error(400, message=message), headers)
        return None

    def _anthropic_headers(self, t: _Turn) -> dict[str, str]:
        return {"request-id": t.anthropic_request_id, **self._retry_headers(t.reply)}

    def _openai_headers(self, t: _Turn) -> dict[str, str]:
        return {"x-request-id": t.openai_request_id, "openai-processing-ms": "7", "openai-version": "2020-10-01",
                **self._retry_headers(t.reply)}

    @staticmethod
    def _retry_headers(reply: Reply) -> dict[str, str]:
        headers = dict(reply.headers)
        if reply.retry_after_s is not None or reply.status == 429:
            seconds = reply.retry_after_s if reply.retry_after_s is not None else 1
            headers.setdefault("retry-after", f"{seconds:g}")
        return headers

    async def _send_json(self, request: web.Request, t: _Turn, payload: Any,
                         headers: dict[str, str]) -> web.StreamResponse:
        if t.reply.status < 400:
            self.served.append(t.usage)
        if not t.reply.drop_mid_stream:
            resp = self._json(200, payload, headers)
            self.sent.append(bytes(resp.body))  # type: ignore[arg-type]
            return resp
        data = self._dumps(payload)
        resp = web.StreamResponse(status=200, headers={**headers, "content-type": "application/json"})
        resp.content_length = len(data)
        await resp.prepare(request)
        await resp.write(data[: len(data) // 2])
        self._drop(request)
        return resp

    async def _send_sse(self, request: web.Request, t: _Turn, frames: list[Frame], headers: dict[str, str],
                        *, named: bool) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={**headers, "content-type": "text/event-stream; charset=utf-8",
                                                       "cache-control": "no-cache"})
        await resp.prepare(request)
        self.served.append(t.usage)
        sent = bytearray()
        try:
            pace = _Pace(t.reply.chunk_delay_s)
            for i, (event, payload) in enumerate(frames):
                if i and _generated(event, payload):
                    await pace.next()
                data = sse_event(event if named else None, self._dumps(payload), self.style)
                sent += data
                n = self.split_bytes or len(data)
                for at in range(0, len(data), n):
                    await resp.write(data[at:at + n])
            if t.reply.drop_mid_stream:
                self._drop(request)
                return resp
            await resp.write_eof()
        except ConnectionResetError:
            self.abandoned_streams += 1
        except asyncio.CancelledError:
            self.abandoned_streams += 1
            raise
        finally:
            self.sent.append(bytes(sent))
        return resp

    @staticmethod
    def _drop(request: web.Request) -> None:
        if request.transport is not None:
            request.transport.abort()

    # ---- Anthropic handlers

    async def _anthropic_messages(self, request: web.Request) -> web.StreamResponse:
        raw, parsed = await self._record(request, ANTHROPIC_MESSAGES)
        if (refusal := self._anthropic_refusal(request, parsed, needs_body=True)) is not None:
            return refusal
        t = _Turn.build(self._next_reply(ANTHROPIC_MESSAGES), raw, parsed)
        await asyncio.sleep(t.reply.delay_s)
        headers = self._anthropic_headers(t)
        if t.reply.status >= 400:
            body = _anthropic_error(t.reply.status, t.anthropic_request_id, t.reply.error_type, t.reply.error_message)
            return self._json(t.reply.status, body, headers)
        builder = _Anthropic(t)
        if not parsed.get("stream"):
            if t.failed:
                return self._json(500, _anthropic_error(500, t.anthropic_request_id, t.reply.error_type,
                                                        t.reply.error_message), headers)
            return await self._send_json(request, t, builder.message(streaming=False), headers)
        frames, cut = builder.frames()
        return await self._send_sse(request, t, _cut(frames, cut, t, builder), headers, named=True)

    async def _anthropic_count_tokens(self, request: web.Request) -> web.StreamResponse:
        raw, parsed = await self._record(request, ANTHROPIC_COUNT_TOKENS)
        if (refusal := self._anthropic_refusal(request, parsed, needs_body=True)) is not None:
            return refusal
        t = _Turn.build(self._next_reply(ANTHROPIC_COUNT_TOKENS), raw, parsed, generate=False)
        await asyncio.sleep(t.reply.delay_s)
        headers = self._anthropic_headers(t)
        if t.reply.status >= 400:
            body = _anthropic_error(t.reply.status, t.anthropic_request_id, t.reply.error_type, t.reply.error_message)
            return self._json(t.reply.status, body, headers)
        return self._json(200, {"input_tokens": t.usage.input}, headers)

    async def _anthropic_models(self, request: web.Request) -> web.StreamResponse:
        _, parsed = await self._record(request, ANTHROPIC_MODELS)
        if (refusal := self._anthropic_refusal(request, parsed, needs_body=False)) is not None:
            return refusal
        t = _Turn.build(self._next_reply(ANTHROPIC_MODELS), b"", {}, generate=False)
        headers = self._anthropic_headers(t)
        if t.reply.status >= 400:
            body = _anthropic_error(t.reply.status, t.anthropic_request_id, t.reply.error_type, t.reply.error_message)
            return self._json(t.reply.status, body, headers)
        return self._json(200, _anthropic_models(self._anthropic_model_ids), headers)

    async def _anthropic_unknown(self, request: web.Request) -> web.StreamResponse:
        await self._record(request, "anthropic.unknown")
        rid = "req_011C" + _b62(20)
        return self._json(404, _anthropic_error(404, rid, message="Not Found"), {"request-id": rid})

    # ---- OpenAI handlers

    async def _openai_generate(self, request: web.Request,
                               api: str) -> tuple[_Turn, dict[str, str]] | web.StreamResponse:
        raw, parsed = await self._record(request, api)
        if (refusal := self._openai_refusal(request, parsed, needs_body=True)) is not None:
            return refusal
        if api == OPENAI_RESPONSES and (missing := self._unknown_previous(parsed, set())):
            return self._json(400, missing, {"x-request-id": "req_" + secrets.token_hex(16)})
        t = _Turn.build(self._next_reply(api), raw, parsed)
        await asyncio.sleep(t.reply.delay_s)
        headers = self._openai_headers(t)
        if t.reply.status >= 400:
            body = _openai_error(t.reply.status, t.reply.error_type, t.reply.error_message, t.reply.error_code)
            return self._json(t.reply.status, body, headers)
        if t.failed and not parsed.get("stream"):
            return self._json(500, _openai_error(500, t.reply.error_type, t.reply.error_message, t.reply.error_code),
                              headers)
        return t, headers

    async def _openai_chat(self, request: web.Request) -> web.StreamResponse:
        ready = await self._openai_generate(request, OPENAI_CHAT)
        if isinstance(ready, web.StreamResponse):
            return ready
        t, headers = ready
        builder = _Chat(t)
        if not t.body.get("stream"):
            return await self._send_json(request, t, builder.body(), headers)
        frames, cut = builder.frames()
        return await self._send_sse(request, t, _cut(frames, cut, t, builder), headers, named=False)

    async def _openai_responses(self, request: web.Request) -> web.StreamResponse:
        ready = await self._openai_generate(request, OPENAI_RESPONSES)
        if isinstance(ready, web.StreamResponse):
            return ready
        t, headers = ready
        builder = _Responses(t)
        if t.body.get("store", True) is not False:
            self._stored_response_ids.add(builder.id)
        if not t.body.get("stream"):
            return await self._send_json(request, t, builder.body(), headers)
        frames, cut = builder.frames()
        return await self._send_sse(request, t, _numbered(_cut(frames, cut, t, builder)), headers, named=True)

    async def _openai_embeddings(self, request: web.Request) -> web.StreamResponse:
        ready = await self._openai_generate(request, OPENAI_EMBEDDINGS)
        if isinstance(ready, web.StreamResponse):
            return ready
        t, headers = ready
        return await self._send_json(request, t, _embeddings_body(t), headers)

    async def _openai_models(self, request: web.Request) -> web.StreamResponse:
        _, parsed = await self._record(request, OPENAI_MODELS)
        if (refusal := self._openai_refusal(request, parsed, needs_body=False)) is not None:
            return refusal
        t = _Turn.build(self._next_reply(OPENAI_MODELS), b"", {}, generate=False)
        headers = self._openai_headers(t)
        if t.reply.status >= 400:
            body = _openai_error(t.reply.status, t.reply.error_type, t.reply.error_message, t.reply.error_code)
            return self._json(t.reply.status, body, headers)
        return self._json(200, _openai_models(self._openai_model_ids), headers)

    async def _openai_unknown(self, request: web.Request) -> web.StreamResponse:
        await self._record(request, "openai.unknown")
        body = _openai_error(404, message=f"Invalid URL ({request.method} {request.path.removeprefix('/openai')})")
        return self._json(404, body, {"x-request-id": "req_" + secrets.token_hex(16)})

    def _unknown_previous(self, body: dict[str, Any], on_socket: set[str]) -> dict[str, Any] | None:
        previous = body.get("previous_response_id")
        if previous is None or previous in on_socket or previous in self._stored_response_ids:
            return None
        return _openai_error(400, message=f"Previous response with id '{previous}' not found.",
                             code="previous_response_not_found", param="previous_response_id")

    # ---- OpenAI Responses, WebSocket mode

    async def _openai_responses_ws(self, request: web.Request) -> web.StreamResponse:
        _, parsed = await self._record(request, OPENAI_RESPONSES)
        if (refusal := self._openai_refusal(request, parsed, needs_body=False)) is not None:
            return refusal
        ws = web.WebSocketResponse(autoping=True)
        if not ws.can_prepare(request).ok:
            return self._json(405, _openai_error(405, "invalid_request_error", "Method not allowed."), {})
        await ws.prepare(request)
        on_socket: set[str] = set()
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            if not await self._ws_turn(request, ws, msg.data, on_socket):
                break
        return ws

    async def _ws_turn(self, request: web.Request, ws: web.WebSocketResponse, data: str, on_socket: set[str]) -> bool:
        """Answer one response.create frame; False when the socket is gone or was dropped on purpose."""
        raw = data.encode()
        try:
            frame = orjson.loads(raw)
        except orjson.JSONDecodeError:
            frame = None
        self.requests.append(RecordedRequest(
            api=OPENAI_RESPONSES, method="WS", path=request.path, query=dict(request.query),
            headers={k.lower(): v for k, v in request.headers.items()}, body=raw, json=frame))
        try:
            if not isinstance(frame, dict) or frame.get("type") != "response.create":
                await ws.send_str(_ws_error(400, _openai_error(400, message="Expected a response.create event.",
                                                               code="invalid_event")))
                return True
            if (missing := self._unknown_previous(frame, on_socket)) is not None:
                await ws.send_str(_ws_error(400, missing))
                return True
            generate = frame.get("generate", True) is not False
            t = _Turn.build(self._next_reply(OPENAI_RESPONSES) if generate else Reply(), raw, frame, generate=generate)
            await asyncio.sleep(t.reply.delay_s)
            if t.reply.status >= 400:
                body = _openai_error(t.reply.status, t.reply.error_type, t.reply.error_message, t.reply.error_code)
                await ws.send_str(_ws_error(t.reply.status, body))
                return True
            builder = _Responses(t)
            on_socket.add(builder.id)
            if frame.get("store", True) is not False:
                self._stored_response_ids.add(builder.id)
            frames, cut = builder.frames()
            self.served.append(t.usage)
            sent: list[str] = []
            self.sent.append(sent)
            pace = _Pace(t.reply.chunk_delay_s)
            for i, (event, payload) in enumerate(_numbered(_cut(frames, cut, t, builder))):
                if i and _generated(event, payload):
                    await pace.next()
                sent.append(self._dumps(_ws_payload(payload)).decode())
                await ws.send_str(sent[-1])
            if t.reply.drop_mid_stream:
                self._drop(request)
                return False
            return True
        except ConnectionResetError:
            self.abandoned_streams += 1
            return False


def _ws_error(status: int, body: dict[str, Any]) -> str:
    return orjson.dumps({"type": "error", "status": status, "error": body["error"]}).decode()


def _ws_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """Over WebSocket an in-stream error nests its details under `error`, as the SDK's ResponseWsError does."""
    if payload.get("type") != "error":
        return payload
    return {"type": "error", "sequence_number": payload["sequence_number"],
            "error": {"type": "server_error", "code": payload["code"], "message": payload["message"], "param": None}}


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeProvider(anthropic_key=args.anthropic_key, openai_key=args.openai_key, host=args.host, port=args.port)
    fake.default_reply = Reply(chunks=args.chunks, chunk_delay_s=args.chunk_delay_s)
    await fake.start()
    print(f"fake provider on {fake.base_url}\n  ANTHROPIC_BASE_URL={fake.anthropic_base_url} (x-api-key "
          f"{fake.anthropic_key})\n  OPENAI_BASE_URL={fake.openai_base_url} (Bearer {fake.openai_key})", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await fake.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fake_provider", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9999)
    parser.add_argument("--anthropic-key", default=ANTHROPIC_KEY)
    parser.add_argument("--openai-key", default=OPENAI_KEY)
    parser.add_argument("--chunks", type=int, default=None, help="text deltas per default reply")
    parser.add_argument("--chunk-delay-s", type=float, default=0.0, help="pause between stream events")
    try:
        asyncio.run(_serve(parser.parse_args(argv)))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
