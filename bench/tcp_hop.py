"""The floor under any proxy here: one more process that copies TCP bytes both ways, nothing else.

    python bench/tcp_hop.py --port 9001 --to 127.0.0.1:9000

Each hop through a process costs wake-ups and copies that no proxy code can avoid, and on a
virtual machine with idle cores those wake-ups dominate. ``proxy_overhead.py`` runs this in front
of the fake provider so the gateway's own cost reads as its latency minus this hop's.
"""
from __future__ import annotations

import argparse
import asyncio


class Pipe(asyncio.Protocol):
    """One direction's reader; writes what it reads to its peer's transport, honouring back-pressure."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: asyncio.Transport | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self.pending.append(data)
        else:
            self.peer.write(data)

    def eof_received(self) -> bool:
        if self.peer is not None and self.peer.can_write_eof():
            self.peer.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.close()

    def join(self, peer: asyncio.Transport) -> None:
        self.peer = peer
        for data in self.pending:
            peer.write(data)
        self.pending.clear()


async def serve(port: int, host: str, to_host: str, to_port: int) -> None:
    loop = asyncio.get_running_loop()

    class Inbound(Pipe):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            loop.create_task(self.dial())

        async def dial(self) -> None:
            try:
                out_transport, out = await loop.create_connection(Pipe, to_host, to_port)
            except OSError:
                self.transport.close()  # type: ignore[union-attr]
                return
            out.join(self.transport)  # type: ignore[arg-type]
            self.join(out_transport)

    server = await loop.create_server(Inbound, host, port)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--to", required=True, help="host:port to relay to")
    args = ap.parse_args()
    to_host, to_port = args.to.rsplit(":", 1)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.port, args.host, to_host, int(to_port)))


if __name__ == "__main__":
    main()
