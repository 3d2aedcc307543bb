"""The ops part's state on the app: metrics, failure policy, the gateway it watches."""
from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Callable

from aiohttp import web

from ledger.events import UsageEvent

from ..context import Gateway
from .failure import FailurePolicy
from .health import LedgerState, ledger_state, snapshot_age_s
from .metrics import Metrics

log = logging.getLogger("llmgw.ops")

# The usage events submitted while serving the current request (set by the ops middleware).
REQUEST_EVENTS: ContextVar[list[UsageEvent] | None] = ContextVar("llmgw_request_events", default=None)

EventHook = Callable[[UsageEvent], None]


class Ops:
    def __init__(self) -> None:
        self.metrics = Metrics(self.ledger_state)
        self.failure = FailurePolicy()
        self.gateway: Gateway | None = None
        self.snapshot_max_age_s = 30.0
        self.hooks: list[EventHook] = []

    def bind(self, gw: Gateway) -> None:
        self.gateway = gw
        self.failure = FailurePolicy.from_config(gw.settings.file_config)
        self.snapshot_max_age_s = gw.settings.snapshot_max_age_s

    def snapshot_age_s(self) -> float:
        assert self.gateway is not None
        return snapshot_age_s(self.gateway.ledger)

    def ledger_state(self) -> LedgerState | None:
        gw = self.gateway
        return None if gw is None else ledger_state(gw.ledger, True, self.snapshot_max_age_s)

    def on_event(self, ev: UsageEvent) -> None:
        """Called synchronously for every event the ledger takes; must never raise into the caller."""
        try:
            slot = REQUEST_EVENTS.get()
            if slot is not None:
                slot.append(ev)
            self.metrics.observe_event(ev)
            for hook in self.hooks:
                hook(ev)
        except Exception:   # observability must not break metering; log loudly and go on
            log.exception("observing a usage event failed", extra={"event": "ops_observe_error"})


OPS = web.AppKey("llmgw_ops", Ops)
