"""A lean HTTP/1.1 client for upstream calls: the second ``Transport`` (``transport.py``).

Why: aiohttp's client side is general (redirects, cookies, tracing, decompression, a connector
with limits and DNS caching) and costs a large share of the gateway's CPU per proxied call; the
gateway needs one request, one response, a pooled keep-alive connection. This module is one
``asyncio.Protocol`` per connection with ``httptools``' C parser, a keep-alive pool per
(scheme, host, port), and the request's bytes written in one go. It keeps the contract in
``transport.py`` to the letter, including aiohttp's exception types, so ``forward.open_upstream``
maps every failure to the same ``GatewayError`` as with aiohttp.

The default (``Gateway.transport_for``); ``LLMGW_UPSTREAM_CLIENT=aiohttp`` brings back aiohttp's client.

When a request may be sent again (the rule that keeps a POST from being sent twice):

- A pooled connection the server closed while it sat idle is dropped before reuse when the
  close was already seen (``connection_lost``), and so is one idle longer than
  ``KEEPALIVE_S`` (servers time idle connections out; a short bound narrows the race).
- Once a request's bytes were written, it is sent again only if it is idempotent (GET), the
  connection was a reused one, and not one byte of the response arrived: the server most likely
  closed an idle connection as we wrote. A POST is never sent again: the server may have read it
  and acted (begun a billed generation) before the connection broke, so the caller gets
  ``ServerDisconnectedError`` exactly as aiohttp gives it today, and the failover policy decides.
"""
from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import cast

import aiohttp
import httptools
from aiohttp.client_reqrep import ConnectionKey
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from llmgw.core.memo import Memo

KEEPALIVE_S = 15.0          # aiohttp's connector default: an idle connection older than this is closed
MAX_IDLE = 256              # idle connections kept per (scheme, host, port)
HIGH_WATER = 1 << 18        # bytes buffered for a lagging reader before the socket stops being read
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_HEADERS = (("Accept", "*/*"), ("User-Agent", aiohttp.http.SERVER_SOFTWARE))
_DEFAULT_LINES = tuple((k, f"{k}: {v}") for k, v in _DEFAULT_HEADERS)     # (name, its line)


class _Sent:
    """``request_info``: what the relay reads of the sent request (its headers, to scrub the credential)."""

    __slots__ = ("method", "url", "headers")

    def __init__(self, method: str, url: str, headers: Mapping[str, str]) -> None:
        self.method, self.url, self.headers = method, url, headers


class _Origin:
    """Where a request goes, parsed once per URL string by yarl, as aiohttp parses it: the path goes
    on the wire exactly as with aiohttp (Bedrock's SigV4 signs that form: ``bedrock.SigV4Signer``)."""

    __slots__ = ("key", "host", "port", "tls", "authority", "target")

    def __init__(self, url: str) -> None:
        u = URL(url)
        if u.scheme not in ("http", "https") or not u.host or u.port is None:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.tls = u.scheme == "https"
        self.host, self.port = u.host, u.port
        self.authority = u.host_port_subcomponent or u.host
        self.key = (u.scheme, self.host, self.port)
        self.target = u.raw_path_qs


_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())    # read-only: one for every response


class H1Response:
    """One response: status and headers read, body arriving. Also its own ``content``."""

    __slots__ = ("status", "headers", "content_type", "request_info", "_conn", "_chunks", "_buffered",
                 "_done", "_error", "_waiter")

    def __init__(self, sent: _Sent) -> None:
        self.status = 0
        self.headers: CIMultiDictProxy[str] = _NO_HEADERS
        self.content_type = "application/octet-stream"
        self.request_info = sent
        self._conn: _Connection | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def content(self) -> H1Response:
        return self

    # -- fed by the connection (which appends to _chunks itself: _Connection.on_body) --
    def _end(self, error: BaseException | None = None) -> None:
        if self._done or self._error is not None:
            return
        if error is None:
            self._done = True
        else:
            self._error = error
        self._conn = None
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # -- read by the relay -----------------------------------------------------
    def at_eof(self) -> bool:
        return self._done and not self._chunks

    def iter_any(self) -> AsyncIterator[bytes]:
        """Each part as it arrives. The response is its own iterator, not an async generator: the
        loop tracks every async generator in a weak set (an add and a removal callback per call)."""
        return self

    def __aiter__(self) -> H1Response:
        return self

    async def __anext__(self) -> bytes:
        """Whatever has arrived (joined); the iteration ends with the body, and raises if it broke off.
        One coroutine per read: a stream paced like a model reads once per delta."""
        while not self._chunks:
            if self._done:
                raise StopAsyncIteration
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunks = self._chunks
        if len(chunks) == 1:
            data = chunks.popleft()
        else:
            data = b"".join(chunks)
            chunks.clear()
        self._buffered = 0
        conn = self._conn
        if conn is not None and conn.paused:
            conn.resume()
        if not data:
            raise StopAsyncIteration
        return data

    async def read(self) -> bytes:
        parts = [data async for data in self]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        """The body is not wanted: a connection still carrying it cannot be reused."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.abort()
        self._chunks.clear()
        if not self._done and self._error is None:
            self._error = aiohttp.ClientConnectionError("Connection closed")

    async def __aenter__(self) -> H1Response:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc_val: BaseException | None,
                        exc_tb: TracebackType | None) -> None:
        self.close()


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection: at most one request in flight, its response parsed as it arrives."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: H1Response | None = None
        self.headers_future: asyncio.Future[None] | None = None
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.got_bytes = False          # any byte of the current response arrived
        self.headers_done = False
        self.close_delimited = False
        self.closed = False
        self.paused = False
        self.idle_since = 0.0
        self.last_byte = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.read_timeout = pool.read_timeout

    # -- asyncio.Protocol ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)     # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self.response is None:           # bytes while idle: the connection cannot be trusted
            self.abort()
            return
        self.got_bytes = True
        self.last_byte = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def eof_received(self) -> bool | None:
        return None                         # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_timer()
        self.pool.forget(self)
        if self.response is None:
            return
        if self.headers_done and self.close_delimited and exc is None:
            self.on_message_complete()       # the body ran until the server closed
            return
        self._fail(exc)

    # -- httptools callbacks ---------------------------------------------------
    def on_message_begin(self) -> None:
        if self.response is None:           # a second response to one request: nothing can be trusted
            self.abort()
            raise ConnectionError("unrequested response")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))          # decoded together at the end of the headers

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:             # an interim response (100 Continue): the real one follows
            self.raw_headers = []
            return
        resp = self.response
        assert resp is not None
        headers = CIMultiDict([(n.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
                               for n, v in self.raw_headers])
        self.raw_headers = []
        resp.status = status
        resp.headers = CIMultiDictProxy(headers)
        ctype = headers.get("content-type")
        if ctype is not None:
            resp.content_type = ctype.partition(";")[0].strip().lower()
        self.close_delimited = ("content-length" not in headers and "transfer-encoding" not in headers
                                and status not in (204, 304))
        self.headers_done = True
        resp._conn = self
        f = self.headers_future
        if f is not None and not f.done():
            f.set_result(None)

    def on_body(self, body: bytes) -> None:
        resp = self.response
        assert resp is not None
        # once per chunk of a chunked body (an SSE event, usually): the response's part inline
        resp._chunks.append(body)
        resp._buffered += len(body)
        w = resp._waiter
        if w is not None and not w.done():
            w.set_result(None)
        if resp._buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if not self.headers_done:           # the end of an interim response
            return
        resp, self.response = self.response, None
        keep = not self.close_delimited and self.parser.should_keep_alive() and not self.closed
        self.headers_done = self.got_bytes = self.close_delimited = False
        if resp is not None:
            resp._end()
        if keep:
            if self.paused:
                self.resume()
            self.pool.put(self)
        else:
            self.abort()

    # -- driven by the pool ----------------------------------------------------
    def send(self, request: bytes, resp: H1Response) -> asyncio.Future[None]:
        assert self.transport is not None
        self.response = resp
        self.got_bytes = False
        self.headers_future = self.loop.create_future()
        self.last_byte = self.loop.time()
        if self.timer is None:      # else the last request's timer, still pending, is pushed on when due
            self.timer = self.loop.call_at(self.last_byte + self.read_timeout, self._check_timeout)
        self.transport.write(request)
        return self.headers_future

    def resume(self) -> None:
        self.paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
            self.last_byte = self.loop.time()    # the wait for the server starts again now

    def abort(self) -> None:
        """Close without a clean end: whatever is in flight fails as a disconnect."""
        self._stop_timer()
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()
        self.pool.forget(self)

    def _check_timeout(self) -> None:
        """One timer per connection, pushed forward by arriving bytes (no timer re-armed per chunk) and
        left running when a response ends, so that back-to-back requests on a kept-alive connection
        share it instead of making and cancelling one each: when it fires for an idle connection it
        stops, and the next request starts a new one."""
        self.timer = None
        if self.response is None:
            return
        due = self.last_byte + self.read_timeout
        now = self.loop.time()
        if self.paused or now < due:        # a lagging reader is not the server's silence
            self.timer = self.loop.call_at(max(due, now + 0.001) if not self.paused else now + self.read_timeout,
                                           self._check_timeout)
            return
        self._fail(aiohttp.SocketTimeoutError("Timeout on reading data from socket"))
        self.abort()

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _fail(self, exc: BaseException | None) -> None:
        resp, self.response = self.response, None
        if resp is None:
            return
        if isinstance(exc, httptools.HttpParserError) and not self.headers_done:
            sent = resp.request_info          # aiohttp's answer to a malformed status line or header
            url = URL(sent.url)
            info = aiohttp.RequestInfo(url, sent.method, CIMultiDictProxy(CIMultiDict(sent.headers)), url)
            error: BaseException = aiohttp.ClientResponseError(info, (), status=400, message=str(exc))
        elif isinstance(exc, httptools.HttpParserError):
            error = aiohttp.ClientPayloadError(f"Response payload is not valid HTTP: {exc}")
        elif isinstance(exc, asyncio.TimeoutError):
            error = exc
        elif not self.headers_done:
            error = aiohttp.ClientOSError(*exc.args) if isinstance(exc, OSError) else \
                aiohttp.ServerDisconnectedError()
        else:
            error = aiohttp.ClientPayloadError(f"Response payload is not completed: {exc!r}")
        f = self.headers_future
        if f is not None and not f.done():
            f.set_exception(error)
        elif self.headers_done:
            resp._end(error)
        self.abort()


class _Pool:
    """Idle keep-alive connections to one (scheme, host, port), newest last."""

    def __init__(self, origin: _Origin, ssl_context: ssl.SSLContext | None, connect_timeout: float,
                 read_timeout: float) -> None:
        self.origin = origin
        self.ssl = ssl_context
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.idle: list[_Connection] = []
        self.opened = 0                     # connections made (tests count reuse by it)

    def take(self) -> _Connection | None:
        idle, now = self.idle, time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < KEEPALIVE_S and conn.transport is not None \
                    and not conn.transport.is_closing():
                return conn
            conn.abort()
        return None

    def put(self, conn: _Connection) -> None:
        if len(self.idle) >= MAX_IDLE:
            conn.abort()
            return
        conn.idle_since = time.monotonic()
        self.idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    async def connect(self) -> _Connection:
        o = self.origin
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self), o.host, o.port, ssl=self.ssl,
                    server_hostname=o.host if self.ssl is not None else None)
        except TimeoutError:
            raise aiohttp.ConnectionTimeoutError(f"Connection timeout to host {o.host}:{o.port}") from None
        except OSError as exc:
            key = ConnectionKey(o.host, o.port, o.tls, self.ssl if self.ssl is not None else True,
                                None, None, None, o.host)
            raise aiohttp.ClientConnectorError(key, exc) from None
        self.opened += 1
        return conn

    def close(self) -> None:
        for conn in self.idle[:]:
            conn.abort()
        self.idle.clear()


class H1Transport:
    """The network, through the lean client: one pool per origin, shared by an upstream's calls."""

    __slots__ = ("connect_timeout", "read_timeout", "_ssl", "_origins", "_pools")

    def __init__(self, connect_timeout: float, read_timeout: float, ssl_context: ssl.SSLContext | None = None) -> None:
        """``ssl_context``: how https upstreams are verified (default: the system's trust store)."""
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self._ssl = ssl_context
        self._origins: Memo[str, _Origin] = Memo(_Origin)
        self._pools: dict[tuple[str, str, int], _Pool] = {}

    def pool(self, origin: _Origin) -> _Pool:
        p = self._pools.get(origin.key)
        if p is None:
            if origin.tls and self._ssl is None:
                self._ssl = ssl.create_default_context()
            p = self._pools[origin.key] = _Pool(origin, self._ssl if origin.tls else None,
                                                self.connect_timeout, self.read_timeout)
        return p

    async def send(self, method: str, url: str, body: bytes | None,
                   headers: Mapping[str, str]) -> H1Response:
        origin = self._origins[url]
        request = _request_bytes(method, origin, body, headers)
        pool = self.pool(origin)
        sent = _Sent(method, url, headers)
        conn = pool.take()
        reused = conn is not None
        while True:
            if conn is None:
                conn = await pool.connect()
            resp = H1Response(sent)
            try:
                await conn.send(request, resp)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                # see the module docstring: only an idempotent request on a reused connection that
                # broke before any response byte goes again, once, on a new connection
                if reused and not conn.got_bytes and method in _IDEMPOTENT:
                    conn, reused = None, False
                    continue
                raise
            except BaseException:
                conn.abort()                 # cancelled mid-request: its state is unknown
                raise
            return resp

    def close(self) -> None:
        for p in self._pools.values():
            p.close()
        self._pools.clear()


def _request_bytes(method: str, origin: _Origin, body: bytes | None, headers: Mapping[str, str]) -> bytes:
    if not isinstance(headers, (CIMultiDict, CIMultiDictProxy)):
        headers = CIMultiDict(headers)     # names are looked up regardless of case below
    lines = [f"{method} {origin.target} HTTP/1.1", f"Host: {origin.authority}"]
    lines += [line for name, line in _DEFAULT_LINES if name not in headers]
    lines += map(": ".join, headers.items())
    if body is not None:
        if "content-type" not in headers:      # what aiohttp says of a body of bytes
            lines.append("Content-Type: application/octet-stream")
        lines.append(f"Content-Length: {len(body)}")
    head = "\r\n".join(lines)
    breaks = len(lines) - 1
    if head.count("\n") != breaks or head.count("\r") != breaks:
        # a header value cannot end the line it is on (aiohttp refuses it the same way)
        raise ValueError("Newline or carriage return character detected in HTTP status message or header")
    data = (head + "\r\n\r\n").encode("utf-8")
    return data + body if body else data


__all__ = ["H1Response", "H1Transport", "KEEPALIVE_S"]
