"""CPU of metering one call, per wire: the meter fed a provider stream as the relay feeds it.

    python -m bench.meters [--events 44] [--style compact] [--chunk 1400] [--rounds 2000]

Builds each wire's stream with the fake provider's own builders (``--events`` text deltas,
``--style`` as in tests/fake_provider.py), cuts it into ``--chunk``-byte reads, and times
``feed`` over the whole stream plus ``result``: process CPU time, median of five runs of ``--rounds`` calls.
"""
from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any, Callable

from tests.fake_provider import Reply, Usage, _Anthropic, _Chat, _dumps, _numbered, _Responses, _Turn, _ws_payload, sse_event


def wire_stream(wire: str, events: int, style: str) -> tuple[bytes, list[str]]:
    body: dict[str, Any] = {"model": "m", "stream": True, "stream_options": {"include_usage": True}}
    t = _Turn.build(Reply(chunks=events, usage=Usage(input=900, output=events)), b"{}", body)
    builder = {"messages": _Anthropic, "chat": _Chat, "responses": _Responses, "ws": _Responses}[wire](t)
    frames, _ = builder.frames()
    if wire in ("responses", "ws"):
        frames = _numbered(frames)
    rng = random.Random(0)
    if wire == "ws":
        return b"", [_dumps(_ws_payload(p), style, rng).decode()
                     for _, p in frames]
    named = wire != "chat"
    return b"".join(sse_event(n if named else None, _dumps(p, style, rng), style) for n, p in frames), []


def per_call_us(run: Callable[[], None], rounds: int) -> float:
    samples = []
    for _ in range(5):
        t0 = time.process_time()
        for _ in range(rounds):
            run()
        samples.append((time.process_time() - t0) / rounds * 1e6)
    return statistics.median(samples)


def main() -> None:
    from llmgw.proxy.adapters.anthropic_messages import AnthropicMeter
    from llmgw.proxy.adapters.openai_chat import ChatMeter
    from llmgw.proxy.adapters.openai_responses import ResponsesMeter
    from llmgw.proxy.types import Call

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=44)
    ap.add_argument("--style", default="compact")
    ap.add_argument("--chunk", type=int, default=1400)
    ap.add_argument("--rounds", type=int, default=2000)
    a = ap.parse_args()
    call = Call(model="m", stream=True, body=b"{}", max_output_tokens=4096)
    makers = {"messages": lambda: AnthropicMeter(call), "chat": lambda: ChatMeter(True, call),
              "responses": lambda: ResponsesMeter(call), "ws": lambda: ResponsesMeter(call)}
    for wire, make in makers.items():
        data, frames = wire_stream(wire, a.events, a.style)
        chunks = [data[i:i + a.chunk] for i in range(0, len(data), a.chunk)]

        def run() -> None:
            m = make()
            if frames:
                for f in frames:
                    m.observe_frame(f)
            else:
                for c in chunks:
                    m.feed(c)
            m.result()
        print(f"{wire:10s} {a.style:28s} {a.events:4d} deltas  {per_call_us(run, a.rounds):8.1f} us/call")


if __name__ == "__main__":
    main()
