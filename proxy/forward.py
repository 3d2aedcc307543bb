"""Send a call upstream and relay the answer byte for byte.

The only network seam of the proxy: ``open_upstream`` turns a routed call into
an upstream response (or a ``GatewayError``) through a ``Transport``
(``transport.py``: the network, or a test's provider); ``Relay.stream`` forwards bytes
as they arrive while the adapter's meter reads usage from them.
"""
from __future__ import annotations

import asyncio
import re
import time
from typing import Mapping

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from .errors import UpstreamError, UpstreamTimeout, UpstreamUnreachable
from .routing import Target
from llmgw.core.memo import Memo

from .transport import Transport, UpstreamResponse
from .types import Call, Meter

_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
        "transfer-encoding", "upgrade", "content-length", "host"}
# Credentials and identity of the client's side never travel upstream: the
# gateway's own credential replaces them.
_DROP_UP = _HOP | {"authorization", "x-api-key", "api-key", "cookie", "accept-encoding",
                   "openai-organization", "openai-project", "x-forwarded-for", "forwarded",
                   # the body goes up as the bytes aiohttp already inflated; proxy topology stays here
                   "content-encoding", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-port",
                   "x-real-ip", "via"}
# Downstream, only what a client of the provider's own API uses: the body's type and encoding, request
# ids to quote to support, the provider's rate-limit and retry advice (the SDKs read them), and the
# provider's informative openai-*/anthropic-*/x-amzn-* headers (botocore reads a Bedrock error's code from
# x-amzn-errortype, its request id from x-amzn-requestid). Everything else is dropped: hop-by-hop headers,
# cookies, the upstream's infrastructure (server, via, CDN ids) and anything naming a credential or the
# gateway's own provider account (openai-organization, openai-project, anthropic-organization-id).
_PASS_DOWN = frozenset({"content-type", "content-encoding", "cache-control", "retry-after", "retry-after-ms",
                        "x-should-retry", "request-id", "x-request-id"})
_PASS_DOWN_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-", "openai-", "anthropic-", "x-amzn-")
_CREDENTIAL_WORDS = frozenset({"key", "token", "secret", "auth", "authorization", "cookie", "session",
                               "password", "credential", "credentials", "signature", "organization", "org",
                               "project", "user", "jwt", "bearer"})


FORWARDED_QUERY = ("beta",)
_PLAIN = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def goes_up(name: str) -> bool:
    """Whether a client's request header travels upstream (everything but ``_DROP_UP`` and ``x-llmgw-*``)."""
    lk = name.lower()
    return lk not in _DROP_UP and not lk.startswith("x-llmgw-")


def passes_down(name: str) -> bool:
    """Whether a provider's response header reaches the client (the allow-list above)."""
    lk = name.lower()
    if lk in _PASS_DOWN:
        return True
    return lk.startswith(_PASS_DOWN_PREFIXES) and _CREDENTIAL_WORDS.isdisjoint(lk.split("-"))


# A header name's verdict, worked out once per spelling: the same few names come on every call.
_GOES_UP: Memo[str, bool] = Memo(goes_up, 4096)
_PASSES_DOWN: Memo[str, bool] = Memo(passes_down, 4096)


def upstream_headers(incoming: Mapping[str, str], target: Target) -> CIMultiDict[str]:
    up = _GOES_UP
    out: CIMultiDict[str] = CIMultiDict([(k, v) for k, v in incoming.items() if up[k]])
    out["accept-encoding"] = "identity"     # usage must be readable without inflating
    out.update(target.upstream.auth_headers())
    return out


def downstream_headers(upstream: UpstreamResponse, extra: Mapping[str, str]) -> CIMultiDict[str]:
    down = _PASSES_DOWN
    out: CIMultiDict[str] = CIMultiDict([(k, v) for k, v in upstream.headers.items() if down[k]])
    if extra:
        out.update(extra)
    return out


REDACTED = b"<redacted>"


def scrub_error_body(status: int, body: bytes, target: Target) -> bytes:
    """An error body never carries the gateway's provider credential to the client.

    Providers (and the proxies in front of them) sometimes echo the key they
    were sent in an error message ("invalid api key sk-..."). Successful
    bodies are relayed untouched; only error bodies (status >= 400) are read.
    """
    key = target.upstream.api_key
    if status < 400 or len(key) < 8:
        return body
    secret = key.encode()
    return body.replace(secret, REDACTED) if secret in body else body


def client_query(query: Mapping[str, str], allowed: tuple[str, ...] = FORWARDED_QUERY) -> str:
    """The query parameters a client may pass upstream (Claude Code's ``?beta=true``; a batch list's
    paging), plain values only: nothing a client sends may change which URL is called."""
    if not query:                       # the usual call: no query at all
        return ""
    return "&".join(f"{k}={query[k]}" for k in allowed if _PLAIN.fullmatch(query.get(k, "")))


async def open_upstream(transport: Transport, target: Target, path: str, call: Call,
                        incoming: Mapping[str, str], method: str = "POST",
                        query: Mapping[str, str] | None = None) -> UpstreamResponse:
    url = target.upstream.url(path, client_query(query or {}))
    body, headers = (call.body if method == "POST" else None), upstream_headers(incoming, target)
    await target.upstream.sign(method, url, headers, body)       # Bedrock: SigV4 over the final request
    try:
        return await transport.send(method, url, body, headers)
    except asyncio.TimeoutError:
        raise UpstreamTimeout(f"upstream {target.upstream.name} did not answer in time") from None
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamUnreachable(f"could not connect to upstream {target.upstream.name}: {exc.os_error}") from None
    except aiohttp.ClientError as exc:
        # closed before any response header (a pooled connection to an upstream going away): nothing served
        cls = UpstreamUnreachable if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)) \
            else UpstreamError
        raise cls(f"upstream {target.upstream.name} failed: {type(exc).__name__}") from None


class StreamScrub:
    """``secret`` replaced in a byte stream whatever its chunking: the last ``len(secret) - 1`` bytes
    are held back until the next chunk (or ``tail``) shows whether they start it."""

    __slots__ = ("secret", "_held")

    def __init__(self, secret: bytes) -> None:
        self.secret, self._held = secret, b""

    def feed(self, chunk: bytes) -> bytes:
        data = (self._held + chunk).replace(self.secret, REDACTED)
        keep = len(self.secret) - 1
        self._held = data[-keep:] if keep else b""
        return data[:-keep] if keep else data

    def tail(self) -> bytes:
        held, self._held = self._held, b""
        return held


def _sent_credential(upstream: UpstreamResponse) -> bytes:
    """The gateway's own credential as this call sent it upstream (x-api-key, api-key or bearer)."""
    sent = upstream.request_info.headers
    value = sent.get("x-api-key") or sent.get("api-key") or sent.get("authorization", "").removeprefix("Bearer ")
    return value.strip().encode() if len(value.strip()) >= 8 else b""


def is_stream(resp: UpstreamResponse) -> bool:
    return resp.content_type in ("text/event-stream", "application/vnd.amazon.eventstream")


class _HeadersWithFirstChunk(web.StreamResponse):
    """A stream whose status line and headers leave in the same write as its first bytes.

    aiohttp's ``StreamResponse`` sends them on ``prepare`` (one more send to the client per call);
    its ``Response`` buffers them until the body, through this class attribute. The relay writes
    at once when the first upstream chunk arrives, even an empty one, so a client sees the
    headers no later than the provider's first byte, and the bytes it gets are the same."""

    _send_headers_immediately = False


class Relay:
    """Streams upstream bytes to the client; records when output first appeared."""

    def __init__(self, meter: Meter, keep_bytes: int = 0) -> None:
        self.meter = meter
        # a copy of the first ``keep_bytes`` forwarded, for body capture (core/capture.py)
        self.kept: bytearray | None = bytearray() if keep_bytes else None
        self.keep_bytes = keep_bytes
        self.first_output_s: float | None = None
        self.client_gone = False
        self.upstream_broke = False
        self.bytes_out = 0

    async def reply(self, request: web.Request, resp: web.Response) -> web.Response:
        """Send a whole reply now, before the call is settled, as a stream's last bytes are: the
        client does not wait for the settle, the event and the metrics (at one client, ~0.1 ms of a
        call's added latency). aiohttp sends nothing more for a response already sent."""
        try:
            await resp.prepare(request)
            await resp.write_eof()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            self.client_gone = True
        return resp

    async def stream(self, request: web.Request, upstream: UpstreamResponse,
                     extra_headers: Mapping[str, str]) -> web.StreamResponse:
        resp = _HeadersWithFirstChunk(status=upstream.status, headers=downstream_headers(upstream, extra_headers))
        await resp.prepare(request)
        meter = self.meter
        # an error answered as a stream is scrubbed too (scrub_error_body does the whole-body ones)
        secret = _sent_credential(upstream) if upstream.status >= 400 else b""
        scrub = StreamScrub(secret) if secret else None
        headers_out, last = False, b""
        # A body that can say it has ended (aiohttp's reader: the provider's last bytes and the end of
        # its chunked body usually arrive together) lets the last bytes go out with the end of the
        # stream, in one send; a whole short reply, headers included, is then one send.
        ended = getattr(upstream.content, "at_eof", None)
        try:
            async for chunk in upstream.content.iter_any():
                out = meter.feed(chunk)
                if self.first_output_s is None and meter.saw_output():
                    self.first_output_s = time.monotonic()
                if scrub is not None:
                    out = scrub.feed(out)
                if out:
                    self.bytes_out += len(out)
                    if self.kept is not None and len(self.kept) <= self.keep_bytes:
                        self.kept += out
                if ended is not None and ended():
                    last = out
                    break
                if out:
                    await resp.write(out)
                elif not headers_out:
                    await resp.write(b"")           # the headers alone: the provider has begun
                headers_out = True
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            self.client_gone = True
            return resp
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, asyncio.TimeoutError):
            self.upstream_broke = True
        try:
            held = meter.tail()
            if scrub is not None:
                held = scrub.feed(held) + scrub.tail()
            await resp.write_eof(last + held if held else last)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            self.client_gone = True
        return resp
