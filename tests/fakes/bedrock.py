"""A fake Amazon Bedrock runtime: InvokeModel(+WithResponseStream) and Converse(+Stream), byte for byte.

    {base}/model/{modelId}/invoke                        Anthropic Messages body -> message JSON
    {base}/model/{modelId}/invoke-with-response-stream   -> event-stream `chunk` events, {"bytes": b64(event)}
    {base}/model/{modelId}/converse                      Converse body -> {"output", "usage", "metrics"}
    {base}/model/{modelId}/converse-stream               -> event-stream messageStart .. metadata

Every request must be SigV4-signed for service ``bedrock`` in ``region`` with ``ACCESS_KEY``/``SECRET_KEY``:
the fake recomputes the signature with botocore over what it received (method, raw path, signed headers,
body) and answers 403 ``InvalidSignatureException`` otherwise, as AWS does.

Replies are scripted (``fake.script(BedrockReply(...))``, FIFO; empty queue: a default built from the
request). Usage is neutral (``input`` excludes cache reads and writes, as Bedrock counts it) and spelled
per wire: Anthropic usage in ``message_start`` / ``message_delta`` plus ``amazon-bedrock-invocationMetrics``
on the last chunk; Converse ``usage.inputTokens`` .. ``cacheWriteInputTokens`` in ``metadata``.

What real Bedrock varies, the fake varies (per reply, from ``seed``): JSON key order and whitespace inside
the base64'd events, the ``p`` padding field, and where the bytes are cut into TCP writes.
"""
from __future__ import annotations

import asyncio
import base64
import random
import secrets
import string
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from llmgw.proxy.eventstream import CONTENT_TYPE, encode

ACCESS_KEY = "AKIAFAKEBEDROCK00001"
SECRET_KEY = "fake/bedrock/secret/key/for/tests/only0000"
REGION = "us-east-1"
DEFAULT_TEXT = "Hello from fake Bedrock."


@dataclass(frozen=True, slots=True)
class BedrockUsage:
    input: int = 0            # neither read from nor written to a cache
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0      # 5-minute writes


@dataclass(frozen=True, slots=True)
class BedrockReply:
    text: str | None = None                  # None: DEFAULT_TEXT
    usage: BedrockUsage | None = None        # None: input = len(body) // 4, output = number of deltas
    status: int = 200                        # >= 400: Bedrock's error JSON with the exception below
    exception: str = ""                      # e.g. ThrottlingException; default by status
    fail_mid_stream: bool = False            # stream: an exception frame after half the deltas, then end
    drop_mid_stream: bool = False            # stream: cut the connection after half the deltas
    metrics: bool = True                     # invoke stream: invocationMetrics on the last chunk
    delta_usage_input: bool = False          # invoke stream: message_delta repeats the input side too
    seed: int | None = None                  # wire variation; None: random


@dataclass(frozen=True, slots=True)
class Recorded:
    method: str
    path: str                                # raw, as received
    model: str
    action: str
    headers: dict[str, str]
    body: bytes
    json: Any
    signed: bool


_EXC_BY_STATUS = {400: "ValidationException", 403: "AccessDeniedException", 404: "ResourceNotFoundException",
                  408: "ModelTimeoutException", 424: "ModelErrorException", 429: "ThrottlingException",
                  500: "InternalServerException", 503: "ServiceUnavailableException"}


def _pad(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(rng.randint(1, 30)))


def _dumps(obj: Any, rng: random.Random) -> bytes:
    """JSON as a server might write it: keys in any order, compact or spaced."""
    def shuffle(o: Any) -> Any:
        if isinstance(o, dict):
            items = list(o.items())
            rng.shuffle(items)
            return {k: shuffle(v) for k, v in items}
        if isinstance(o, list):
            return [shuffle(v) for v in o]
        return o
    out = orjson.dumps(shuffle(obj))
    if rng.random() < 0.5:
        out = out.replace(b'":', b'": ').replace(b',"', b', "')
    return out


def _cuts(data: bytes, rng: random.Random) -> list[bytes]:
    """The bytes cut into writes at random points (inside frames, headers and CRCs alike)."""
    if rng.random() < 0.3:
        return [data]
    points = sorted(rng.sample(range(1, len(data)), k=min(len(data) - 1, rng.randint(1, 12)))) if len(data) > 1 else []
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


class _Turn:
    def __init__(self, reply: BedrockReply, body: bytes, obj: dict[str, Any], model: str) -> None:
        self.reply, self.model = reply, model
        self.rng = random.Random(reply.seed if reply.seed is not None else secrets.randbits(32))
        text = reply.text if reply.text is not None else DEFAULT_TEXT
        words = text.split(" ")
        self.pieces = [w if i == 0 else " " + w for i, w in enumerate(words) if w or i == 0]
        self.usage = reply.usage or BedrockUsage(input=max(1, len(body) // 4), output=len(self.pieces))
        self.text = "".join(self.pieces)
        self.obj = obj
        self.half = max(1, len(self.pieces) // 2)

    def anthropic_usage(self, output: int) -> dict[str, Any]:
        u = self.usage
        return {"input_tokens": u.input, "cache_creation_input_tokens": u.cache_write,
                "cache_read_input_tokens": u.cache_read, "output_tokens": output}

    def message(self) -> dict[str, Any]:
        return {"id": "msg_bdrk_" + secrets.token_hex(12), "type": "message", "role": "assistant",
                "model": self.model, "content": [{"type": "text", "text": self.text}], "stop_reason": "end_turn",
                "stop_sequence": None, "usage": self.anthropic_usage(self.usage.output)}

    def anthropic_events(self) -> list[dict[str, Any]]:
        start = {**self.message(), "content": [], "stop_reason": None, "usage": self.anthropic_usage(1)}
        ev: list[dict[str, Any]] = [{"type": "message_start", "message": start},
                                    {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}}]
        ev += [{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}
               for p in self.pieces]
        delta_usage: dict[str, Any] = {"output_tokens": self.usage.output}
        if self.reply.delta_usage_input:
            delta_usage = self.anthropic_usage(self.usage.output)
        ev += [{"type": "content_block_stop", "index": 0},
               {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": delta_usage},
               {"type": "message_stop"}]
        if self.reply.metrics:
            u = self.usage
            ev[-1]["amazon-bedrock-invocationMetrics"] = {
                "inputTokenCount": u.input, "outputTokenCount": u.output, "invocationLatency": 321,
                "firstByteLatency": 123, "cacheReadInputTokenCount": u.cache_read,
                "cacheWriteInputTokenCount": u.cache_write}
        return ev

    def invoke_frames(self) -> list[bytes]:
        frames = []
        for event in self.anthropic_events():
            payload = {"bytes": base64.b64encode(_dumps(event, self.rng)).decode(), "p": _pad(self.rng)}
            frames.append(encode({":event-type": "chunk", ":content-type": "application/json",
                                  ":message-type": "event"}, _dumps(payload, self.rng)))
        return frames

    def converse_usage(self) -> dict[str, Any]:
        u = self.usage
        return {"inputTokens": u.input, "outputTokens": u.output,
                "totalTokens": u.input + u.output + u.cache_read + u.cache_write,
                "cacheReadInputTokens": u.cache_read, "cacheWriteInputTokens": u.cache_write}

    def converse_body(self) -> dict[str, Any]:
        return {"output": {"message": {"role": "assistant", "content": [{"text": self.text}]}},
                "stopReason": "end_turn", "usage": self.converse_usage(), "metrics": {"latencyMs": 321}}

    def converse_frames(self) -> list[bytes]:
        events: list[tuple[str, dict[str, Any]]] = [("messageStart", {"role": "assistant"})]
        events += [("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": p}}) for p in self.pieces]
        events += [("contentBlockStop", {"contentBlockIndex": 0}), ("messageStop", {"stopReason": "end_turn"}),
                   ("metadata", {"usage": self.converse_usage(), "metrics": {"latencyMs": 321}})]
        return [encode({":event-type": name, ":content-type": "application/json", ":message-type": "event"},
                       _dumps({**payload, "p": _pad(self.rng)}, self.rng)) for name, payload in events]


@dataclass
class FakeBedrock:
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION
    requests: list[Recorded] = field(default_factory=list)
    abandoned_streams: int = 0
    base_url: str = ""
    _queue: deque[BedrockReply] = field(default_factory=deque)
    _runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_post("/model/{model:.+}/{action:invoke|invoke-with-response-stream|converse|converse-stream}",
                            self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "FakeBedrock":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def script(self, *replies: BedrockReply) -> None:
        self._queue.extend(replies)

    def reset(self) -> None:
        self._queue.clear()
        self.requests.clear()
        self.abandoned_streams = 0

    def upstream_config(self, name: str = "bedrock") -> dict[str, Any]:
        """The gateway's config-file ``upstreams`` entry for this fake."""
        return {name: {"kind": "bedrock", "region": self.region, "base_url": self.base_url,
                       "aws_access_key_id": self.access_key, "aws_secret_access_key": self.secret_key}}

    # ---- SigV4, checked with botocore the way AWS checks it

    def _signature_ok(self, request: web.Request, body: bytes) -> bool:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        auth = request.headers.get("authorization", "")
        if not auth.startswith("AWS4-HMAC-SHA256 "):
            return False
        parts = dict(p.strip().split("=", 1) for p in auth[len("AWS4-HMAC-SHA256 "):].split(","))
        cred = parts.get("Credential", "").split("/")
        if len(cred) != 5 or cred[0] != self.access_key or cred[2] != self.region or cred[3] != "bedrock":
            return False
        signed = parts.get("SignedHeaders", "").split(";")
        amz_date = request.headers.get("x-amz-date", "")
        if "host" not in signed or "x-amz-date" not in signed or not amz_date.startswith(cred[1]):
            return False
        headers = {h: request.headers.get(h, "") for h in signed}
        req = AWSRequest(method=request.method, url=f"http://{request.host}{request.raw_path}", data=body,
                         headers=headers)
        req.context["timestamp"] = amz_date
        signer = SigV4Auth(Credentials(self.access_key, self.secret_key), "bedrock", self.region)
        canonical = signer.canonical_request(req)
        expected = signer.signature(signer.string_to_sign(req, canonical), req)
        return secrets.compare_digest(expected, parts.get("Signature", ""))

    # ---- the one handler

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        model, action = request.match_info["model"], request.match_info["action"]
        try:
            obj = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            obj = None
        signed = self._signature_ok(request, body)
        self.requests.append(Recorded(request.method, request.raw_path, model, action,
                                      {k.lower(): v for k, v in request.headers.items()}, body, obj, signed))
        rid = {"x-amzn-requestid": secrets.token_hex(16)}
        if not signed:
            return self._error(403, "InvalidSignatureException", "The request signature we calculated does not "
                               "match the signature you provided.", rid)
        if not isinstance(obj, dict):
            return self._error(400, "ValidationException", "Malformed input request, please reformat your input "
                               "and try again.", rid)
        reply = self._queue.popleft() if self._queue else BedrockReply()
        if reply.status >= 400:
            exc = reply.exception or _EXC_BY_STATUS.get(reply.status, "InternalServerException")
            return self._error(reply.status, exc, f"{exc} from the fake", rid)
        t = _Turn(reply, body, obj, model)
        if action == "invoke":
            u = t.usage
            return web.Response(body=_dumps(t.message(), t.rng), content_type="application/json", headers={
                **rid, "x-amzn-bedrock-input-token-count": str(u.input),
                "x-amzn-bedrock-output-token-count": str(u.output), "x-amzn-bedrock-invocation-latency": "321"})
        if action == "converse":
            return web.Response(body=_dumps(t.converse_body(), t.rng), content_type="application/json", headers=rid)
        frames = t.invoke_frames() if action == "invoke-with-response-stream" else t.converse_frames()
        first_delta = 2 if action == "invoke-with-response-stream" else 1
        return await self._stream(request, t, frames, first_delta + t.half, rid)

    async def _stream(self, request: web.Request, t: _Turn, frames: list[bytes], cut: int,
                      headers: dict[str, str]) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={**headers, "content-type": CONTENT_TYPE,
                                                       "x-amzn-bedrock-content-type": "application/json"})
        await resp.prepare(request)
        if t.reply.fail_mid_stream:
            frames = frames[:cut] + [encode({":message-type": "exception", ":exception-type": "modelStreamErrorException",
                                             ":content-type": "application/json"},
                                            b'{"message":"The model stream failed"}')]
        elif t.reply.drop_mid_stream:
            frames = frames[:cut]
        try:
            for piece in _cuts(b"".join(frames), t.rng):
                await resp.write(piece)
                await asyncio.sleep(0)
            if t.reply.drop_mid_stream:
                if request.transport is not None:
                    request.transport.abort()
                return resp
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError) as exc:
            self.abandoned_streams += 1
            if isinstance(exc, asyncio.CancelledError):
                raise
        return resp

    @staticmethod
    def _error(status: int, exc: str, message: str, headers: dict[str, str]) -> web.Response:
        return web.Response(status=status, body=orjson.dumps({"message": message}), content_type="application/json",
                            headers={**headers, "x-amzn-errortype": f"{exc}:http://internal.amazon.com/coral/com.amazon.bedrock/"})
