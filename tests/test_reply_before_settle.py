"""A whole (non-streamed) reply leaves before the call is settled, as a stream's last bytes do: the
client does not wait for the settle, the usage event and the metrics. And it still carries its
``x-llmgw-request-id`` (added by the error edge only to a reply not sent yet), the event's own id."""
from __future__ import annotations

import asyncio
import select
import socket

import orjson
import pytest

from llmgw.core import events as E
from tests.fake_provider import Reply, Usage


def _request(url: str, key: str, stream: bool) -> bytes:
    host = url.split("//", 1)[1].split("/", 1)[0]
    body = orjson.dumps({"model": "gpt-4o-mini", "stream": stream,
                         "messages": [{"role": "user", "content": "hi"}]})
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode() + body


@pytest.mark.parametrize("stream", [False, True])
async def test_the_client_holds_the_whole_reply_when_the_event_is_emitted(gw, fake_provider, stream):
    fake_provider.script(Reply(usage=Usage(input=12, output=5)))
    key, _ = gw.key("acme", "backend", "alice")
    host, port = gw.url.split("//", 1)[1].split("/", 1)[0].split(":")
    client = socket.create_connection((host, int(port)))
    client.setblocking(False)
    seen: list[bool] = []

    def at_emit(event: E.UsageEvent) -> None:
        # the reply's bytes are in the client's socket already (the gateway wrote them in one send)
        seen.append(bool(select.select([client], [], [], 0)[0]))

    gw.gw.observers = (*gw.gw.observers, at_emit)
    try:
        await asyncio.get_running_loop().sock_sendall(client, _request(gw.url, key, stream))
        raw = b""
        while chunk := await asyncio.get_running_loop().sock_recv(client, 65536):
            raw += chunk
    finally:
        client.close()
    head, _, _ = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert seen == [True]
    [event] = [e for e in await gw.events() if e.outcome == E.OK]
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    assert headers[b"x-llmgw-request-id"].decode() == event.request_id != ""
    assert event.tokens.input == 12 and event.tokens.output == 5
