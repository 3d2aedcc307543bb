"""A fake Google: Vertex AI (Anthropic rawPredict/streamRawPredict, Gemini generateContent) and the Gemini API.

    {base}/{v1,v1beta1}/projects/{p}/locations/{l}/publishers/anthropic/models/{m}:rawPredict|streamRawPredict
    {base}/{v1,v1beta1}/projects/{p}/locations/{l}/publishers/google/models/{m}:generateContent|streamGenerateContent
    {base}/{v1,v1beta}/models/{m}:generateContent|streamGenerateContent          (the Gemini API)

Vertex needs ``Authorization: Bearer {TOKEN}`` (or a token minted by ``POST {base}/token``, Google's
OAuth token endpoint for service accounts: a JWT-bearer grant whose RS256 assertion is checked against
``sa_public_pem``); the Gemini API needs ``x-goog-api-key: {API_KEY}``.
A refusal is Google's error JSON. Replies are scripted FIFO (``GoogleReply``); usage is neutral:
``input`` excludes cached tokens; Gemini spells it ``promptTokenCount = input + cache_read``,
``cachedContentTokenCount``, ``candidatesTokenCount = output - thoughts``, ``thoughtsTokenCount``.
Gemini streams (``alt=sse``, CRLF-framed) repeat cumulative usage on chunks; the last chunk has the
finish reason and the final counts. Without ``alt=sse`` a stream is one JSON array. Anthropic SSE on
Vertex is the Anthropic wire (usage in message_start and message_delta).
Wire variation per reply (``seed``): key order, whitespace, CRLF or LF, usage on every chunk or not.
"""
from __future__ import annotations

import asyncio
import random
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.bedrock import BedrockReply, BedrockUsage, _dumps, _Turn

TOKEN = "ya29.fake-vertex-access-token"
API_KEY = "AIzaFakeGeminiKey000000000000000000000"
DEFAULT_TEXT = "Hello from fake Google."


@dataclass(frozen=True, slots=True)
class GoogleUsage:
    input: int = 0
    output: int = 0             # thoughts included
    cache_read: int = 0
    cache_write: int = 0        # Anthropic on Vertex only
    thoughts: int = 0           # Gemini only; part of output


@dataclass(frozen=True, slots=True)
class GoogleReply:
    text: str | None = None
    usage: GoogleUsage | None = None
    status: int = 200
    drop_mid_stream: bool = False
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class Recorded:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any


_GRPC = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
         429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}


@dataclass
class FakeGoogle:
    requests: list[Recorded] = field(default_factory=list)
    base_url: str = ""
    sa_public_pem: bytes = b""                 # set by a test that mints tokens from a service account
    tokens: set[str] = field(default_factory=lambda: {TOKEN})
    minted: int = 0
    _queue: deque[GoogleReply] = field(default_factory=deque)
    _runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_post("/{version:v1|v1beta1}/projects/{project}/locations/{location}/publishers/"
                            "{publisher}/models/{target}", self._vertex)
        app.router.add_post("/{version:v1|v1beta}/models/{target}", self._gemini_api)
        app.router.add_post("/token", self._token)
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

    async def __aenter__(self) -> "FakeGoogle":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def script(self, *replies: GoogleReply) -> None:
        self._queue.extend(replies)

    def reset(self) -> None:
        self._queue.clear()
        self.requests.clear()

    def vertex_config(self, name: str = "vertex", project: str = "gw-project", location: str = "us-east5") -> dict:
        return {name: {"kind": "vertex", "project": project, "location": location, "base_url": self.base_url,
                       "access_token": TOKEN}}

    def gemini_config(self, name: str = "gemini") -> dict:
        return {name: {"kind": "gemini", "api_key": API_KEY, "base_url": self.base_url}}

    # ---- handlers

    async def _record(self, request: web.Request) -> tuple[bytes, Any]:
        body = await request.read()
        try:
            obj = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            obj = None
        self.requests.append(Recorded(request.raw_path, dict(request.query),
                                      {k.lower(): v for k, v in request.headers.items()}, body, obj))
        return body, obj

    @staticmethod
    def _error(status: int, message: str) -> web.Response:
        return web.Response(status=status, content_type="application/json", body=orjson.dumps(
            {"error": {"code": status, "message": message, "status": _GRPC.get(status, "INTERNAL")}}))

    async def _vertex(self, request: web.Request) -> web.StreamResponse:
        body, obj = await self._record(request)
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
            return self._error(401, "Request had invalid authentication credentials.")
        model, _, method = request.match_info["target"].rpartition(":")
        if request.match_info["publisher"] == "anthropic":
            return await self._anthropic(request, body, obj, model, method)
        return await self._generate(request, body, obj, model, method)

    async def _token(self, request: web.Request) -> web.Response:
        from google.auth import jwt

        form = await request.post()
        try:
            claims = jwt.decode(str(form.get("assertion", "")), certs=self.sa_public_pem,
                                audience="https://oauth2.googleapis.com/token")   # what google-auth signs for
        except ValueError as exc:
            return web.json_response({"error": "invalid_grant", "error_description": str(exc)}, status=400)
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" or "cloud-platform" not in claims.get("scope", ""):
            return web.json_response({"error": "invalid_request"}, status=400)
        self.minted += 1
        token = f"ya29.minted-{self.minted}"
        self.tokens.add(token)
        return web.json_response({"access_token": token, "expires_in": 3599, "token_type": "Bearer"})

    async def _gemini_api(self, request: web.Request) -> web.StreamResponse:
        body, obj = await self._record(request)
        if request.headers.get("x-goog-api-key") != API_KEY:
            return self._error(400, "API key not valid. Please pass a valid API key.")
        model, _, method = request.match_info["target"].rpartition(":")
        return await self._generate(request, body, obj, model, method)

    def _next(self) -> GoogleReply:
        return self._queue.popleft() if self._queue else GoogleReply()

    async def _anthropic(self, request: web.Request, body: bytes, obj: Any, model: str,
                         method: str) -> web.StreamResponse:
        reply = self._next()
        if reply.status >= 400:
            return self._error(reply.status, "scripted failure")
        if not isinstance(obj, dict) or "anthropic_version" not in obj or "model" in obj:
            return self._error(400, "anthropic_version is required in the body and model must not be")
        u = reply.usage
        bu = BedrockUsage(u.input, u.output, u.cache_read, u.cache_write) if u else None
        t = _Turn(BedrockReply(text=reply.text or DEFAULT_TEXT, usage=bu, metrics=False, seed=reply.seed,
                               delta_usage_input=bool(reply.seed and reply.seed % 2)), body, obj, model)
        if method == "rawPredict" and not obj.get("stream"):
            return web.Response(body=_dumps(t.message(), t.rng), content_type="application/json")
        nl = b"\r\n" if t.rng.random() < 0.5 else b"\n"
        frames = [b"event: " + e["type"].encode() + nl + b"data: " + _dumps(e, t.rng) + nl + nl
                  for e in t.anthropic_events()]
        return await self._send(request, frames, "text/event-stream", reply, t.rng, 2 + t.half)

    async def _generate(self, request: web.Request, body: bytes, obj: Any, model: str,
                        method: str) -> web.StreamResponse:
        if method == "countTokens":                   # never consumes a scripted reply
            if not isinstance(obj, dict) or not isinstance(obj.get("contents"), list):
                return self._error(400, "contents is required")
            return web.json_response({"totalTokens": max(1, len(body) // 4),
                                      "promptTokensDetails": [{"modality": "TEXT", "tokenCount": max(1, len(body) // 4)}]})
        reply = self._next()
        if reply.status >= 400:
            return self._error(reply.status, "scripted failure")
        if not isinstance(obj, dict) or not isinstance(obj.get("contents"), list):
            return self._error(400, "contents is required")
        rng = random.Random(reply.seed if reply.seed is not None else secrets.randbits(32))
        text = reply.text or DEFAULT_TEXT
        words = text.split(" ")
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        u = reply.usage or GoogleUsage(input=max(1, len(body) // 4), output=len(pieces))

        def usage_meta(done: int) -> dict[str, Any]:
            out = (u.output - u.thoughts) if done == len(pieces) else min(done, u.output - u.thoughts)
            meta: dict[str, Any] = {"promptTokenCount": u.input + u.cache_read, "candidatesTokenCount": out,
                                    "totalTokenCount": u.input + u.cache_read + out + u.thoughts,
                                    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": u.input + u.cache_read}]}
            if u.cache_read:
                meta["cachedContentTokenCount"] = u.cache_read
            if u.thoughts:
                meta["thoughtsTokenCount"] = u.thoughts
            return meta

        def chunk(parts: list[dict], done: int, final: bool) -> dict[str, Any]:
            cand: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
            if final:
                cand["finishReason"] = "STOP"
            c: dict[str, Any] = {"candidates": [cand], "modelVersion": model, "responseId": secrets.token_hex(8)}
            if final or every_chunk_usage:
                c["usageMetadata"] = usage_meta(done)
            return c

        every_chunk_usage = rng.random() < 0.5
        if method == "generateContent":
            return web.Response(body=_dumps(chunk([{"text": text}], len(pieces), True), rng),
                                content_type="application/json")
        chunks = [chunk([{"text": p}], i + 1, i == len(pieces) - 1) for i, p in enumerate(pieces)]
        if request.query.get("alt") != "sse":
            return web.Response(body=b"[" + b",\r\n".join(_dumps(c, rng) for c in chunks) + b"]",
                                content_type="application/json")
        nl = b"\r\n" if rng.random() < 0.7 else b"\n"
        frames = [b"data: " + _dumps(c, rng) + nl + nl for c in chunks]
        return await self._send(request, frames, "text/event-stream", reply, rng, max(1, len(frames) // 2))

    @staticmethod
    async def _send(request: web.Request, frames: list[bytes], ctype: str, reply: GoogleReply,
                    rng: random.Random, cut: int) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"content-type": ctype})
        await resp.prepare(request)
        if reply.drop_mid_stream:
            frames = frames[:cut]
        data = b"".join(frames)
        points = sorted(rng.sample(range(1, len(data)), k=min(len(data) - 1, rng.randint(0, 8))))
        for a, b in zip([0, *points], [*points, len(data)]):
            await resp.write(data[a:b])
            await asyncio.sleep(0)
        if reply.drop_mid_stream:
            if request.transport is not None:
                request.transport.abort()
            return resp
        await resp.write_eof()
        return resp
