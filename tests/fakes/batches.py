"""A fake of both Batch APIs: OpenAI Files + Batches, Anthropic Message Batches.

    {base}/openai/v1/files                     POST (multipart: purpose, file), GET list
    {base}/openai/v1/files/{id}[/content]      GET, DELETE
    {base}/openai/v1/batches[/{id}[/cancel]]   POST create, GET list / retrieve, POST cancel
    {base}/anthropic/v1/messages/batches[/{id}[/cancel|/results]]

Keys as the main fake (``ANTHROPIC_KEY``, ``OPENAI_KEY``); a GatewayHarness takes a ``FakeBatches``
as its ``fake``. A batch stays in progress until the test ends it: ``fake.end(batch_id)`` serves
every request by its scripted outcome (``fake.outcomes[custom_id]``: a ``Usage``, ``"errored"`` or
``"expired"``; default: a Usage from the request's size). ``fake.cancel`` marks it canceling; ending a
canceled batch serves only the first ``served_before_cancel`` requests, the rest canceled (Anthropic)
or missing from the output (OpenAI, status ``cancelled``). ``fake.billed[batch_id]`` lists
``(custom_id, model, Usage)`` of every served request: what a provider bills.

Wire variation per batch (``seed``): key order, ``", "``/``": "`` spacing, ``\\u00XX`` escapes, CRLF
line ends in the JSONL, result lines in shuffled order.
"""
from __future__ import annotations

import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fake_provider import ANTHROPIC_KEY, OPENAI_KEY, Usage, _anthropic_usage, _chat_usage, _dumps

ERRORED, EXPIRED = "errored", "expired"
_STYLES = ("compact", "spaced", "shuffled", "spaced+shuffled", "escaped", "escaped+shuffled+spaced")


@dataclass
class _Batch:
    id: str
    wire: str
    requests: list[tuple[str, dict[str, Any]]]       # (custom_id, request body / params)
    created: int
    endpoint: str = ""
    input_file_id: str = ""
    status: str = "in_progress"                       # in_progress | canceling | ended
    output_file_id: str | None = None
    error_file_id: str | None = None
    results: bytes = b""
    counts: dict[str, int] = field(default_factory=dict)
    canceled: bool = False


class FakeBatches:
    def __init__(self, *, seed: int = 0) -> None:
        self.anthropic_key, self.openai_key = ANTHROPIC_KEY, OPENAI_KEY
        self.files: dict[str, tuple[str, str, bytes]] = {}       # id -> (purpose, filename, bytes)
        self.batches: dict[str, _Batch] = {}
        self.outcomes: dict[str, Usage | str] = {}
        self.billed: dict[str, list[tuple[str, str, Usage]]] = {}
        self.calls: list[tuple[str, str]] = []                  # (method, path) of every request
        self.served_before_cancel = 1
        self.seed = seed
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._auth])
        o, a = "/openai/v1", "/anthropic/v1/messages/batches"
        app.router.add_post(f"{o}/files", self._file_upload)
        app.router.add_get(f"{o}/files", self._file_list)
        app.router.add_get(f"{o}/files/{{id}}", self._file_get)
        app.router.add_delete(f"{o}/files/{{id}}", self._file_delete)
        app.router.add_get(f"{o}/files/{{id}}/content", self._file_content)
        app.router.add_post(f"{o}/batches", self._openai_create)
        app.router.add_get(f"{o}/batches", self._openai_list)
        app.router.add_get(f"{o}/batches/{{id}}", self._openai_get)
        app.router.add_post(f"{o}/batches/{{id}}/cancel", self._openai_cancel)
        app.router.add_post(a, self._anthropic_create)
        app.router.add_get(a, self._anthropic_list)
        app.router.add_get(f"{a}/{{id}}", self._anthropic_get)
        app.router.add_post(f"{a}/{{id}}/cancel", self._anthropic_cancel)
        app.router.add_get(f"{a}/{{id}}/results", self._anthropic_results)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "FakeBatches":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/openai/v1"

    @property
    def anthropic_base_url(self) -> str:
        return f"{self.base_url}/anthropic"

    def upstream_calls(self, prefix: str) -> list[tuple[str, str]]:
        return [c for c in self.calls if c[1].startswith(prefix)]

    # ---- wire helpers
    def _rng(self, batch_id: str) -> random.Random:
        return random.Random(f"{self.seed}:{batch_id}")

    def _json(self, payload: Any, rng: random.Random, status: int = 200) -> web.Response:
        return web.Response(status=status, body=_dumps(payload, rng.choice(_STYLES), rng),
                            content_type="application/json")

    def _jsonl(self, lines: list[dict[str, Any]], rng: random.Random) -> bytes:
        rng.shuffle(lines)
        end = rng.choice((b"\n", b"\r\n"))
        return b"".join(_dumps(line, rng.choice(_STYLES), rng) + end for line in lines)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.calls.append((request.method, request.path))
        if request.path.startswith("/openai/"):
            if request.headers.get("authorization") != f"Bearer {self.openai_key}":
                return web.json_response({"error": {"message": "Incorrect API key provided", "type":
                                         "invalid_request_error", "param": None, "code": "invalid_api_key"}},
                                         status=401)
        else:
            if request.headers.get("x-api-key") != self.anthropic_key or "anthropic-version" not in request.headers:
                return web.json_response({"type": "error", "error": {"type": "authentication_error",
                                                                     "message": "invalid x-api-key"}}, status=401)
        return await handler(request)

    def _usage_for(self, custom_id: str, body: dict[str, Any]) -> Usage | str:
        got = self.outcomes.get(custom_id)
        if got is not None:
            return got
        limit = body.get("max_tokens") or body.get("max_completion_tokens") or 16
        return Usage(input=max(1, len(orjson.dumps(body)) // 4), output=min(int(limit), 7))

    # ---- OpenAI files
    def _file_object(self, fid: str) -> dict[str, Any]:
        purpose, name, data = self.files[fid]
        return {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": name, "purpose": purpose, "status": "processed", "expires_at": None,
                "status_details": None}

    async def _file_upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form.get("file")
        purpose = str(form.get("purpose", ""))
        if upload is None or not hasattr(upload, "file"):
            return web.json_response({"error": {"message": "file is required", "type": "invalid_request_error",
                                                "param": "file", "code": None}}, status=400)
        fid = "file-" + secrets.token_hex(12)
        self.files[fid] = (purpose, upload.filename, upload.file.read())
        return self._json(self._file_object(fid), self._rng(fid))

    async def _file_list(self, request: web.Request) -> web.Response:
        data = [self._file_object(f) for f in self.files]
        return self._json({"object": "list", "data": data, "has_more": False,
                           "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None},
                          self._rng("list"))

    def _missing_file(self, fid: str) -> web.Response:
        return web.json_response({"error": {"message": f"No such File object: {fid}", "type":
                                            "invalid_request_error", "param": "id", "code": None}}, status=404)

    async def _file_get(self, request: web.Request) -> web.Response:
        fid = request.match_info["id"]
        return self._json(self._file_object(fid), self._rng(fid)) if fid in self.files else self._missing_file(fid)

    async def _file_delete(self, request: web.Request) -> web.Response:
        fid = request.match_info["id"]
        if self.files.pop(fid, None) is None:
            return self._missing_file(fid)
        return self._json({"id": fid, "object": "file", "deleted": True}, self._rng(fid))

    async def _file_content(self, request: web.Request) -> web.Response:
        fid = request.match_info["id"]
        if fid not in self.files:
            return self._missing_file(fid)
        return web.Response(body=self.files[fid][2], content_type="application/octet-stream")

    # ---- OpenAI batches
    def _openai_object(self, b: _Batch) -> dict[str, Any]:
        status = {"in_progress": "in_progress", "canceling": "cancelling"}.get(b.status)
        if status is None:
            status = "cancelled" if b.canceled else ("expired" if b.counts.get("expired") and
                                                     not b.counts.get("completed") else "completed")
        return {"id": b.id, "object": "batch", "endpoint": b.endpoint, "errors": None,
                "input_file_id": b.input_file_id, "completion_window": "24h", "status": status,
                "output_file_id": b.output_file_id, "error_file_id": b.error_file_id, "created_at": b.created,
                "in_progress_at": b.created, "expires_at": b.created + 86400, "finalizing_at": None,
                "completed_at": None, "failed_at": None, "expired_at": None, "cancelling_at": None,
                "cancelled_at": None, "request_counts": {"total": len(b.requests),
                                                         "completed": b.counts.get("completed", 0),
                                                         "failed": b.counts.get("failed", 0)},
                "metadata": None}

    async def _openai_create(self, request: web.Request) -> web.Response:
        body = await request.json()
        fid = body.get("input_file_id")
        if fid not in self.files:
            return self._missing_file(str(fid))
        reqs = [(line["custom_id"], line["body"]) for line in map(orjson.loads, self.files[fid][2].splitlines())]
        b = _Batch("batch_" + secrets.token_hex(12), "openai", reqs, int(time.time()), body["endpoint"], fid)
        self.batches[b.id] = b
        return self._json(self._openai_object(b), self._rng(b.id))

    def _missing_batch(self, wire: str, bid: str) -> web.Response:
        if wire == "openai":
            return web.json_response({"error": {"message": f"No batch found with id '{bid}'.", "type":
                                                "invalid_request_error", "param": None, "code": None}}, status=404)
        return web.json_response({"type": "error", "error": {"type": "not_found_error",
                                                             "message": f"No batch found with id '{bid}'"}}, status=404)

    async def _openai_get(self, request: web.Request) -> web.Response:
        b = self.batches.get(request.match_info["id"])
        return self._json(self._openai_object(b), self._rng(b.id)) if b else self._missing_batch("openai", "?")

    async def _openai_list(self, request: web.Request) -> web.Response:
        data = [self._openai_object(b) for b in self.batches.values() if b.wire == "openai"]
        return self._json({"object": "list", "data": data, "has_more": False}, self._rng("list"))

    async def _openai_cancel(self, request: web.Request) -> web.Response:
        b = self.batches.get(request.match_info["id"])
        if b is None:
            return self._missing_batch("openai", "?")
        self.cancel(b.id)
        return self._json(self._openai_object(b), self._rng(b.id))

    # ---- Anthropic message batches
    def _anthropic_object(self, b: _Batch) -> dict[str, Any]:
        ended = b.status == "ended"
        counts = {k: b.counts.get(k, 0) for k in ("succeeded", "errored", "canceled", "expired")}
        counts["processing"] = 0 if ended else len(b.requests)
        return {"id": b.id, "type": "message_batch", "processing_status": b.status, "request_counts": counts,
                "ended_at": "2026-12-05T18:00:00Z" if ended else None, "created_at": "2026-12-05T17:00:00Z",
                "expires_at": "2026-12-06T17:00:00Z", "archived_at": None,
                "cancel_initiated_at": "2026-12-05T17:30:00Z" if b.canceled else None,
                "results_url": (f"https://api.anthropic.com/v1/messages/batches/{b.id}/results" if ended else None)}

    async def _anthropic_create(self, request: web.Request) -> web.Response:
        body = await request.json()
        reqs = [(r["custom_id"], r["params"]) for r in body["requests"]]
        b = _Batch("msgbatch_" + secrets.token_hex(12), "anthropic", reqs, int(time.time()))
        self.batches[b.id] = b
        return self._json(self._anthropic_object(b), self._rng(b.id))

    async def _anthropic_get(self, request: web.Request) -> web.Response:
        b = self.batches.get(request.match_info["id"])
        return self._json(self._anthropic_object(b), self._rng(b.id)) if b else self._missing_batch("anthropic", "?")

    async def _anthropic_list(self, request: web.Request) -> web.Response:
        data = [self._anthropic_object(b) for b in self.batches.values() if b.wire == "anthropic"]
        return self._json({"data": data, "has_more": False, "first_id": None, "last_id": None}, self._rng("list"))

    async def _anthropic_cancel(self, request: web.Request) -> web.Response:
        b = self.batches.get(request.match_info["id"])
        if b is None:
            return self._missing_batch("anthropic", "?")
        self.cancel(b.id)
        return self._json(self._anthropic_object(b), self._rng(b.id))

    async def _anthropic_results(self, request: web.Request) -> web.Response:
        b = self.batches.get(request.match_info["id"])
        if b is None or b.status != "ended":
            return self._missing_batch("anthropic", request.match_info["id"])
        return web.Response(body=b.results, content_type="application/binary")

    # ---- the test's hand
    def cancel(self, batch_id: str) -> None:
        b = self.batches[batch_id]
        if b.status == "in_progress":
            b.status, b.canceled = "canceling", True

    def end(self, batch_id: str) -> None:
        """Serve the batch: every request by its outcome (a canceled batch only its first ones)."""
        b = self.batches[batch_id]
        rng = self._rng(batch_id + ":results")
        billed: list[tuple[str, str, Usage]] = []
        out: list[dict[str, Any]] = []
        errs: list[dict[str, Any]] = []
        for i, (cid, body) in enumerate(b.requests):
            outcome = "canceled" if b.canceled and i >= self.served_before_cancel else self._usage_for(cid, body)
            model = body["model"]
            if isinstance(outcome, Usage):
                billed.append((cid, model, outcome))
                b.counts["succeeded" if b.wire == "anthropic" else "completed"] = b.counts.get(
                    "succeeded" if b.wire == "anthropic" else "completed", 0) + 1
                out.append(self._served_line(b, cid, model, outcome))
            elif outcome == "canceled" and b.wire == "openai":
                continue                              # OpenAI leaves requests it never ran out of both files
            else:
                key = outcome if b.wire == "anthropic" else ("expired" if outcome == EXPIRED else "failed")
                b.counts[key] = b.counts.get(key, 0) + 1
                (out if b.wire == "anthropic" else errs).append(self._unserved_line(b, cid, outcome))
        self.billed[batch_id] = billed
        if b.wire == "anthropic":
            b.results = self._jsonl(out, rng)
        else:
            if out:
                b.output_file_id = "file-" + secrets.token_hex(12)
                self.files[b.output_file_id] = ("batch_output", "batch_output.jsonl", self._jsonl(out, rng))
            if errs:
                b.error_file_id = "file-" + secrets.token_hex(12)
                self.files[b.error_file_id] = ("batch_output", "batch_errors.jsonl", self._jsonl(errs, rng))
        b.status = "ended"

    def _served_line(self, b: _Batch, cid: str, model: str, u: Usage) -> dict[str, Any]:
        if b.wire == "anthropic":
            message = {"id": "msg_" + secrets.token_hex(12), "type": "message", "role": "assistant",
                       "model": model, "content": [{"type": "text", "text": "Batched hello."}],
                       "stop_reason": "end_turn", "stop_sequence": None,
                       "usage": _anthropic_usage(u, u.output) | {"service_tier": "batch"}}
            return {"custom_id": cid, "result": {"type": "succeeded", "message": message}}
        body = {"id": "chatcmpl-" + secrets.token_hex(12), "object": "chat.completion", "created": b.created,
                "model": model + "-2026-01-01", "choices": [{"index": 0, "message": {
                    "role": "assistant", "content": "Batched hello.", "refusal": None, "annotations": []},
                    "logprobs": None, "finish_reason": "stop"}],
                "usage": _chat_usage(u), "service_tier": "batch", "system_fingerprint": "fp_batch"}
        return {"id": "batch_req_" + secrets.token_hex(12), "custom_id": cid,
                "response": {"status_code": 200, "request_id": secrets.token_hex(16), "body": body}, "error": None}

    def _unserved_line(self, b: _Batch, cid: str, outcome: str) -> dict[str, Any]:
        if b.wire == "anthropic":
            if outcome == ERRORED:
                result: dict[str, Any] = {"type": "errored", "error": {"type": "error", "error": {
                    "type": "invalid_request_error", "message": "max_tokens: too large"}}}
            else:
                result = {"type": outcome}
            return {"custom_id": cid, "result": result}
        if outcome == EXPIRED:
            return {"id": "batch_req_" + secrets.token_hex(12), "custom_id": cid, "response": None,
                    "error": {"code": "batch_expired", "message": "This request could not be executed before the "
                                                                 "completion window expired."}}
        return {"id": "batch_req_" + secrets.token_hex(12), "custom_id": cid,
                "response": {"status_code": 400, "request_id": secrets.token_hex(16), "body": {"error": {
                    "message": "Invalid 'max_tokens'", "type": "invalid_request_error", "param": "max_tokens",
                    "code": None}}}, "error": None}
