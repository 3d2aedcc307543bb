"""OpenAI Batch (``/v1/batches``) over an input file uploaded to ``/v1/files``.

Submission: ``{"input_file_id", "endpoint", "completion_window"}``; the file is JSONL lines
``{"custom_id", "method": "POST", "url": endpoint, "body": {...}}``, each body parsed by the adapter
of the API it calls (chat, responses, embeddings). The batch object's ``status`` ends at
``completed``, ``expired``, ``cancelled`` or ``failed``; ``output_file_id`` then holds lines
``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`` for the served
requests (errors go to ``error_file_id``, unbilled). Only a 200 response with a body is billed.
"""
from __future__ import annotations

from typing import Any, Iterator

import orjson

from ..errors import BadRequest, GatewayError
from ..types import Adapter, Call
from ._batch import BatchRequest, BatchState, ServedLine, jsonl_objects, meter_body, parse_request, require_custom_id
from ._common import parse_object
from .openai_chat import OpenAIChat, error_object
from .openai_embeddings import OpenAIEmbeddings
from .openai_responses import OpenAIResponses

ENDPOINTS: dict[str, Adapter] = {"/v1/chat/completions": OpenAIChat(), "/v1/responses": OpenAIResponses(),
                                 "/v1/embeddings": OpenAIEmbeddings()}
_ENDED = frozenset({"completed", "expired", "cancelled", "failed"})
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def plain_id(value: object, what: str) -> str:
    """A file or batch id as it goes into an upstream path: letters, digits, ``_`` and ``-`` only."""
    if not isinstance(value, str) or not value or len(value) > 128 or not set(value) <= _ID_CHARS:
        raise BadRequest(f"`{what}` must be an id such as file-abc123")
    return value


class OpenAIBatches:
    api = "batch"
    family = "openai"
    upstream_path = "/batches"

    def submission(self, body: bytes) -> tuple[str, str]:
        """``(input_file_id, endpoint)`` of a batch create body."""
        obj = parse_object(body)
        file_id = plain_id(obj.get("input_file_id"), "input_file_id")
        endpoint = obj.get("endpoint")
        if endpoint not in ENDPOINTS:
            raise BadRequest(f"`endpoint` must be one of {', '.join(ENDPOINTS)} (the gateway meters those)")
        return file_id, endpoint

    def requests(self, raw: bytes, endpoint: str) -> list[BatchRequest]:
        """The input file's requests, each checked as its API would check it online."""
        adapter = ENDPOINTS[endpoint]
        out: list[BatchRequest] = []
        seen: set[str] = set()
        for n, line in enumerate(jsonl_objects(raw, "the batch input file")):
            cid = require_custom_id(line, n, seen, "the batch input file")
            if line.get("url") != endpoint or line.get("method", "POST") != "POST":
                raise BadRequest(f"input line {n + 1}: every request must be POST {endpoint}, the batch's endpoint")
            body = line.get("body")
            if not isinstance(body, dict):
                raise BadRequest(f"input line {n + 1}: `body` must be a JSON object")
            out.append(BatchRequest(cid, adapter, parse_request(adapter, body, f"input line {n + 1}")))
        if not out:
            raise BadRequest("the batch input file holds no requests")
        return out

    def state(self, obj: dict[str, Any]) -> BatchState | None:
        if obj.get("object") != "batch" or not isinstance(obj.get("id"), str):
            return None
        out = obj.get("output_file_id")
        results = (out,) if isinstance(out, str) and out else ()
        err = obj.get("error_file_id")
        files = results + ((err,) if isinstance(err, str) and err else ())
        return BatchState(obj["id"], obj.get("status") in _ENDED, results, files)

    def served(self, raw: bytes, endpoint: str, bound: Call) -> Iterator[ServedLine]:
        """The billed lines of an output file: a 200 response with a body; every other line is free.
        ``bound``: the largest of the batch's requests, for the meter's sanity checks."""
        adapter = ENDPOINTS[endpoint]
        for line in jsonl_objects(raw, "batch output"):
            resp, cid = line.get("response"), line.get("custom_id")
            if not isinstance(resp, dict) or resp.get("status_code") != 200 or not isinstance(cid, str):
                continue
            body = resp.get("body")
            if not isinstance(body, dict):
                continue
            yield ServedLine(cid, meter_body(adapter, bound, body))

    def error_body(self, err: GatewayError) -> bytes:
        return orjson.dumps(error_object(err))
