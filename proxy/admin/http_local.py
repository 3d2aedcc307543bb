"""What the ``llmgw`` CLI beside a running gateway does through it (``ledger/local_gateway.py``).

- ``POST /admin/config/records``: append config records the CLI built, applied
  here at once, so a key works the moment ``llmgw keys create`` returns.
- ``POST /admin/ledger/rebuild``: refold the embedded log up to a cut the live
  ledger has folded, and compare (the CLI alone would compare with a
  checkpoint that lags a running gateway).

Only the local token of ``llmgw serve`` may call them: they take records as
built by the CLI, which has the data dir's authority, not an admin's.
"""
from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from llmgw.core.config import ConfigRecord
from llmgw.ledger.fold import Totals, fold

from .errors import BadRequest, Conflict, Forbidden
from .runtime import admin_of, change, gateway, reply

routes = web.RouteTableDef()
MAX_RECORDS = 1000
FLUSH_TRIES = 20


def _local(request: web.Request) -> None:
    p = admin_of(request)
    if (p.via, p.name) != ("cli", "local"):
        raise Forbidden("only the llmgw CLI on this host (the token in the data dir's gateway.json) may do this")


def _records(body: Any) -> list[ConfigRecord]:
    items = body.get("records") if isinstance(body, dict) else None
    if not isinstance(items, list) or not 0 < len(items) <= MAX_RECORDS:
        raise BadRequest(f"send {{\"records\": [...]}} with 1 to {MAX_RECORDS} config records")
    out = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("type"), str) \
                or not str(item.get("id", "")).startswith(f"{item.get('type')}:") \
                or not isinstance(item.get("data"), (dict, type(None))):
            raise BadRequest("each record needs id \"<type>:<name>\", type and data (an object or null)")
        out.append(ConfigRecord.decode(orjson.dumps(item)))
    return out


@routes.post("/admin/config/records")
async def append_records(request: web.Request) -> web.Response:
    _local(request)
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    records = _records(body)
    await change(request, lambda _state: (records, None))
    return reply({"applied": [r.id for r in records], "version": gateway(request).config.version})


@routes.post("/admin/ledger/rebuild")
async def ledger_rebuild(request: web.Request) -> web.Response:
    _local(request)
    from llmgw.ledger.embedded import EmbeddedLedger

    led = gateway(request).ledger
    if not isinstance(led, EmbeddedLedger):
        raise BadRequest("this gateway's ledger is Kafka: `llmgw ledger rebuild` reads the topics itself")
    for _ in range(FLUSH_TRIES):           # a cut with nothing in flight: the folded view covers the log to `end`
        await led.flush()
        if led.events_written == led.events_submitted:
            end, live = led.log.end, dict(led.view.folded)
            break
    else:
        raise Conflict("calls kept arriving; no quiet moment to compare at (try again)")
    rebuilt = await asyncio.to_thread(_refold, led, end)
    differ = sorted(k for k in rebuilt.keys() | live.keys() if rebuilt.get(k) != live.get(k))
    return reply({"position": end, "rebuilt_keys": len(rebuilt), "live_keys": len(live),
                  "identical": not differ, "differences": differ[:20]})


def _refold(led: Any, end: int) -> dict[str, Totals]:
    totals: dict[str, Totals] = {}
    for _, after, ev in led.log.read_from(0):
        if after > end:
            break
        totals.update(fold(totals, ev, led.tz_of))
    return totals
