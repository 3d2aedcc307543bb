"""The lean upstream client (proxy/h1.py) against a server on loopback written byte by byte.

What a provider can do on the wire: any split of its bytes into TCP segments, chunked bodies with odd
chunk sizes and extensions, content-length and close-delimited bodies, header names in any case, a
body that breaks off, an idle keep-alive connection it closes. The client keeps the Transport
contract (proxy/transport.py) through all of it, reuses connections, and never sends a POST twice.
"""
from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from llmgw.core import events as E
from llmgw.proxy.h1 import H1Transport
from tests.fake_provider import FakeProvider, Reply as FakeReply, Usage
from tests.gateway_harness import GatewayHarness

Reply = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]   # True: keep the connection


class Wire:
    """A loopback server: each request's head and body read, then ``reply`` writes raw bytes."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.accepts = 0
        self.requests: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> Wire:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        for w in self.writers:
            w.close()
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepts += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                request = head + (await reader.readexactly(length) if length else b"")
                self.requests.append(request)
                if not await self.reply(request, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


async def _write_split(writer: asyncio.StreamWriter, data: bytes, cuts: list[int]) -> None:
    last = 0
    for cut in sorted(set(c % (len(data) + 1) for c in cuts)) + [len(data)]:
        if cut > last:
            writer.write(data[last:cut])
            await writer.drain()
            await asyncio.sleep(0)
            last = cut


def _chunked(body: bytes, sizes: list[int], extensions: bool) -> bytes:
    out, i, k = [], 0, 0
    while i < len(body):
        n = sizes[k % len(sizes)] if sizes else len(body)
        k += 1
        piece = body[i:i + n]
        i += n
        ext = b";name=value" if extensions and k % 2 else b""
        out.append(b"%x%s\r\n%s\r\n" % (len(piece), ext, piece))
    out.append(b"0\r\n\r\n")
    return b"".join(out)


def _framed(body: bytes, encoding: str, sizes: list[int], extensions: bool) -> tuple[bytes, bytes]:
    """(header lines, body bytes on the wire) for one framing."""
    if encoding == "chunked":
        return b"Transfer-Encoding: chunked\r\n", _chunked(body, sizes, extensions)
    if encoding == "length":
        return b"Content-Length: %d\r\n" % len(body), body
    return b"Connection: close\r\n", body          # close-delimited: the end of the body is the close


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=3000),
       encoding=st.sampled_from(["chunked", "length", "close"]),
       sizes=st.lists(st.integers(1, 700), max_size=5),
       extensions=st.booleans(),
       cuts=st.lists(st.integers(0, 10_000), max_size=8),
       case=st.sampled_from([str.lower, str.upper, str.title]),
       iterate=st.booleans())
async def test_any_framing_and_split_arrives_whole(body: bytes, encoding: str, sizes: list[int], extensions: bool,
                                                   cuts: list[int], case: Callable[[str], str],
                                                   iterate: bool) -> None:
    async def reply(request: bytes, w: asyncio.StreamWriter) -> bool:
        framing, wire = _framed(body, encoding, sizes, extensions)
        head = (b"HTTP/1.1 200 OK\r\n" + case("Content-Type").encode() + b": text/event-stream; charset=utf-8\r\n"
                + case("X-Request-Id").encode() + b": r1\r\n" + framing + b"\r\n")
        await _write_split(w, head + wire, cuts)
        return encoding != "close"

    async with Wire(reply) as wire:
        t = H1Transport(5.0, 5.0)
        for _ in range(2):
            resp = await t.send("POST", wire.url + "/v1/messages?beta=true", b'{"a":1}', {"x-api-key": "k" * 10})
            async with resp:
                assert resp.status == 200 and resp.content_type == "text/event-stream"
                assert resp.headers["x-request-id"] == "r1" and resp.request_info.headers["x-api-key"] == "k" * 10
                if iterate:
                    got = b"".join([c async for c in resp.content.iter_any()])
                    assert resp.content.at_eof()
                else:
                    got = await resp.read()
            assert got == body
        t.close()
        assert wire.accepts == (2 if encoding == "close" else 1)      # keep-alive bodies reuse the connection
        assert all(r.startswith(b"POST /v1/messages?beta=true HTTP/1.1\r\n") for r in wire.requests)
        assert all(r.endswith(b'\r\n\r\n{"a":1}') for r in wire.requests)


async def test_the_request_is_one_write_with_host_and_length() -> None:
    async def reply(request: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        return True

    async with Wire(reply) as wire:
        t = H1Transport(5.0, 5.0)
        async with await t.send("POST", wire.url + "/x", b"hello", {"Authorization": "Bearer abcdefgh"}) as r:
            assert r.status == 204 and await r.read() == b""
        async with await t.send("GET", wire.url + "/models", None, {}) as r:
            assert r.status == 204
        t.close()
    post, get = wire.requests
    host = wire.url.removeprefix("http://").encode()
    assert b"\r\nHost: " + host + b"\r\n" in post and b"\r\nContent-Length: 5\r\n" in post
    assert b"\r\nAuthorization: Bearer abcdefgh\r\n" in post and post.endswith(b"\r\n\r\nhello")
    assert get.startswith(b"GET /models HTTP/1.1\r\n") and b"content-length" not in get.lower()
    assert wire.accepts == 1


async def test_a_header_cannot_smuggle_a_line() -> None:
    t = H1Transport(5.0, 5.0)
    with pytest.raises(ValueError):
        await t.send("POST", "http://127.0.0.1:9/x", b"", {"x-thing": "a\r\nX-Evil: 1"})


@pytest.mark.parametrize("encoding", ["chunked", "length"])
async def test_a_body_breaking_off_is_a_payload_error(encoding: str) -> None:
    body = b"data: " + b"x" * 500 + b"\n\n"

    async def reply(request: bytes, w: asyncio.StreamWriter) -> bool:
        framing, data = _framed(body, encoding, [100], False)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n" + framing + b"\r\n" + data[:250])
        await w.drain()
        return False                                            # and close: the rest never comes

    async with Wire(reply) as wire:
        t = H1Transport(5.0, 5.0)
        got = b""
        async with await t.send("POST", wire.url + "/s", b"{}", {}) as resp:
            with pytest.raises(aiohttp.ClientPayloadError):
                async for chunk in resp.content.iter_any():
                    got += chunk
        assert 0 < len(got) < len(body) and body.startswith(got)
        # the broken connection is not pooled: the next call opens a new one
        async with await t.send("POST", wire.url + "/s", b"{}", {}) as resp:
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        assert wire.accepts == 2
        t.close()


async def test_an_idle_connection_the_server_closed_is_not_reused() -> None:
    """The server closes every connection after answering (keep-alive said, then the idle timeout):
    each call still succeeds, on a new connection, and each POST reaches the server once."""
    async def reply(request: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await w.drain()
        return False

    async with Wire(reply) as wire:
        t = H1Transport(5.0, 5.0)
        for _ in range(3):
            async with await t.send("POST", wire.url + "/p", b"{}", {}) as r:
                assert await r.read() == b"ok"
            await asyncio.sleep(0.05)             # the server's close reaches the idle connection
        t.close()
    assert len(wire.requests) == 3 and wire.accepts == 3


async def test_a_post_on_a_connection_closed_under_it_is_never_sent_again() -> None:
    """The race the idle check cannot see: the server takes the request and closes without a byte.
    A POST is not repeated (the server may have acted): ServerDisconnectedError, as aiohttp gives it.
    A GET (idempotent) goes again once, on a new connection."""
    served = 0

    async def reply(request: bytes, w: asyncio.StreamWriter) -> bool:
        nonlocal served
        served += 1
        if served == 2 or served == 4:            # the second request on each connection: silence, close
            return False
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True

    async with Wire(reply) as wire:
        t = H1Transport(5.0, 5.0)
        async with await t.send("POST", wire.url + "/p", b"{}", {}) as r:
            assert await r.read() == b"ok"
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await t.send("POST", wire.url + "/p", b"{}", {})
        assert [r.split(b" ")[0] for r in wire.requests] == [b"POST", b"POST"]
        async with await t.send("GET", wire.url + "/m", None, {}) as r:     # new connection (3rd request)
            assert await r.read() == b"ok"
        async with await t.send("GET", wire.url + "/m", None, {}) as r:     # 4th: dropped, retried as 5th
            assert await r.read() == b"ok"
        t.close()
    assert [r.split(b" ")[0] for r in wire.requests] == [b"POST", b"POST", b"GET", b"GET", b"GET"]
    assert wire.accepts == 3


async def test_connections_are_reused_under_concurrency() -> None:
    async def reply(request: bytes, w: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.01)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True

    async with Wire(reply) as wire:
        t = H1Transport(5.0, 5.0)

        async def call() -> bytes:
            async with await t.send("POST", wire.url + "/p", b"{}", {}) as r:
                return await r.read()

        for _ in range(5):
            assert await asyncio.gather(*[call() for _ in range(8)]) == [b"ok"] * 8
        t.close()
    assert len(wire.requests) == 40 and wire.accepts <= 8


async def test_no_upstream_is_a_connector_error_and_silence_a_timeout() -> None:
    async def reply(request: bytes, w: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(10)
        return False

    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    t = H1Transport(5.0, 0.2)
    with pytest.raises(aiohttp.ClientConnectorError):
        await t.send("POST", f"http://127.0.0.1:{port}/p", b"{}", {})
    async with Wire(reply) as wire:
        with pytest.raises(asyncio.TimeoutError):
            await t.send("POST", wire.url + "/p", b"{}", {})
    t.close()


async def test_silence_times_out_on_a_reused_connection_too() -> None:
    """The read timer outlives a response, for the next request on the connection to share: that
    request still gets its whole timeout from when it was sent, and then fails, whether the timer
    was still running from the last response or had fired and stopped while the connection sat idle."""
    async def reply(request: bytes, w: asyncio.StreamWriter) -> bool:
        if b" /silent " in request:
            await asyncio.sleep(10)
            return False
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True

    timeout_s = 0.3
    loop = asyncio.get_running_loop()
    async with Wire(reply) as wire:
        t = H1Transport(5.0, timeout_s)
        for idle_s in (0.2, 2 * timeout_s):          # the first response's timer still due, then fired
            async with await t.send("POST", wire.url + "/ok", b"{}", {}) as r:
                assert await r.read() == b"ok"
            await asyncio.sleep(idle_s)
            sent = loop.time()
            with pytest.raises(asyncio.TimeoutError):
                await t.send("POST", wire.url + "/silent", b"{}", {})
            assert loop.time() - sent >= timeout_s * 0.99
        t.close()
    assert wire.accepts == 2            # each silent request was sent on the connection reused


async def test_a_reader_that_lags_pauses_the_socket_and_loses_nothing() -> None:
    body = bytes(range(256)) * 8192          # 2 MiB: past the high-water mark many times over

    async def reply(request: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await w.drain()
        return True

    async with Wire(reply) as wire:
        t = H1Transport(5.0, 5.0)
        async with await t.send("POST", wire.url + "/big", b"{}", {}) as r:
            got = []
            async for chunk in r.content.iter_any():
                got.append(chunk)
                await asyncio.sleep(0.001)
        assert b"".join(got) == body
        async with await t.send("POST", wire.url + "/big", b"{}", {}) as r:
            assert await r.read() == body
        t.close()
    assert wire.accepts == 1


def test_on_uvloop_too() -> None:
    """``llmgw serve`` runs on uvloop, whose transports are not asyncio's classes."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        async def reply(request: bytes, w: asyncio.StreamWriter) -> bool:
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n0\r\n\r\n")
            return True

        async with Wire(reply) as wire:
            t = H1Transport(5.0, 5.0)
            for _ in range(3):
                async with await t.send("POST", wire.url + "/p", b"{}", {}) as r:
                    assert await r.read() == b"abc"
            t.close()
        assert wire.accepts == 1

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


REQUEST = {"model": "claude-sonnet-4-6", "max_tokens": 64, "stream": True,
           "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("client", ["aiohttp", "h1"])
async def test_a_stream_breaking_off_on_the_wire_is_metered_alike_by_both_clients(
        client: str, fake_provider: FakeProvider, tmp_path: Path) -> None:
    """A provider's chunked SSE cut after any byte, then its socket closed: the client gets the bytes
    before the cut, the call is one ``upstream_error`` event, and the input seen is billed, whichever
    client carried the call."""
    fake_provider.script(FakeReply(text="one two three four five six", usage=Usage(input=1200, output=6)))
    async with aiohttp.ClientSession() as http:
        async with http.post(fake_provider.anthropic_base_url + "/v1/messages", json=REQUEST,
                             headers={"x-api-key": fake_provider.anthropic_key,
                                      "anthropic-version": "2023-06-01"}) as r:
            body = await r.read()
    start_end = body.index(b"\n\n", body.index(b"message_start")) + 2
    cuts = sorted({0, 1, start_end - 1, start_end, len(body) - 1, *random.Random(5).sample(range(1, len(body)), 4)})
    state = {"cut": 0}

    async def reply(request: bytes, w: asyncio.StreamWriter) -> bool:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        w.write(head + _chunked(body[:state["cut"]], [37], True)[:-5])     # no last chunk: it breaks off
        await w.drain()
        return False

    async with Wire(reply) as wire, \
            GatewayHarness(fake_provider, tmp_path, upstream_client=client, anthropic_base_url=wire.url) as h, \
            aiohttp.ClientSession() as http:
        key, _ = h.key()
        for n, cut in enumerate(cuts, 1):
            state["cut"] = cut
            async with http.post(f"{h.url}/v1/messages", json=REQUEST,
                                 headers={"x-api-key": key, "anthropic-version": "2023-06-01"}) as resp:
                got = await resp.read()
            assert resp.status == 200 and got == body[:cut], f"cut at {cut}"
            events = await h.events()
            assert len(events) == n, f"cut at {cut}: one event per call"
            ev = events[-1]
            assert ev.outcome == E.UPSTREAM_ERROR and ev.provider == "anthropic"
            if cut >= start_end:
                assert ev.tokens.input == 1200, f"cut at {cut}: the input seen in message_start is billed"
    assert len(wire.requests) == len(cuts)


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(the server's context, a client context trusting only its self-signed certificate for 127.0.0.1)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "cert.pem").write_bytes(pem)
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client = ssl.create_default_context(cadata=pem.decode())
    return server, client


async def test_https_with_a_verified_certificate_and_reuse(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls
    accepts = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepts
        accepts += 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(2)
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/p"
    t = H1Transport(5.0, 5.0, client_ctx)
    for _ in range(3):
        async with await t.send("POST", url, b"{}", {}) as r:
            assert await r.read() == b"ok"
    t.close()
    untrusting = H1Transport(5.0, 5.0)             # the system's trust store: a self-signed certificate fails
    with pytest.raises(aiohttp.ClientConnectorError):
        await untrusting.send("POST", url, b"{}", {})
    server.close()
    assert accepts == 1                            # three calls, one connection (the refused handshake never got one)


def test_an_unknown_upstream_client_fails_the_start() -> None:
    """A wrong LLMGW_UPSTREAM_CLIENT is refused when the settings are read (``serve`` prints it and
    exits), not on each call's first trip upstream, where it would have been a 500."""
    from llmgw.core.settings import Settings
    with pytest.raises(ValueError, match="LLMGW_UPSTREAM_CLIENT must be one of h1, aiohttp, not 'h2'"):
        Settings.load({"LLMGW_UPSTREAM_CLIENT": "h2"})
    assert Settings.load({"LLMGW_UPSTREAM_CLIENT": "aiohttp"}).upstream_client == "aiohttp"
