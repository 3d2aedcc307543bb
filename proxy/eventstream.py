"""AWS event-stream framing (``application/vnd.amazon.eventstream``), as Bedrock streams it.

Each message is binary: a 12-byte prelude (total length, headers length, CRC32
of those 8 bytes), typed headers, the payload, and a CRC32 of everything before
it. The relay forwards the bytes untouched; metering only needs each message's
``:event-type`` / ``:message-type`` headers and its payload, so
``EventStreamSplitter`` cuts whole messages out of arbitrarily split chunks and
``encode`` builds them (the fake provider and the gateway's own in-stream error).
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Iterator, Mapping

CONTENT_TYPE = "application/vnd.amazon.eventstream"
_PRELUDE = struct.Struct(">III")
_CRC = struct.Struct(">I")
_MIN_MESSAGE = 16                   # prelude (12) + message CRC (4)
MAX_MESSAGE = 24 * 1024 * 1024      # a length past this is a broken stream, not a message to wait for

# header value type -> fixed width (None: 2-byte length prefix)
_BOOL_TRUE, _BOOL_FALSE, _BYTE, _SHORT, _INT, _LONG, _BYTES, _STRING, _TIMESTAMP, _UUID = range(10)
_FIXED = {_BOOL_TRUE: 0, _BOOL_FALSE: 0, _BYTE: 1, _SHORT: 2, _INT: 4, _LONG: 8, _TIMESTAMP: 8, _UUID: 16}


class FramingError(ValueError):
    """The bytes are not an event stream (bad length or CRC): metering stops, the relay does not."""


@dataclass(frozen=True, slots=True)
class Message:
    headers: Mapping[str, object]
    payload: bytes

    @property
    def event_type(self) -> str:
        return str(self.headers.get(":event-type") or self.headers.get(":exception-type") or "")

    @property
    def message_type(self) -> str:
        return str(self.headers.get(":message-type") or "event")


def encode(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One message with string headers (all Bedrock sends), CRCs included."""
    hb = bytearray()
    for name, value in headers.items():
        n, v = name.encode(), value.encode()
        hb += bytes([len(n)]) + n + bytes([_STRING]) + struct.pack(">H", len(v)) + v
    total = _MIN_MESSAGE + len(hb) + len(payload)
    prelude = struct.pack(">II", total, len(hb))
    head = prelude + struct.pack(">I", zlib.crc32(prelude)) + bytes(hb) + payload
    return head + struct.pack(">I", zlib.crc32(head))


def decode_headers(raw: bytes) -> dict[str, object]:
    out: dict[str, object] = {}
    i, end = 0, len(raw)
    while i < end:
        n = raw[i]
        name = raw[i + 1:i + 1 + n].decode("utf-8", "replace")
        i += 1 + n
        if i >= end:
            raise FramingError("event-stream header is cut short")
        kind = raw[i]
        i += 1
        if kind in (_BOOL_TRUE, _BOOL_FALSE):
            out[name] = kind == _BOOL_TRUE
            continue
        width = _FIXED.get(kind)
        if width is None:
            if kind not in (_BYTES, _STRING) or i + 2 > end:
                raise FramingError(f"event-stream header {name!r} has unknown type {kind}")
            width = struct.unpack_from(">H", raw, i)[0]
            i += 2
        value = raw[i:i + width]
        if len(value) != width:
            raise FramingError("event-stream header is cut short")
        i += width
        out[name] = value.decode("utf-8", "replace") if kind == _STRING else (
            int.from_bytes(value, "big", signed=True) if kind in (_BYTE, _SHORT, _INT, _LONG, _TIMESTAMP) else value)
    return out


_HEADER_MEMO: dict[bytes, dict[str, object]] = {}


def _headers(raw: bytes) -> Mapping[str, object]:
    """Decoded headers, memoized: a stream repeats the same few header blocks on every message."""
    found = _HEADER_MEMO.get(raw)
    if found is None:
        found = decode_headers(raw)
        if len(_HEADER_MEMO) >= 256:        # bounded: header values come from the upstream
            _HEADER_MEMO.clear()
        _HEADER_MEMO[raw] = found
    return found


class EventStreamSplitter:
    """Whole messages out of a byte stream cut anywhere. CRCs are checked: a message that fails
    them means the stream is not what it claims, and the splitter stops (``broken``) rather than
    guessing where the next message starts."""

    __slots__ = ("_buf", "broken")

    def __init__(self) -> None:
        self._buf = b""
        self.broken = False

    def feed(self, chunk: bytes) -> Iterator[Message]:
        if self.broken:
            return
        buf = self._buf + chunk if self._buf else chunk
        view = memoryview(buf)
        start, size = 0, len(buf)
        while size - start >= 12:
            total, hlen, pcrc = _PRELUDE.unpack_from(buf, start)
            if zlib.crc32(view[start:start + 8]) != pcrc or total < _MIN_MESSAGE + hlen or total > MAX_MESSAGE:
                self.broken, self._buf = True, b""
                return
            if size - start < total:
                break
            end = start + total
            if zlib.crc32(view[start:end - 4]) != _CRC.unpack_from(buf, end - 4)[0]:
                self.broken, self._buf = True, b""
                return
            try:
                headers = _headers(buf[start + 12:start + 12 + hlen])
            except FramingError:
                self.broken, self._buf = True, b""
                return
            yield Message(headers, buf[start + 12 + hlen:end - 4])
            start = end
        self._buf = buf[start:]

    @property
    def pending(self) -> bytes:
        return self._buf
