"""Configuration as records: one ``ConfigRecord`` per change, folded into a ``ConfigState``.

The logs that carry them (a file, a Kafka topic) live in ``ledger.configlog``; these plain
types are what every layer reads."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

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
