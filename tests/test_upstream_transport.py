"""Mid-stream upstream failures through the transport seam (proxy/transport.py), no socket to break.

The fake provider writes one real streamed reply (its wire style varies like real providers'); a
transport replays those bytes and breaks the body off after byte ``cut``, for cuts all through the
stream. Whatever the cut, the client gets exactly the bytes before it, the call ends as one
``upstream_error`` event, and what the meter saw before the break is billed (the input tokens once
``message_start`` arrived whole)."""
from __future__ import annotations

import random
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import aiohttp
import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from llmgw.core import events as E
from tests.fake_provider import FakeProvider, Reply, Usage
from tests.gateway_harness import GatewayHarness


@dataclass
class _Sent:
    headers: CIMultiDictProxy[str]


class _Body:
    def __init__(self, data: bytes, cut: int, rng: random.Random) -> None:
        self.data, self.cut, self.rng = data, cut, rng

    async def _chunks(self) -> AsyncIterator[bytes]:
        pos = 0
        while pos < self.cut:                       # the prefix in uneven pieces, as a socket delivers it
            n = min(self.cut - pos, self.rng.randint(1, 64))
            yield self.data[pos:pos + n]
            pos += n
        raise aiohttp.ClientPayloadError("Response payload is not completed")

    def iter_any(self) -> AsyncIterator[bytes]:
        return self._chunks()


@dataclass
class _Response:
    status: int
    headers: CIMultiDictProxy[str]
    content: _Body
    request_info: _Sent
    closed: bool = False

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip()

    async def read(self) -> bytes:
        raise AssertionError("a streamed reply is relayed, never read whole")

    def close(self) -> None:
        self.closed = True

    async def __aenter__(self) -> _Response:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc_val: BaseException | None,
                        exc_tb: TracebackType | None) -> None:
        self.close()


@dataclass
class CutTransport:
    """Replays ``body`` and breaks it off after ``cut`` bytes."""

    body: bytes
    cut: int = 0
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    urls: list[str] = field(default_factory=list)

    async def send(self, method: str, url: str, body: bytes | None, headers: Mapping[str, str]) -> _Response:
        self.urls.append(url)
        answer = CIMultiDictProxy(CIMultiDict({"content-type": "text/event-stream", "request-id": "req_fake"}))
        return _Response(200, answer, _Body(self.body, self.cut, self.rng),
                         _Sent(CIMultiDictProxy(CIMultiDict(headers))))


async def _one_real_stream(fake: FakeProvider, tmp_path: Path, request: dict[str, object]) -> bytes:
    """The bytes the fake provider writes for one streamed reply, through a gateway on the network."""
    async with GatewayHarness(fake, tmp_path / "real") as h, aiohttp.ClientSession() as http:
        key, _ = h.key()
        async with http.post(f"{h.url}/v1/messages", json=request,
                             headers={"x-api-key": key, "anthropic-version": "2023-06-01"}) as resp:
            assert resp.status == 200
            await resp.read()
    sent = fake.sent[-1]
    assert isinstance(sent, bytes)
    return sent


async def test_a_stream_broken_after_any_byte_reaches_the_client_as_served_and_is_billed_once(
        fake_provider: FakeProvider, tmp_path: Path) -> None:
    fake_provider.style = "spaced+crlf"
    fake_provider.script(Reply(text="one two three four five six", usage=Usage(input=1200, output=6)))
    request = {"model": "claude-sonnet-4-6", "max_tokens": 64, "stream": True,
               "messages": [{"role": "user", "content": "hi"}]}
    body = await _one_real_stream(fake_provider, tmp_path, request)
    start_end = body.index(b"message_start")
    start_end = body.index(b"\r\n\r\n", start_end) + 4          # message_start arrived whole here
    cuts = sorted({0, 1, start_end - 1, start_end, start_end + 1, len(body) - 1,
                   *random.Random(3).sample(range(1, len(body)), 10)})
    transport = CutTransport(body)
    async with GatewayHarness(fake_provider, tmp_path / "cut", transport=transport) as h, \
            aiohttp.ClientSession() as http:
        key, _ = h.key()
        for n, cut in enumerate(cuts, 1):
            transport.cut = cut
            async with http.post(f"{h.url}/v1/messages", json=request,
                                 headers={"x-api-key": key, "anthropic-version": "2023-06-01"}) as resp:
                got = await resp.read()
            assert resp.status == 200
            assert got == body[:cut], f"cut at {cut}"
            events = await h.events()
            assert len(events) == n, f"cut at {cut}: one event per call"
            ev = events[-1]
            assert ev.outcome == E.UPSTREAM_ERROR and ev.provider == "anthropic"
            assert ev.cost_nano_usd >= 0
            if cut >= start_end:
                assert ev.tokens.input == 1200, f"cut at {cut}: the input seen in message_start is billed"
    assert len(transport.urls) == len(cuts) and all(u.endswith("/v1/messages") for u in transport.urls)
    assert len(fake_provider.sent) == 1                     # the cut calls never reached the network
    assert orjson.loads(body[body.index(b"{"):body.index(b"\r\n", body.index(b"{"))])["type"] == "message_start"
