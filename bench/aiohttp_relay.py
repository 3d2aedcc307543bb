"""The floor under llmgw's design: an aiohttp server relaying to a pooled aiohttp client, nothing else.

    python bench/aiohttp_relay.py --port 9002 --to http://127.0.0.1:9000

The gateway is an aiohttp server that forwards each call with an aiohttp client and streams the
reply back (the design is fixed on aiohttp). This relay does only that, on the same event loop
(uvloop), with the same session options as the gateway's upstream session: no auth, no budget,
no metering, no event. Its CPU per call is what aiohttp's two halves cost on this machine, so
``proxy_overhead.py`` can show how much of the gateway's CPU is its own work and how much any
aiohttp relay pays.
"""
from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web

# What a relay must not copy from one hop to the next (RFC 9110 7.6.1), plus what aiohttp sets itself.
HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
       "host", "content-length"}

SESSION = web.AppKey("session", aiohttp.ClientSession)


async def relay(request: web.Request) -> web.StreamResponse:
    upstream = request.app[SESSION]
    body = await request.read()
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
    async with upstream.request(request.method, request.app["to"] + request.rel_url.path_qs, data=body,
                                headers=headers) as reply:
        out = web.StreamResponse(status=reply.status,
                                 headers={k: v for k, v in reply.headers.items() if k.lower() not in HOP})
        await out.prepare(request)
        async for chunk in reply.content.iter_any():
            await out.write(chunk)
        await out.write_eof()
        return out


def make_app(to: str) -> web.Application:
    app = web.Application()
    app["to"] = to.rstrip("/")

    async def session(app: web.Application):  # type: ignore[no-untyped-def]
        app[SESSION] = aiohttp.ClientSession(auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
                                             connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300))
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", relay)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--to", required=True, help="base URL to relay to")
    args = ap.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    web.run_app(make_app(args.to), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
