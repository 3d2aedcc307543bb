"""Malformed requests a hostile or broken client sends: each is a valid call but for one defect, so any of
them reaching the provider, or getting a 5xx, is a gateway bug. Shared by tests/test_hostile_input.py
and bench/hostile_input.py (the 10,000-request run in docs/operations.md).

``cases()`` lists every defect once, as ``Case(name, path, headers, body, shape)``; ``shape`` is the error
shape the answer must have: ``anthropic``, ``openai``, ``admin`` (``{"error": {...}}`` too) or ``parser``
(refused by aiohttp's HTTP parser before any handler, in plain text).
"""
from __future__ import annotations

import gzip
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

ANT = {"anthropic-version": "2023-06-01", "content-type": "application/json"}
OAI = {"content-type": "application/json"}
MSGS = [{"role": "user", "content": "hi"}]
VALID: dict[str, tuple[dict[str, Any], dict[str, str], str]] = {
    "/v1/messages": ({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": MSGS}, ANT, "anthropic"),
    "/v1/messages/count_tokens": ({"model": "claude-sonnet-4-5", "messages": MSGS}, ANT, "anthropic"),
    "/v1/chat/completions": ({"model": "gpt-4o-mini", "messages": MSGS}, OAI, "openai"),
    "/v1/responses": ({"model": "gpt-5-mini", "input": "hi"}, OAI, "openai"),
    "/v1/embeddings": ({"model": "text-embedding-3-small", "input": "hi"}, OAI, "openai"),
}
INCREASE = "/v1/llmgw/increase-requests"

BAD_MODELS = ["../../admin", "a/../b", "./x", "gpt-4o/", "/gpt-4o", "a//b", "x\x00y", "gpt-4o\n", "gpt\r\nx-injected: 1",
              " gpt-4o", "gpt 4o", "gpt-4o?x=1", "gpt-4o#frag", "%2e%2e%2fadmin", "..", "x" * 300, "\u202egpt", "gpt\t4o",
              "C:\\models\\x", "😀"]
# (path, field, bad value): the basic schema each API has for the fields the gateway reads or the provider requires
BAD_FIELDS: list[tuple[str, str, Any]] = [
    *[("/v1/messages", "messages", v) for v in (42, None, "hi", [], [1], ["hi"], [None], {"role": "user"}, True)],
    *[("/v1/messages", "max_tokens", v) for v in (None, "10", -1, 0, 1.5, True, [10], {"n": 1}, 1e300)],
    *[("/v1/messages/count_tokens", "messages", v) for v in (42, None, "hi", [], [1], {"x": 1})],
    *[("/v1/chat/completions", "messages", v) for v in (42, None, "hi", [], [1], [[]], {"role": "user"})],
    *[("/v1/chat/completions", f, v) for f in ("max_tokens", "max_completion_tokens", "n")
      for v in ("5", -1, 2.5, True, [1])],
    *[("/v1/responses", "input", v) for v in (42, True, {"role": "user"}, [1], ["hi", 2], [None], 1.5)],
    *[("/v1/responses", "max_output_tokens", v) for v in ("5", -1, 2.5, True)],
    *[("/v1/embeddings", "input", v) for v in (None, 42, "", [], [None], [[]], [1.5], [["a"]], {"text": "x"}, True)],
    *[(p, "stream", v) for p in ("/v1/messages", "/v1/chat/completions", "/v1/responses") for v in ("true", 1, [True])],
    *[(p, "metadata", v) for p in VALID for v in ([], "x", 7) if p != "/v1/messages/count_tokens"],
]
BAD_JSON = [b"", b"{", b"[]", b"null", b'"x"', b"42", b'{"model": NaN}', b"\xff\xfe{}", b"[" * 5000 + b"]" * 5000,
            b'{"model": 1' + b"0" * 400 + b"}", b"{'model': 'gpt-4o'}", b'{"model":"gpt-4o"}garbage']
BAD_AMOUNTS = ["NaN", "nan", "Infinity", "-Infinity", "sNaN", "1e30", "1e15", "-5", "abc", "0x10", "", "1e999999"]


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    path: str
    headers: dict[str, str]
    body: bytes
    shape: str


def _with(path: str, **changes: Any) -> bytes:
    base = dict(VALID[path][0])
    for k, v in changes.items():
        if v is _ABSENT:
            base.pop(k, None)
        else:
            base[k] = v
    return orjson.dumps(base)


_ABSENT = object()


def cases() -> list[Case]:
    out: list[Case] = []
    for path, (_, headers, shape) in VALID.items():
        valid = _with(path)
        for enc, data in (("gzip", valid), ("deflate", valid), ("gzip", gzip.compress(valid)[:20]),
                          ("deflate", zlib.compress(valid)[5:]), ("gzip", b"\x1f\x8b" + b"\x00" * 30)):
            out.append(Case(f"{path} content-encoding {enc} that is not", path,
                            {**headers, "content-encoding": enc}, data, shape))
        for m in BAD_MODELS:
            out.append(Case(f"{path} model {m[:20]!r}", path, headers, _with(path, model=m), shape))
        out.append(Case(f"{path} model missing", path, headers, _with(path, model=_ABSENT), shape))
        for raw in BAD_JSON:
            out.append(Case(f"{path} body {raw[:12]!r}", path, headers, raw, shape))
    for path, field, value in BAD_FIELDS:
        _, headers, shape = VALID[path]
        body = _with(path, **{field: _ABSENT if value is None and field != "metadata" else value})
        out.append(Case(f"{path} {field}={value!r}"[:80], path, headers, body, shape))
    for amount in BAD_AMOUNTS:
        body = orjson.dumps({"window": "day", "amount_usd": amount, "reason": "hostile"})
        out.append(Case(f"increase amount_usd {amount!r}", INCREASE, OAI, body, "admin"))
    for micro in (b"-1", b"100000000000000000000", b"1.5", b'"5"', b"1e30"):
        body = b'{"window": "day", "reason": "hostile", "amount_micro_usd": ' + micro + b"}"
        out.append(Case(f"increase amount_micro_usd {micro!r}", INCREASE, OAI, body, "admin"))
    out.append(Case("increase gzip that is not", INCREASE, {**OAI, "content-encoding": "gzip"},
                    b'{"window":"day","amount_usd":"1"}', "admin"))
    return out


def stream(n: int, seed: int = 17) -> Iterator[Case]:
    """``n`` cases: every defect in turn, then random picks (the 10,000-request run)."""
    all_cases = cases()
    rng = random.Random(seed)
    for i in range(n):
        yield all_cases[i] if i < len(all_cases) else rng.choice(all_cases)


def assert_error_shape(case: Case, status: int, body: bytes) -> None:
    assert 400 <= status < 500, (case.name, status, body[:300])
    if case.shape == "parser":
        return
    obj = orjson.loads(body)
    if case.shape == "anthropic":
        assert obj["type"] == "error" and isinstance(obj["error"]["type"], str), (case.name, obj)
        assert isinstance(obj["error"]["message"], str) and obj["error"]["message"], (case.name, obj)
    else:
        assert isinstance(obj["error"]["message"], str) and obj["error"]["message"], (case.name, obj)
        assert isinstance(obj["error"]["type"], str) and "code" in obj["error"], (case.name, obj)
