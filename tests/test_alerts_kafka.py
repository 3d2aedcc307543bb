"""The Kafka alert driver on the real broker: snapshot-format records in, one delivery out, across a
restart of the evaluator and against a second evaluator started beside the first."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from llmgw.ledger.alert_store import DELIVERED, FIRED, read_alert_topic
from llmgw.ledger.alerting import AlertsSlot, run_kafka
from llmgw.ledger.fold import Totals
from llmgw.core.spend_keys import spend_key
from llmgw.ledger.kafka_config import KafkaConfigLog
from llmgw.ledger.topics import encode_progress, encode_snapshot, progress_key
from llmgw.ledger.webhooks import Webhook
from llmgw.core.windows import window_bounds
from llmgw.core.budgets import Budget
from llmgw.core.settings import Settings
from tests.fixtures.kafka import create_topics, unique_topic
from tests.test_alerts_delivery import Receiver, eventually

pytestmark = pytest.mark.kafka

FAST = {"alerts": {"runway": False, "interval_s": 0.05, "retry_backoff_s": 0.05, "retry_max_backoff_s": 0.2}}


class Deployment:
    """A unique topic prefix with a snapshot topic, a budget and a webhook in its config topic."""

    def __init__(self, bootstrap: str, data_dir: Path) -> None:
        self.bootstrap = bootstrap
        self.prefix = unique_topic("alerts")
        self.settings = Settings(kafka_bootstrap=bootstrap, topic_prefix=self.prefix, data_dir=str(data_dir),
                                 file_config=FAST)
        now = int(time.time() * 1000)
        self.key = spend_key("workspace", "acme/backend", "month", window_bounds("month", now)[0])
        self.offset = 0
        self.running: list[tuple[asyncio.Event, asyncio.Task[int]]] = []

    async def setup(self, receiver_url: str) -> None:
        await create_topics(self.bootstrap, {f"{self.prefix}.snapshots": 2}, compacted={f"{self.prefix}.snapshots"})
        config = KafkaConfigLog(self.bootstrap, f"{self.prefix}.config")
        await config.append(Budget("workspace", "backend", "month", 100_000_000).record())
        await config.append(Webhook.new(receiver_url, "json", "ops").record())

    async def spend(self, micro_usd: int, partition: int = 1) -> None:
        """What the ledger worker writes after folding: the key's new totals and a progress record."""
        self.offset += 1
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await producer.start()
        try:
            topic = f"{self.prefix}.snapshots"
            await producer.send_and_wait(topic, encode_snapshot(Totals(spend_nano_usd=micro_usd * 1000, requests=1, input_tokens=0, output_tokens=0), partition, self.offset),
                                         key=self.key.encode(), partition=partition)
            await producer.send_and_wait(topic, encode_progress(partition, self.offset),
                                         key=progress_key(partition).encode(), partition=partition)
        finally:
            await producer.stop()

    def start(self, slot: AlertsSlot) -> tuple[asyncio.Event, asyncio.Task[int]]:
        stop = asyncio.Event()
        task = asyncio.get_running_loop().create_task(run_kafka(self.settings, stop, slot))
        self.running.append((stop, task))
        return stop, task

    async def close(self) -> None:
        """Stop every evaluator still running (a failed test must not leave them behind)."""
        for stop, task in self.running:
            stop.set()
        await asyncio.wait_for(asyncio.gather(*(t for _, t in self.running), return_exceptions=True), 30)


async def ticks(slot: AlertsSlot, n: int) -> None:
    await eventually(lambda: slot.engine is not None, 60, "the evaluator to start")
    engine = slot.engine
    assert engine is not None
    t0 = engine.ticks
    await eventually(lambda: engine.ticks >= t0 + n, 30, "evaluator ticks")
    await eventually(lambda: engine.deliverer.in_flight == 0, 30, "deliveries")


async def test_kafka_evaluator_fires_once_across_a_restart(kafka_bootstrap, tmp_path):
    receiver = await Receiver().start()
    d = Deployment(kafka_bootstrap, tmp_path)
    try:
        await d.setup(receiver.url)
        await d.spend(40_000_000)
        await d.spend(91_000_000)
        slot = AlertsSlot()
        stop, task = d.start(slot)
        await eventually(lambda: receiver.bodies, 60, "the 90% alert")
        await ticks(slot, 3)
        stop.set()
        assert await task == 0
        assert receiver.thresholds() == [90]                       # 50 and 75 superseded by the jump
        stored = await read_alert_topic(kafka_bootstrap, f"{d.prefix}.alerts")
        (rec,) = [r for r in stored.values() if r.status == FIRED]
        assert rec.alert.threshold_pct == 90 and rec.deliveries[0].status == DELIVERED

        await d.spend(95_000_000)                                  # more spend, below 100%, while it was down
        slot = AlertsSlot()
        stop, task = d.start(slot)
        await ticks(slot, 5)
        assert receiver.thresholds() == [90]                       # nothing again after the restart
        await d.spend(100_000_000)
        await eventually(lambda: len(receiver.bodies) == 2, 30, "the 100% alert")
        await ticks(slot, 3)
        stop.set()
        assert await task == 0
        assert receiver.thresholds() == [90, 100]
    finally:
        await d.close()
        await receiver.stop()


async def test_a_second_evaluator_fences_the_first_and_the_alert_fires_once(kafka_bootstrap, tmp_path):
    receiver = await Receiver().start()
    d = Deployment(kafka_bootstrap, tmp_path)
    try:
        await d.setup(receiver.url)
        await d.spend(10_000_000)
        first_slot, second_slot = AlertsSlot(), AlertsSlot()
        stop1, first = d.start(first_slot)
        await ticks(first_slot, 2)
        stop2, second = d.start(second_slot)                        # a standby taking over
        await ticks(second_slot, 2)
        await d.spend(92_000_000)                                   # both see it; only one may write
        await eventually(lambda: first.done(), 30, "the fenced evaluator to exit")
        assert first.result() == 1
        await eventually(lambda: receiver.bodies, 30, "the 90% alert")
        await ticks(second_slot, 3)
        stop2.set()
        assert await second == 0
        assert receiver.thresholds() == [90]
        assert {i for _, i, _ in receiver.attempts} == {receiver.bodies[0]["id"]}
    finally:
        await d.close()
        await receiver.stop()


async def test_forgotten_alerts_are_tombstoned_on_the_alert_topic(kafka_bootstrap):
    from llmgw.ledger.alert_store import AlertRecord, KafkaAlertStore
    from llmgw.ledger.alerts import Alert

    def alert_for_store(i: int) -> Alert:
        return Alert(f"b{i}|0|90", "threshold", 90, f"b{i}", "config", "budget", "$1/month", "refuse",
                     "workspace acme/backend", "workspace", "acme/backend", "acme", "month", 0, 1_000, "UTC",
                     900_000, 1_000_000, 0, 500, "90% used")

    topic = f"{unique_topic('alerts')}.alerts"
    store = KafkaAlertStore(kafka_bootstrap, topic, f"{topic}-txn")
    assert await store.open() == {}
    try:
        old, new = (AlertRecord(alert_for_store(i), FIRED) for i in (1, 2))
        await store.put([old, new])
        await store.forget([old.key])
    finally:
        await store.close()
    assert list(await read_alert_topic(kafka_bootstrap, topic)) == [new.key]
