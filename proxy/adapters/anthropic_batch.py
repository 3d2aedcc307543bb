"""Anthropic Message Batches (``/v1/messages/batches``): the batch object, its requests, its results.

Submission: ``{"requests": [{"custom_id", "params": {...a Messages request...}}]}``; each ``params`` is
parsed by the Messages adapter. The batch object's ``processing_status`` is ``in_progress``,
``canceling`` or ``ended``; once ended, ``results_url`` serves JSONL lines
``{"custom_id", "result": {"type": "succeeded" | "errored" | "canceled" | "expired", ...}}``, and only
``succeeded`` lines (a ``message`` with its ``usage``) are billed.
"""
from __future__ import annotations

from typing import Any, Iterator

import orjson

from ..errors import BadRequest, GatewayError
from ..types import Call
from ._batch import BatchRequest, BatchState, ServedLine, jsonl_objects, meter_body, parse_request, require_custom_id
from ._common import parse_object
from .anthropic_messages import AnthropicMessages, error_object

_MESSAGES = AnthropicMessages()
BATCHES_PATH = "/v1/messages/batches"


class AnthropicBatches:
    api = "batch_messages"
    family = "anthropic"
    upstream_path = BATCHES_PATH

    def requests(self, body: bytes) -> list[BatchRequest]:
        """The batch's requests, each checked as the Messages API would check it online."""
        obj = parse_object(body)
        reqs = obj.get("requests")
        if not isinstance(reqs, list) or not reqs:
            raise BadRequest("`requests` is required and must be a non-empty list")
        out: list[BatchRequest] = []
        seen: set[str] = set()
        for n, r in enumerate(reqs):
            if not isinstance(r, dict) or not isinstance(r.get("params"), dict):
                raise BadRequest(f"requests[{n}] must be an object with `custom_id` and `params`")
            cid = require_custom_id(r, n, seen, "the batch")
            out.append(BatchRequest(cid, _MESSAGES, parse_request(_MESSAGES, r["params"], f"requests[{n}].params")))
        return out

    def state(self, obj: dict[str, Any]) -> BatchState | None:
        if obj.get("type") != "message_batch" or not isinstance(obj.get("id"), str):
            return None
        return BatchState(obj["id"], obj.get("processing_status") == "ended")

    def served(self, raw: bytes, bound: Call) -> Iterator[ServedLine]:
        """The billed lines of a results body; errored, canceled and expired requests cost nothing.
        ``bound``: the largest of the batch's requests, for the meter's sanity checks."""
        for line in jsonl_objects(raw, "batch results"):
            result, cid = line.get("result"), line.get("custom_id")
            if not isinstance(result, dict) or result.get("type") != "succeeded" or not isinstance(cid, str):
                continue
            message = result.get("message")
            if not isinstance(message, dict):
                continue
            yield ServedLine(cid, meter_body(_MESSAGES, bound, message))

    def rewrite_results_url(self, obj: dict[str, Any], gateway_base: str) -> bool:
        """Point ``results_url`` at the gateway (the SDK fetches that URL as it is)."""
        if isinstance(obj.get("results_url"), str) and isinstance(obj.get("id"), str):
            obj["results_url"] = f"{gateway_base}{BATCHES_PATH}/{obj['id']}/results"
            return True
        return False

    def error_body(self, err: GatewayError) -> bytes:
        return orjson.dumps(error_object(err))
