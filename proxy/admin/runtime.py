"""The admin part's state in the app, its lifecycle, and the helpers every admin handler uses.

``AdminRuntime`` owns the config-log writer (one per process, under a lock so
that a check and the write it depends on are not interleaved with another
admin request), the owner key, the OIDC verifier and the raise-expiry task.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, TypeVar

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from llmgw.ledger.configlog import ConfigLog, FileConfigLog, open_config_log
from llmgw.core.config import ConfigRecord, ConfigState
from llmgw.ledger.kafka_config import ConfigLogUnavailable
from llmgw.proxy.context import GATEWAY, Gateway
from llmgw.proxy.keys import PREFIX as CLIENT_PREFIX, presented_key
from llmgw.proxy.pipeline import unreadable_body

from . import credentials as C
from .errors import AuthError, BadRequest, ConfigUnavailable
from .increase import expired_raises
from .oidc import OidcVerifier, looks_like_jwt
from .roles import OWNER, AdminPrincipal

log = logging.getLogger("llmgw.admin")
T = TypeVar("T")
SWEEP_INTERVAL_S = 1.0
INCREASE_HINT = ("file a budget-increase request with this same key: POST /v1/llmgw/increase-requests "
                 "{\"window\": ..., \"amount_usd\": ..., \"reason\": ...} (or `llmgw request-increase`), "
                 "which an approver can grant at once")


async def append(log_: ConfigLog, rec: ConfigRecord) -> None:
    """Append one record; the file log's fsync runs off the event loop. A log that cannot take it
    (Kafka away, a full disk) is a 503 with the reason, and nothing is applied."""
    try:
        if isinstance(log_, FileConfigLog):
            await asyncio.to_thread(log_.append_sync, rec)
        else:
            await log_.append(rec)
    except (ConfigLogUnavailable, OSError) as exc:
        log.error("config change %s not written: %s", rec.id, exc,
                  extra={"event": "admin_write_unavailable", "record_type": rec.type})
        raise ConfigUnavailable(f"the config log did not take this change, so nothing was changed ({exc}); "
                                "retry once it is reachable again", retry_after_s=5) from None


@dataclass
class AdminRuntime:
    log: ConfigLog
    owner_key: str
    oidc: OidcVerifier | None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    local_token: str = ""          # `llmgw serve`'s token for the CLI beside it (ledger/local_gateway.py)

    async def change(self, gw: Gateway, compute: Callable[[ConfigState], tuple[list[ConfigRecord], T]]) -> T:
        """Run ``compute`` on the live state and append the records it returns, as one step."""
        async with self.lock:
            records, result = compute(gw.config)
            for rec in records:
                await append(self.log, rec)
                gw.config.apply(rec)       # visible at once here; the follower re-reads it idempotently
            if records:
                gw.config_changed()
            return result

    def authenticate(self, state: ConfigState, token: str) -> AdminPrincipal:
        if token.startswith(CLIENT_PREFIX):
            raise AuthError("a client key cannot be used on admin endpoints; send an admin credential "
                            "(LLMGW_ADMIN_KEY, an llmgw-admin- key, or an OIDC token)")
        if self.local_token and hmac.compare_digest(token.encode(), self.local_token.encode()):
            return AdminPrincipal("local", OWNER, via="cli")
        p = C.authenticate_admin(state, self.owner_key, token, int(time.time() * 1000))
        if p is not None:
            return p
        if self.oidc is not None and looks_like_jwt(token):
            return self.oidc.verify(token)
        raise AuthError("invalid, revoked or expired admin credential")


ADMIN = web.AppKey("admin", AdminRuntime)


async def admin_ctx(app: web.Application) -> AsyncIterator[None]:
    gw = app[GATEWAY]
    s = gw.settings
    if s.admin_key.startswith(CLIENT_PREFIX):
        raise ValueError("LLMGW_ADMIN_KEY must not look like a client key (sk-llmgw-...)")
    rt = AdminRuntime(open_config_log(s.data_dir, s.kafka_bootstrap, s.topic_prefix), s.admin_key,
                      OidcVerifier.from_file_config(dict(s.file_config)))
    app[ADMIN] = rt
    gw.policy.increase_hint = INCREASE_HINT
    if not gw.config_current:      # Kafka away at start: whether an owner exists is unknown, so none is minted
        log.warning("config from the local cache (Kafka unavailable): no first owner key is generated "
                    "on this start", extra={"event": "admin_bootstrap_skipped"})
    elif C.needs_bootstrap(gw.config, s.admin_key):
        key, records = C.bootstrap_records()
        await rt.change(gw, lambda _state: (records, None))
        print("llmgw: no LLMGW_ADMIN_KEY set, so this first start generated the owner admin key "
              f"(shown once, store it now):\n{key}", file=sys.stderr, flush=True)
    sweeper = asyncio.get_running_loop().create_task(_sweep_raises(rt, gw), name="llmgw-raise-expiry")
    try:
        yield
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper


async def _sweep_raises(rt: AdminRuntime, gw: Gateway) -> None:
    """Take back approved raises when their time is up (idempotent across proxies)."""
    while True:
        try:
            await rt.change(gw, lambda state: (expired_raises(state, int(time.time() * 1000)), None))
        except asyncio.CancelledError:
            raise
        except Exception as exc:    # top of a background loop: log and try again next tick
            log.error("raise expiry: %r", exc, extra={"event": "raise_expiry_error"})
        await asyncio.sleep(SWEEP_INTERVAL_S)


# -- handler helpers -------------------------------------------------------------------------
def gateway(request: web.Request) -> Gateway:
    return request.app[GATEWAY]


def admin_of(request: web.Request) -> AdminPrincipal:
    token = presented_key(request.headers)
    if not token:
        raise AuthError("missing admin credential: send it as `Authorization: Bearer ...` or `x-api-key`")
    return request.app[ADMIN].authenticate(gateway(request).config, token)


async def change(request: web.Request, compute: Callable[[ConfigState], tuple[list[ConfigRecord], T]]) -> T:
    return await request.app[ADMIN].change(gateway(request), compute)


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        raw = await request.read()
    except RequestPayloadError as exc:
        raise unreadable_body(request, exc) from None
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def reason_of(request: web.Request, body: dict[str, Any] | None = None) -> str:
    """Why: the body's ``reason``, else the ``x-llmgw-reason`` header, else the ``reason`` query."""
    return str((body or {}).get("reason") or request.headers.get("x-llmgw-reason")
               or request.query.get("reason") or "")


def reply(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def now_ms() -> int:
    return int(time.time() * 1000)
