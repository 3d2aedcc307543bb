"""The upstream transport: the one method every HTTP call to a provider goes through.

Like httpx's ``AsyncBaseTransport.handle_async_request``, ``Transport.send`` takes a finished request
(method, URL, body, headers, already signed) and returns the provider's response with its body still
unread. Two go to the network (``Gateway.transport_for``, ``LLMGW_UPSTREAM_CLIENT``): ``H1Transport``
(``h1.py``, the default: a lean HTTP/1.1 client, keep-alive pool per origin) and ``AiohttpTransport``
(one pooled ``aiohttp.ClientSession`` per upstream). A test hands ``create_app(settings, transport=...)``
a transport of its own to play a provider that breaks in ways a socket cannot be made to break on
cue: a body that stops after any byte, a stall, a reset. The relay sees exactly what it would see from the network.

The contract a transport keeps, because the relay and ``forward.open_upstream`` rely on it:

- ``send`` raises aiohttp's client errors for a request that got no response
  (``aiohttp.ClientConnectorError``, ``aiohttp.ServerDisconnectedError``, ``asyncio.TimeoutError``);
- the response body's iterator raises ``aiohttp.ClientPayloadError`` (or ``ServerDisconnectedError``,
  ``asyncio.TimeoutError``) when the body breaks off;
- ``request_info.headers`` are the headers that were sent (the relay scrubs the credential they carry
  out of an error streamed back).
- the body may also have ``at_eof()`` (aiohttp's reader has it): True once the provider's body has
  ended, so the relay sends the last bytes together with the end of the stream; without it, the
  end goes in a send of its own.

The Responses WebSocket (``websocket.py``) opens its upstream socket on the session directly.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Protocol

import aiohttp
from yarl import URL

from llmgw.core.memo import Memo


class UpstreamBody(Protocol):
    def iter_any(self) -> AsyncIterator[bytes]: ...


class SentRequest(Protocol):
    @property
    def headers(self) -> Mapping[str, str]: ...


class UpstreamResponse(Protocol):
    """What the gateway reads of a provider's response (``aiohttp.ClientResponse`` is one)."""

    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def content_type(self) -> str: ...
    @property
    def content(self) -> UpstreamBody: ...
    @property
    def request_info(self) -> SentRequest: ...
    async def read(self) -> bytes: ...
    def close(self) -> None: ...
    async def __aenter__(self) -> UpstreamResponse: ...
    async def __aexit__(self, exc_type: type[BaseException] | None, exc_val: BaseException | None,
                        exc_tb: TracebackType | None) -> None: ...


class Transport(Protocol):
    async def send(self, method: str, url: str, body: bytes | None,
                   headers: Mapping[str, str]) -> UpstreamResponse: ...


class AiohttpTransport:
    """The network: a request on the upstream's pooled session."""

    __slots__ = ("session", "_urls")

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self._urls: Memo[str, URL] = Memo(URL)      # aiohttp would parse a str URL on every request

    async def send(self, method: str, url: str, body: bytes | None,
                   headers: Mapping[str, str]) -> UpstreamResponse:
        return await self.session.request(method, self._urls[url], data=body, headers=headers)

    def close(self) -> None:
        """Nothing of its own to close: the session is the Gateway's, closed with the others."""
