"""The pipeline's types: what an adapter tells the rest of the proxy.

No code outside ``proxy/adapters/`` knows a provider's wire format; it sees a
``Call`` (what was asked), a ``Meter`` (what was consumed) and ``error_body``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from llmgw.core.events import Tokens

from .errors import GatewayError


@dataclass(frozen=True, slots=True)
class Call:
    """The facts of one request that policy and metering need; the body stays bytes."""

    model: str
    stream: bool
    body: bytes                        # what goes upstream (the client's bytes unless usage had to be asked for)
    max_output_tokens: int | None = None
    service_tier: str | None = None
    image_count: int = 0
    web_search: bool = False
    tags: tuple[str, ...] = ()         # from the body's metadata
    metered: bool = True               # False for calls that cost nothing (count_tokens, models)
    choices: int = 1                   # OpenAI `n`: the output limit applies to each choice
    hide_usage_chunk: bool = False     # the gateway asked for stream usage the client did not
    # The request asked for cache writes kept past the short retention (OpenAI's 12-hour prompt
    # cache): its written tokens bill at the long-retention rate, since usage reports one count.
    cache_writes_long: bool = False


@dataclass(slots=True)
class Usage:
    tokens: Tokens = field(default_factory=Tokens)
    model_served: str = ""
    complete: bool = False             # the provider's own final usage was seen
    error_type: str = ""               # an in-stream error event's type
    web_search_calls: int = 0
    # The tier the provider says it served (OpenAI's ``service_tier``, Anthropic's ``usage.speed``):
    # billing follows it, not the request, since a provider may fall back or apply a project default.
    service_tier: str | None = None
    # What was wrong with the provider's usage (negative, non-integer, missing or impossible counts),
    # as short codes (``negative_output``, ``output_above_max_tokens``): see proxy/usage.py.
    anomalies: tuple[str, ...] = ()


class Meter(Protocol):
    def feed(self, chunk: bytes) -> bytes:
        """Observe a stream chunk; return the bytes to forward (usually ``chunk`` itself)."""

    def finish_json(self, body: bytes) -> None:
        """Observe a whole non-streaming response body."""

    def result(self) -> Usage: ...

    def tail(self) -> bytes:
        """Bytes held back at the end of the stream (an event with no terminator)."""

    def saw_output(self) -> bool:
        """Whether any output (text or tool) has been streamed: the time-to-first-token mark."""


class Adapter(Protocol):
    api: str                  # "messages", "chat", "responses", "embeddings", ...
    family: str               # which upstream kind serves it: "anthropic" or "openai"
    upstream_path: str        # appended to the upstream's base URL

    def parse(self, body: bytes) -> Call: ...
    def meter(self, call: Call) -> Meter: ...
    def error_body(self, err: GatewayError) -> bytes: ...
