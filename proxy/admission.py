"""Admission for one call (HTTP, or a WebSocket turn; see call.py): the policy's check, wired to pricing and routing.

``admit`` computes the call's holds in money (worst case and predicted) and
its worst case in tokens, has the
policy hold it against every budget and rate limit, lets a budget at its cap
downgrade the call to a cheaper model of the same API, and sleeps through a
booked rate-limit wait when the caller asked to queue (``x-llmgw-wait``).

Only a downgrade touches the body: every wire API names the model in the
top-level ``model`` field, so that one field is rewritten (parse and
re-serialize, in that case only); everything else travels untouched.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from llmgw.pricing import Price, RequestShape

from .errors import GatewayError
from llmgw.core.principal import Principal
from .policy import Estimate, Reservation
from .ratelimit import worst_case_tokens
from .routing import Target
from .types import Call

if TYPE_CHECKING:
    from .context import Gateway


@dataclass(frozen=True, slots=True)
class Admitted:
    reservation: Reservation
    call: Call                     # what goes upstream (a downgrade names the cheaper model)
    target: Target
    price: Price
    price_estimated: bool

    @property
    def downgraded(self) -> bool:
        return bool(self.reservation.model)


async def admit(gw: "Gateway", request: web.Request, principal: Principal, family: str, call: Call,
                shape: RequestShape, target: Target, price: Price, price_estimated: bool,
                now_ms: int) -> Admitted:
    """Raises ``BudgetExceeded`` / ``RateLimited`` before anything is held or forwarded."""
    policy = gw.policy
    alternatives: dict[str, tuple[Target, Price, bool]] = {}

    def cheaper(model: str) -> Estimate | None:
        if not policy.access.allowed(principal, model):
            return None
        try:
            t = gw.routing.resolve(family, model)
            pr, est = gw.price(t, model, now_ms)
            amount = policy.estimate(principal, model, pr, shape, call.tags, now_ms)
        except (GatewayError, ValueError):
            return None
        alternatives[model] = (t, pr, est)
        return amount

    estimate = policy.estimate(principal, call.model, price, shape, call.tags, now_ms)
    r = policy.reserve(principal, call.tags, estimate, now_ms,
                       tokens=worst_case_tokens(price, shape), downgrade=cheaper,
                       max_wait_ms=policy.waits.allowance_ms(request.headers))
    await policy.waits.wait(policy, r)              # a caller that leaves meanwhile gives it all back
    if not r.model:
        return Admitted(r, call, target, price, price_estimated)
    t, pr, est = alternatives[r.model]
    return Admitted(r, replace(call, model=r.model, body=with_model(call.body, r.model)), t, pr, est)


def with_model(body: bytes, model: str) -> bytes:
    obj = orjson.loads(body)
    obj["model"] = model
    return orjson.dumps(obj)
