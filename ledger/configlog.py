"""Configuration as events: keys, budgets, defaults, exceptions.

Every change is one record ``{"id", "type", "data", "ts_ms", "actor"}``; the
latest record of an id wins and ``data: null`` deletes it (Kafka compaction
semantics). Embedded mode appends to ``<data_dir>/config.jsonl``; Kafka mode
uses a compacted topic. Proxies follow the log, so a ``llmgw keys create`` in
another process reaches every proxy without a database to keep in sync.
"""
from __future__ import annotations

import asyncio
import fcntl
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import orjson


@dataclass(frozen=True, slots=True)
class ConfigRecord:
    id: str                   # "<type>:<name>", the compaction key
    type: str
    data: dict[str, Any] | None
    ts_ms: int
    actor: str = ""
    reason: str = ""

    def encode(self) -> bytes:
        return orjson.dumps({"id": self.id, "type": self.type, "data": self.data,
                             "ts_ms": self.ts_ms, "actor": self.actor, "reason": self.reason})

    @classmethod
    def decode(cls, raw: bytes) -> "ConfigRecord":
        d = orjson.loads(raw)
        return cls(d["id"], d["type"], d.get("data"), int(d.get("ts_ms", 0)),
                   d.get("actor", ""), d.get("reason", ""))

    @classmethod
    def put(cls, type_: str, name: str, data: dict[str, Any] | None, actor: str = "cli",
            reason: str = "") -> "ConfigRecord":
        return cls(f"{type_}:{name}", type_, data, int(time.time() * 1000), actor, reason)


@dataclass
class ConfigState:
    """Latest data per id, plus listeners that rebuild indexes on change."""

    records: dict[str, ConfigRecord] = field(default_factory=dict)
    version: int = 0

    def apply(self, rec: ConfigRecord) -> None:
        if rec.data is None:
            self.records.pop(rec.id, None)
        else:
            self.records[rec.id] = rec
        self.version += 1

    def of_type(self, type_: str) -> list[ConfigRecord]:
        return [r for r in self.records.values() if r.type == type_]

    def get(self, type_: str, name: str) -> ConfigRecord | None:
        return self.records.get(f"{type_}:{name}")


class ConfigLog(Protocol):
    async def append(self, rec: ConfigRecord) -> None: ...
    async def load(self) -> ConfigState: ...
    async def follow(self, state: ConfigState, on_change: Callable[[], None],
                     interval_s: float = 0.25) -> None: ...


class FileConfigLog:
    """Append-only JSON lines, fsync'd, under an exclusive flock for writers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def append_sync(self, rec: ConfigRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                f.write(rec.encode() + b"\n")
                f.flush()
                os.fsync(f.fileno())
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    async def append(self, rec: ConfigRecord) -> None:
        self.append_sync(rec)

    def read_new(self, state: ConfigState) -> int:
        """Apply complete lines past our offset; a torn last line waits for its newline."""
        if not self.path.exists():
            return 0
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n")
        if end < 0:
            return 0
        n = 0
        for line in data[: end + 1].splitlines():
            if line.strip():
                state.apply(ConfigRecord.decode(line))
                n += 1
        self._offset += end + 1
        return n

    def load_sync(self) -> ConfigState:
        state = ConfigState()
        self._offset = 0
        self.read_new(state)
        return state

    async def load(self) -> ConfigState:
        return self.load_sync()

    async def follow(self, state: ConfigState, on_change: Callable[[], None],
                     interval_s: float = 0.25) -> None:
        while True:
            if self.read_new(state):
                on_change()
            await asyncio.sleep(interval_s)


def open_config_log(data_dir: str, kafka_bootstrap: str = "", topic_prefix: str = "llmgw") -> ConfigLog:
    if kafka_bootstrap:
        from .kafka_config import KafkaConfigLog
        return KafkaConfigLog(kafka_bootstrap, f"{topic_prefix}.config")
    return FileConfigLog(Path(data_dir) / "config.jsonl")
