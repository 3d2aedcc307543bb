"""The alert evaluator and its two drivers.

``AlertEngine`` is one evaluator: every ``interval_s`` it reads the folded
spend (a ``Mapping[str, Totals]``) and the config state, evaluates the keys
whose totals changed since the last tick (all keys every ``sweep_s`` and after
a config change, since runway depends on the clock), writes the new alert
records to its store, and only then hands them to the ``Deliverer``.

Drivers (``supervise`` restarts an evaluator whose store failed; a fenced one
stops for good):

- embedded: ``proxy.parts.alerts_ctx`` runs the
  engine inside ``llmgw serve`` on the embedded ledger's view, with
  ``FileAlertStore`` in ``<data_dir>/alerts``; in Kafka mode it does nothing.
- Kafka: ``run_kafka`` (``llmgw alerts run``) follows ``{prefix}.snapshots``
  with the proxies' ``SnapshotFollower`` and the config topic, waits until the
  snapshot is caught up, and keeps its state in ``{prefix}.alerts``. Run one;
  a second one fences the first (which then exits), so a standby can take over.

Options come from the ``alerts:`` section of the config file
(``AlertOptions.from_file_config``); per-budget thresholds from config records
(``ledger.alerts.PolicyBook``); webhooks from config records
(``ledger.webhooks.Webhook``).
"""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from aiokafka.errors import KafkaError

from llmgw.core.budgets import BudgetBook

from .alert_store import (DROPPED, FIRED, PENDING, SUPERSEDED, AlertRecord, AlertStore, AlertStoreError,
                          AlertStoreFenced, Delivery, KafkaAlertStore)
from .alerts import Alert, AlertPolicy, PolicyBook, evaluate, subjects_of
from llmgw.core.config import ConfigState
from .fold import Totals, TzOf, utc
from .webhooks import WEBHOOK_TYPE, Deliverer, RetryPolicy, Webhook

if TYPE_CHECKING:
    from llmgw.core.settings import Settings

log = logging.getLogger("llmgw.ledger.alerts")

_CHUNK_KEYS = 1000     # keys evaluated between two yields to the event loop (~5-15 ms of CPU)


def now_ms() -> int:
    return int(time.time() * 1000)


# -- options -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AlertOptions:
    enabled: bool = True
    interval_s: float = 1.0
    sweep_s: float = 60.0
    policy: AlertPolicy = field(default_factory=AlertPolicy)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # alerts of windows closed longer ago than this are dropped from the store (never needed again:
    # a closed window cannot fire); deliveries still pending are kept until they end
    retain_closed_s: float = 7 * 86_400.0

    @classmethod
    def from_file_config(cls, file_config: Mapping[str, Any]) -> "AlertOptions":
        """The config file's ``alerts:`` section (every key optional; see docs/alerts.md)."""
        d = file_config.get("alerts") or {}
        if not isinstance(d, Mapping):
            raise ValueError("config file: `alerts` must be a mapping")
        base, r = cls(), RetryPolicy()
        retry = RetryPolicy(float(d.get("delivery_timeout_s", r.timeout_s)), float(d.get("retry_backoff_s", r.backoff_s)),
                            float(d.get("retry_max_backoff_s", r.max_backoff_s)),
                            float(d.get("give_up_after_s", r.give_up_after_s)))
        return cls(bool(d.get("enabled", base.enabled)), float(d.get("interval_s", base.interval_s)),
                   float(d.get("sweep_s", base.sweep_s)), AlertPolicy.from_mapping(d), retry,
                   float(d.get("retain_closed_s", base.retain_closed_s)))


# -- the engine ----------------------------------------------------------------------------------
class AlertEngine:
    def __init__(self, store: AlertStore, options: AlertOptions, tz_of: TzOf = utc,
                 clock_ms: Callable[[], int] = now_ms) -> None:
        self.store = store
        self.options = options
        self.tz_of = tz_of
        self.clock_ms = clock_ms
        self.deliverer = Deliverer(options.retry, self._on_result, clock_ms=clock_ms, on_attempt=self._on_attempt)
        self.records: dict[str, AlertRecord] = {}
        self.ticks = 0
        self.errors = 0
        self._fired: dict[str, int] = {}           # alert key -> the limit it fired at
        self._seen: dict[str, Totals] = {}         # totals as of the last tick (identity = unchanged)
        self._config_version = -1
        self._last_sweep_ms = 0
        self._book = BudgetBook([])
        self._policies = PolicyBook(ConfigState(), options.policy)
        self._webhooks: dict[str, Webhook] = {}
        self._key_orgs: dict[str, str] = {}
        self._resumed = False
        self._failure: AlertStoreError | None = None

    async def start(self) -> None:
        self.records = await self.store.open()
        self._fired = {k: r.alert.limit_micro_usd for k, r in self.records.items()}
        await self.deliverer.start()

    async def stop(self, grace_s: float = 5.0) -> None:
        try:
            await self.deliverer.stop(grace_s)
        finally:
            await self.store.close()

    # -- one evaluation --------------------------------------------------------------------------
    async def tick(self, totals: Mapping[str, Totals], config: ConfigState) -> list[AlertRecord]:
        """Evaluate, persist new alerts, then deliver them; returns the records written."""
        now = self.clock_ms()
        sweep = self._sync_config(config) or now - self._last_sweep_ms >= self.options.sweep_s * 1000
        if not self._resumed:
            await self._resume()
        keys = list(totals) if sweep else [k for k, t in totals.items() if self._seen.get(k) is not t]

        def spent_of(key: str) -> int:
            t = totals.get(key)
            return t.spend_micro_usd if t is not None else 0

        fire: list[Alert] = []
        superseded: list[Alert] = []
        seen: dict[str, Totals] = {}                # each key's totals as evaluated
        for i in range(0, len(keys), _CHUNK_KEYS):
            if i:
                await asyncio.sleep(0)              # a sweep of a big snapshot must not stall the gateway
            chunk = [k for k in keys[i:i + _CHUNK_KEYS] if k in totals]
            found = evaluate(subjects_of(chunk, self._book, now, self.tz_of, self._key_orgs), spent_of,
                             self._fired, self._policies.of, now)
            fire += found.fire
            superseded += found.superseded
            seen.update((k, totals[k]) for k in chunk)
        hooks = list(self._webhooks.values())
        new = ([AlertRecord(a, FIRED, tuple(Delivery(h.id) for h in hooks)) for a in fire]
               + [AlertRecord(a, SUPERSEDED) for a in superseded])
        await self.store.put(new)                   # durable before anyone hears of it
        for rec in new:
            self.records[rec.key] = rec
            self._fired[rec.key] = rec.alert.limit_micro_usd
        for a in fire:
            log.info("alert %s: %s", a.key, a.message,
                     extra={"event": "alert_fired", "budget_id": a.budget_id, "webhooks": len(hooks)})
            for h in hooks:
                self.deliverer.submit(a, h)
        if sweep:
            self._seen = seen
            self._last_sweep_ms = now
            await self._prune(now)
        else:
            self._seen.update(seen)
        self.ticks += 1
        return new

    async def run(self, totals_of: Callable[[], Mapping[str, Totals]], config: ConfigState,
                  ready: Callable[[], bool] = lambda: True) -> None:
        """Tick every ``interval_s`` once ``ready()``; returns only by raising (store failure) or cancel."""
        while True:
            if self._failure is not None:
                raise self._failure
            if ready():
                try:
                    await self.tick(totals_of(), config)
                except AlertStoreError:
                    raise
                except Exception:   # top of a background loop: log, count, go on
                    self.errors += 1
                    log.exception("alert evaluation failed", extra={"event": "alert_eval_error"})
            await asyncio.sleep(self.options.interval_s)

    # -- config and deliveries --------------------------------------------------------------------
    def _sync_config(self, config: ConfigState) -> bool:
        if config.version == self._config_version:
            return False
        self._config_version = config.version
        self._book = BudgetBook.from_state(config)
        self._policies = PolicyBook(config, self.options.policy)
        self._webhooks = {w.id: w for w in (Webhook.from_record(r) for r in config.of_type(WEBHOOK_TYPE))}
        self._key_orgs = {str(r.data["key_id"]): str(r.data.get("org", ""))
                          for r in config.of_type("key") if r.data and "key_id" in r.data}
        return True

    async def _resume(self) -> None:
        """Deliveries a previous evaluator recorded as pending: deliver them now (at-least-once)."""
        self._resumed = True
        dropped: list[AlertRecord] = []
        for rec in list(self.records.values()):
            if rec.status != FIRED or not rec.pending:
                continue
            made = {d.webhook_id: d.attempts for d in rec.deliveries}
            for wid in rec.pending:
                hook = self._webhooks.get(wid)
                if hook is not None:
                    self.deliverer.submit(rec.alert, hook, made.get(wid, 0))
                else:
                    rec = rec.with_delivery(Delivery(wid, DROPPED, error="webhook removed", done_ms=self.clock_ms()))
            if rec is not self.records[rec.key]:
                self.records[rec.key] = rec
                dropped.append(rec)
        await self.store.put(dropped)

    async def _prune(self, now: int) -> None:
        """Forget alerts of windows closed over ``retain_closed_s`` ago whose deliveries have ended."""
        cutoff = now - int(self.options.retain_closed_s * 1000)
        old = [k for k, r in self.records.items()
               if 0 < r.alert.window_end_ms < cutoff and not (r.status == FIRED and r.pending)]
        if not old:
            return
        await self.store.forget(old)
        for k in old:
            self.records.pop(k, None)
            self._fired.pop(k, None)
        log.info("forgot %d alerts of windows closed over %.0f s ago", len(old), self.options.retain_closed_s,
                 extra={"event": "alerts_pruned"})

    async def _on_attempt(self, alert: Alert, hook: Webhook, attempt: int) -> None:
        """Before an attempt goes out: its number is durable, so a crash does not restart the count
        (an attempt cut by the crash counts: the receiver may have had it)."""
        rec = self.records.get(alert.key)
        if rec is None or rec.alert != alert:
            return
        rec = rec.with_delivery(Delivery(hook.id, PENDING, attempt))
        self.records[alert.key] = rec
        try:
            await self.store.put([rec])
        except AlertStoreError as exc:
            log.error("alert %s: attempt %d to webhook %s not recorded (%r)", alert.key, attempt, hook.id, exc,
                      extra={"event": "alert_attempt_unrecorded"})
            self._failure = exc

    async def _on_result(self, alert: Alert, hook: Webhook, result: Delivery) -> None:
        rec = self.records.get(alert.key)
        if rec is None or rec.alert != alert:       # re-armed and fired again meanwhile: that one is newer
            return
        rec = rec.with_delivery(result)
        self.records[alert.key] = rec
        try:
            await self.store.put([rec])
        except AlertStoreError as exc:
            log.error("alert %s: delivery result not recorded (%r); it is delivered again after a restart",
                      alert.key, exc, extra={"event": "alert_result_unrecorded"})
            self._failure = exc


# -- drivers -------------------------------------------------------------------------------------
@dataclass
class AlertsSlot:
    """The running engine, for tests and ops pages (None while (re)starting)."""
    engine: AlertEngine | None = None
    starts: int = 0


async def supervise(make_engine: Callable[[], AlertEngine], totals_of: Callable[[], Mapping[str, Totals]],
                    config: ConfigState, ready: Callable[[], bool] = lambda: True,
                    slot: AlertsSlot | None = None, retry_s: float = 1.0, max_retry_s: float = 60.0) -> None:
    """Run an engine until cancelled; a store failure restarts it (reopen = relock/refence + read back)."""
    backoff = retry_s
    while True:
        engine = make_engine()
        try:
            await engine.start()
            if slot is not None:
                slot.engine = engine
                slot.starts += 1
            backoff = retry_s
            await engine.run(totals_of, config, ready)
        except AlertStoreFenced:
            log.critical("another alert evaluator took over; this one stops", extra={"event": "alerts_fenced"})
            raise
        except (AlertStoreError, KafkaError, OSError) as exc:
            log.error("alert evaluator: %r; restarting in %.1fs", exc, backoff, extra={"event": "alerts_restart"})
        finally:
            if slot is not None:
                slot.engine = None
            try:
                async with asyncio.timeout(10.0):
                    await engine.stop()
            except Exception as exc:   # cleanup must not hide why we are leaving
                log.warning("alert evaluator did not stop cleanly: %r", exc)
        await asyncio.sleep(backoff)
        backoff = min(max_retry_s, backoff * 2)


def org_tz_of(settings: "Settings") -> TzOf:
    orgs = dict(settings.file_config).get("orgs") or {}
    zones = {name: str(o.get("timezone", "UTC")) for name, o in orgs.items() if isinstance(o, dict)}
    return lambda org: zones.get(org, "UTC")


async def run_kafka(settings: "Settings", stop: asyncio.Event | None = None,
                    slot: AlertsSlot | None = None) -> int:
    """``llmgw alerts run``: evaluate the snapshot topic until ``stop`` is set; 1 if fenced."""
    from .configlog import open_config_log
    from .kafka_ledger import SnapshotFollower
    from .spend import SpendView
    from .topics import Topics

    options = AlertOptions.from_file_config(settings.file_config)
    tz_of = org_tz_of(settings)
    bootstrap, prefix = settings.kafka_bootstrap, settings.topic_prefix
    stop = stop or asyncio.Event()
    view = SpendView(tz_of=tz_of)
    follower = SnapshotFollower(bootstrap, Topics(prefix).snapshots, view, client_id="llmgw-alerts-snapshots")
    config_log = open_config_log(settings.data_dir, bootstrap, prefix)
    state = await config_log.load()
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(follower.run(), name="llmgw-alerts-snapshots"),
             loop.create_task(config_log.follow(state, lambda: None), name="llmgw-alerts-config")]

    def make() -> AlertEngine:
        return AlertEngine(KafkaAlertStore(bootstrap, f"{prefix}.alerts", f"{prefix}-alerts"), options, tz_of)

    evaluator = loop.create_task(supervise(make, lambda: view.folded, state, lambda: follower.snapshot_ready, slot),
                                 name="llmgw-alerts")
    stopper = loop.create_task(stop.wait())
    try:
        await asyncio.wait([evaluator, stopper], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (evaluator, stopper, *tasks):
            t.cancel()
        results = await asyncio.gather(evaluator, stopper, *tasks, return_exceptions=True)
        await follower.close()
    return 1 if isinstance(results[0], AlertStoreFenced) else 0


def main_kafka(settings: "Settings") -> int:
    """``llmgw alerts run`` until SIGINT/SIGTERM: 0 after a clean stop, 1 if fenced, 2 without Kafka."""
    from .kafka_config import ConfigLogUnavailable

    async def _run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await run_kafka(settings, stop)
    try:
        return asyncio.run(_run())
    except ConfigLogUnavailable as exc:
        log.error("alerts: %s", exc)
        return 2


__all__ = ["AlertEngine", "AlertOptions", "AlertsSlot", "main_kafka", "run_kafka", "supervise"]
