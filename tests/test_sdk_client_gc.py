"""A leaked SDK client must not take other connections off the event loop when the GC collects it.

Regression check for the three-proxy Kafka test hang: the anthropic/openai async client's
``__del__`` resurrected a GC'd connection pool whose transports had already closed their sockets,
then aborted them by their stale fd numbers, unregistering whatever new connection held those
numbers (CPython gh-130141). tests/conftest.py disarms that finalizer; this checks it stays disarmed.
"""
from __future__ import annotations

import asyncio
import gc

import anthropic
import pytest
from aiohttp import web

N = 10
REQUEST = b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"


@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_a_collected_unclosed_client_leaves_new_connections_alone():
    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(0.05)           # N concurrent calls, so the pool holds N connections
        return web.json_response({"id": "m", "type": "message", "role": "assistant", "model": "x",
                                  "content": [], "stop_reason": "end_turn", "stop_sequence": None,
                                  "usage": {"input_tokens": 1, "output_tokens": 1}})

    app = web.Application()
    app.router.add_post("/v1/messages", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        client = anthropic.AsyncAnthropic(base_url=f"http://127.0.0.1:{port}", api_key="k", max_retries=0)
        await asyncio.gather(*(client.messages.create(model="x", max_tokens=1,
                                                      messages=[{"role": "user", "content": "hi"}])
                               for _ in range(N)))
        del client                          # leaked on purpose: never closed
        gc.collect()                        # the pool's sockets close here and their fd numbers are free

        async def fresh() -> bool:          # new connections take those fd numbers
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(REQUEST)
                line = await asyncio.wait_for(reader.readline(), 5)
                return line.startswith(b"HTTP/1.1 200")
            except TimeoutError:
                return False
            finally:
                writer.close()

        answered = await asyncio.gather(*(fresh() for _ in range(N)))
        assert all(answered), f"only {sum(answered)} of {N} new connections were served"
    finally:
        await runner.cleanup()
