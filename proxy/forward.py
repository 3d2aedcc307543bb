"""Send a call upstream and relay the answer byte for byte.

The only network seam of the proxy: ``open_upstream`` turns a routed call into
an upstream response (or a ``GatewayError``); ``relay_stream`` forwards bytes
as they arrive while the adapter's meter reads usage from them.
"""
from __future__ import annotations

import asyncio
import time
from typing import Mapping

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from .errors import UpstreamError, UpstreamTimeout, UpstreamUnreachable
from .routing import Target
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
_DROP_DOWN = _HOP | {"set-cookie"}


def upstream_headers(incoming: Mapping[str, str], target: Target) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in incoming.items():
        lk = k.lower()
        if lk in _DROP_UP or lk.startswith("x-llmgw-"):
            continue
        out.add(k, v)
    out["accept-encoding"] = "identity"     # usage must be readable without inflating
    out.update(target.upstream.auth_headers())
    return out


def downstream_headers(upstream: aiohttp.ClientResponse, extra: Mapping[str, str]) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in upstream.headers.items():
        if k.lower() not in _DROP_DOWN:
            out.add(k, v)
    out.update(extra)
    return out


async def open_upstream(session: aiohttp.ClientSession, target: Target, path: str, call: Call,
                        incoming: Mapping[str, str], method: str = "POST") -> aiohttp.ClientResponse:
    url = target.upstream.url(path)
    body, headers = (call.body if method == "POST" else None), upstream_headers(incoming, target)
    await target.upstream.sign(method, url, headers, body)       # Bedrock: SigV4 over the final request
    try:
        return await session.request(method, url, data=body, headers=headers)
    except asyncio.TimeoutError:
        raise UpstreamTimeout(f"upstream {target.upstream.name} did not answer in time") from None
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamUnreachable(f"could not connect to upstream {target.upstream.name}: {exc.os_error}") from None
    except aiohttp.ClientError as exc:
        # closed before any response header (a pooled connection to an upstream going away): nothing served
        cls = UpstreamUnreachable if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)) \
            else UpstreamError
        raise cls(f"upstream {target.upstream.name} failed: {type(exc).__name__}") from None


def is_stream(resp: aiohttp.ClientResponse) -> bool:
    return resp.content_type in ("text/event-stream", "application/vnd.amazon.eventstream")


class Relay:
    """Streams upstream bytes to the client; records when output first appeared."""

    def __init__(self, meter: Meter, keep_bytes: int = 0) -> None:
        self.meter = meter
        # a copy of the first ``keep_bytes`` forwarded, for body capture (proxy/capture.py)
        self.kept: bytearray | None = bytearray() if keep_bytes else None
        self.keep_bytes = keep_bytes
        self.first_output_s: float | None = None
        self.client_gone = False
        self.upstream_broke = False
        self.bytes_out = 0

    async def stream(self, request: web.Request, upstream: aiohttp.ClientResponse,
                     extra_headers: Mapping[str, str]) -> web.StreamResponse:
        resp = web.StreamResponse(status=upstream.status, headers=downstream_headers(upstream, extra_headers))
        await resp.prepare(request)
        meter = self.meter
        try:
            async for chunk in upstream.content.iter_any():
                out = meter.feed(chunk)
                if self.first_output_s is None and meter.saw_output():
                    self.first_output_s = time.monotonic()
                if out:
                    self.bytes_out += len(out)
                    if self.kept is not None and len(self.kept) <= self.keep_bytes:
                        self.kept += out
                    await resp.write(out)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            self.client_gone = True
            return resp
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, asyncio.TimeoutError):
            self.upstream_broke = True
        try:
            held = meter.tail()
            if held:
                await resp.write(held)
            await resp.write_eof()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            self.client_gone = True
        return resp
