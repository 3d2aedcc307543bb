"""Splitting a server-sent-event byte stream into whole events, cheaply.

The relay forwards bytes as they arrive; metering only needs the few events
that carry usage. ``SseSplitter`` finds event boundaries without decoding
anything, and ``data_of`` pulls the JSON payload out of one event.
"""
from __future__ import annotations

from typing import Iterator

import orjson


class SseSplitter:
    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        """Yield every complete event (including its blank-line terminator)."""
        buf = self._buf + chunk if self._buf else chunk
        start = 0
        while True:
            end, sep = _boundary(buf, start)
            if end < 0:
                break
            yield buf[start:end + sep]
            start = end + sep
        self._buf = buf[start:]

    @property
    def pending(self) -> bytes:
        return self._buf


def _boundary(buf: bytes, start: int) -> tuple[int, int]:
    n = buf.find(b"\n\n", start)
    r = buf.find(b"\r\n\r\n", start)
    if r >= 0 and (n < 0 or r < n):
        return r, 4
    return (n, 2) if n >= 0 else (-1, 0)


def data_of(event: bytes) -> dict | None:
    """The JSON object of an event's ``data:`` lines, or None ([DONE], comments, bad JSON)."""
    parts = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            parts.append(line[5:].lstrip(b" "))
    if not parts:
        return None
    payload = b"\n".join(parts)
    if payload == b"[DONE]":
        return None
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None
