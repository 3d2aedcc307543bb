"""The ops part's state on the app: metrics, and the gateway it watches."""
from __future__ import annotations

import logging
from typing import Callable

from aiohttp import web

from llmgw.core.events import UsageEvent

from ..context import Gateway
from .health import LedgerState, ledger_state
from .metrics import Metrics

log = logging.getLogger("llmgw.ops")

EventHook = Callable[[UsageEvent], None]


class Ops:
    def __init__(self) -> None:
        self.metrics = Metrics(self.ledger_state, lambda: self.gateway.policy.holds if self.gateway else None)
        self.gateway: Gateway | None = None
        self.snapshot_max_age_s = 30.0
        self.hooks: list[EventHook] = []

    def bind(self, gw: Gateway) -> None:
        self.gateway = gw
        self.snapshot_max_age_s = gw.settings.snapshot_max_age_s

    def ledger_state(self) -> LedgerState | None:
        gw = self.gateway
        return None if gw is None else ledger_state(gw.ledger.health(), True, self.snapshot_max_age_s)

    def on_event(self, ev: UsageEvent) -> None:
        """An observer of the gateway (``Gateway.observers``): shown every usage event
        synchronously, so it must never raise into the call that emitted it."""
        try:
            self.metrics.observe_event(ev)
            for hook in self.hooks:
                hook(ev)
        except Exception:   # observability must not break metering; log loudly and go on
            log.exception("observing a usage event failed", extra={"event": "ops_observe_error"})


OPS = web.AppKey("llmgw_ops", Ops)
