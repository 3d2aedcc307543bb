"""The SSE splitter's and the chat meter's fast paths against the code they replaced (Hypothesis).

``SseSplitter.feed`` cuts a CR-free buffer with one ``split``, ``fields_of`` slices a lone
``data:`` line, and ``ChatMeter.feed`` skips the events that cannot matter without calling
``_look``. The references below are the code as it was before (commit 08d154e): over streams
made of the bytes that matter to framing and metering (LF, CR, ``data:``, ``event:``, usage and
error objects, ``\\u00`` escapes, ``[DONE]``, comments), cut anywhere, the new code must give the
same events, fields, forwarded bytes and usage, byte for byte and token for token.
"""
from __future__ import annotations

from typing import Any, Iterator

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmgw.proxy.adapters import openai_chat as oc
from llmgw.proxy.adapters.openai_chat import ChatMeter
from llmgw.proxy.sse import SseSplitter, fields_of, loads_object
from llmgw.proxy.types import Call
from tests.test_meter_properties import chunked

PROFILE = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CALL = Call(model="m", stream=True, body=b'{"model":"m"}', max_output_tokens=1000)


# -- the references: the code before the fast paths ------------------------------------------
def _old_boundary(buf: bytes, start: int) -> tuple[int, int]:
    n = buf.find(b"\n\n", start)
    r = buf.find(b"\r\n\r\n", start, n + 2) if n >= 0 else buf.find(b"\r\n\r\n", start)
    if r >= 0 and (n < 0 or r < n):
        return r, 4
    return (n, 2) if n >= 0 else (-1, 0)


class OldSplitter:
    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        buf = self._buf + chunk if self._buf else chunk
        start = 0
        while True:
            end, sep = _old_boundary(buf, start)
            if end < 0:
                break
            yield buf[start:end + sep]
            start = end + sep
        self._buf = buf[start:]

    @property
    def pending(self) -> bytes:
        return self._buf


def old_fields_of(event: bytes) -> tuple[bytes, bytes | None]:
    name = b""
    parts: list[bytes] = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            v = line[5:]
            parts.append(v[1:] if v[:1] == b" " else v)
        elif line.startswith(b"event:"):
            v = line[6:]
            name = (v[1:] if v[:1] == b" " else v).strip()
    return name, (b"\n".join(parts) if parts else None)


class OldChatMeter(ChatMeter):
    """ChatMeter's feed and _look as they were: every event through ``_look``, parsed by the old
    splitter and ``fields_of``."""

    __slots__ = ()

    def __init__(self, hide_usage_chunk: bool, call: Call | None = None) -> None:
        super().__init__(hide_usage_chunk, call)
        self._split = OldSplitter()  # type: ignore[assignment]

    def feed(self, chunk: bytes) -> bytes:
        if not self._hide_usage:
            for event in self._split.feed(chunk):
                self._old_look(event)
            return chunk
        kept = []
        for event in self._split.feed(chunk):
            if not self._old_look(event):
                kept.append(event)
        return b"".join(kept)

    def _old_look(self, event: bytes) -> bool:
        if self._output_seen and not oc._may_hold_usage(event) and not oc._may_hold_error(event):
            return False
        obj = loads_object(old_fields_of(event)[1])
        if obj is None:
            return False
        err = obj.get("error")
        if isinstance(err, dict):
            kind = err.get("type") or err.get("code")
            self.usage.error_type = kind if isinstance(kind, str) and kind else "error"
        if not self._output_seen:
            self._output_seen = oc._has_output(obj.get("choices"))
        if not isinstance(obj.get("usage"), dict):
            return False
        self._take(obj)
        return not obj.get("choices")


# -- what streams are made of ------------------------------------------------------------------
def _chunk(delta: dict[str, Any] | None = None, usage: Any = None, choices: bool = True) -> bytes:
    obj: dict[str, Any] = {"id": "c", "model": "gpt-4o-mini",
                           "choices": [{"index": 0, "delta": delta or {}}] if choices else [], "usage": usage}
    return orjson.dumps(obj)


USAGE = {"prompt_tokens": 35, "completion_tokens": 5, "total_tokens": 40,
         "prompt_tokens_details": {"cached_tokens": 3}, "completion_tokens_details": {"reasoning_tokens": 1}}
PAYLOADS = [
    _chunk({"role": "assistant", "content": ""}), _chunk({"content": "Hello"}), _chunk({"content": " usage"}),
    _chunk({"content": 'say "usage": {"x":1} and error'}), _chunk(usage=USAGE, choices=False),
    _chunk({"content": "x"}, usage=USAGE), _chunk(usage={"prompt_tokens": 7, "completion_tokens": 2}, choices=False),
    orjson.dumps({"error": {"type": "server_error", "message": "boom"}}),
    orjson.dumps({"error": {"code": "overloaded"}}), b'{"\\u0075sage":{"prompt_tokens":9,"completion_tokens":4}}',
    b'{"choices":[{"delta":{"content":"\\u00e9"}}],"usage":null}', b"[DONE]", b"not json", b"{}", b"",
    b'{"choices":[],"usage":\n{"prompt_tokens":1,"completion_tokens":1}}',
]
LINE_ENDS = [b"\n", b"\r\n", b"\r"]
SEPARATORS = [b"\n\n", b"\r\n\r\n", b"\n\n\n", b"\r\n\n", b"\n", b"\r\r", b"\n\r\n\r\n"]


@st.composite
def events(draw: st.DrawFn) -> bytes:
    """One event as a provider (or a hostile one) might frame it."""
    payload = draw(st.sampled_from(PAYLOADS))
    end = draw(st.sampled_from(LINE_ENDS))
    lines = []
    if draw(st.booleans()) and draw(st.booleans()):
        lines.append(b": keep-alive")
    if draw(st.booleans()) and draw(st.booleans()):
        lines.append(b"event: " + draw(st.sampled_from([b"chunk", b"error", b"usage"])))
    space = draw(st.sampled_from([b" ", b""]))
    if draw(st.booleans()) and b"\n" not in payload:
        lines.append(b"data:" + space + payload)
    else:                                              # a payload over several data: lines
        lines.extend(b"data:" + space + part for part in payload.split(b"\n"))
    return end.join(lines) + draw(st.sampled_from(SEPARATORS))


streams = st.lists(events(), min_size=1, max_size=12).map(b"".join)
raw_bytes = st.lists(st.sampled_from([b"\n", b"\r", b"\n\n", b"\r\n\r\n", b"data:", b"data: ", b"event: x", b"x",
                                      b'{"a":1}', b":c", b" "]), max_size=30).map(b"".join)


sizes = st.lists(st.integers(1, 80), min_size=1, max_size=8)


@PROFILE
@given(data=st.one_of(streams, raw_bytes), sizes=sizes)
def test_the_splitter_gives_the_events_of_the_old_scan(data, sizes):
    new, old = SseSplitter(), OldSplitter()
    for piece in chunked(data, sizes):
        assert new.feed(piece) == list(old.feed(piece))
        assert new.pending == old.pending


@PROFILE
@given(event=st.one_of(events(), raw_bytes))
def test_fields_are_read_as_before(event):
    assert fields_of(event) == old_fields_of(event)
    for piece in OldSplitter().feed(event + b"\n\n"):
        assert fields_of(piece) == old_fields_of(piece)


@PROFILE
@given(data=streams, sizes=sizes, hide=st.booleans())
def test_the_chat_meter_forwards_and_meters_as_before(data, sizes, hide):
    new, old = ChatMeter(hide, CALL), OldChatMeter(hide, CALL)
    for piece in chunked(data, sizes):
        assert new.feed(piece) == old.feed(piece)
        assert new.saw_output() == old.saw_output()
    assert new.tail() == old.tail()
    assert new.result() == old.result()
