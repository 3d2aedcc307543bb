"""What a batch adapter tells the gateway's batch book (``proxy/batches.py``), in neutral terms.

A batch is many calls submitted at once and answered later. The book needs, at submission, each
request's ``Call`` (to price its worst case at the batch rate) and, once the batch has ended, each
served request's usage. Both come from the per-call adapters' own ``parse`` and meters, so a batch
line is metered exactly like the same call made online."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import orjson

from ..errors import BadRequest
from ..types import Adapter, Call, Usage

# A batch line is one JSON object; providers cap a batch at 100,000 (Anthropic) / 50,000 (OpenAI) requests.
MAX_BATCH_REQUESTS = 100_000


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """One request of a submitted batch, parsed by the adapter of the API it calls."""

    custom_id: str
    adapter: Adapter
    call: Call


@dataclass(frozen=True, slots=True)
class BatchState:
    """What the gateway reads of a provider's batch object."""

    batch_id: str
    ended: bool               # no request will be served any more: results are final
    result_files: tuple[str, ...] = ()   # OpenAI: the output file holding the served requests
    files: tuple[str, ...] = ()          # OpenAI: every file the batch made (output and errors): its owner's


@dataclass(frozen=True, slots=True)
class ServedLine:
    """A result line the provider bills: its request's id and the usage its meter read."""

    custom_id: str
    usage: Usage


def jsonl_objects(raw: bytes, what: str) -> Iterator[dict[str, Any]]:
    """Each non-blank line of a JSONL body as an object (CRLF or LF); a bad line is the client's 400."""
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"{what} line {n} is not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise BadRequest(f"{what} line {n} must be a JSON object")
        yield obj


def require_custom_id(obj: dict[str, Any], n: int, seen: set[str], what: str) -> str:
    cid = obj.get("custom_id")
    if not isinstance(cid, str) or not cid or len(cid) > 512:
        raise BadRequest(f"{what} request {n} needs a `custom_id` string of 1 to 512 characters")
    if cid in seen:
        raise BadRequest(f"{what} has the `custom_id` {cid[:80]!r} twice; each request's must be unique")
    if len(seen) >= MAX_BATCH_REQUESTS:
        raise BadRequest(f"{what} has more than {MAX_BATCH_REQUESTS} requests")
    seen.add(cid)
    return cid


def parse_request(adapter: Adapter, body: dict[str, Any], where: str) -> Call:
    """One batch request parsed as its API would parse it online; an error names where it is."""
    if body.get("stream") is True:
        raise BadRequest(f"{where}: a batch request cannot stream")
    try:
        return adapter.parse(orjson.dumps(body))
    except BadRequest as err:
        raise BadRequest(f"{where}: {err.message}") from None


def meter_body(adapter: Adapter, call: Call, body: object) -> Usage:
    """The usage the per-call adapter's meter reads from a served response object."""
    meter = adapter.meter(call)
    meter.finish_json(orjson.dumps(body))
    return meter.result()
