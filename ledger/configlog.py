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
from pathlib import Path
from typing import Callable, Protocol

from llmgw.core.config import ConfigRecord, ConfigState


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
        """The file work (lock, write, fsync) runs in a thread: the event loop never waits on the disk."""
        await asyncio.to_thread(self.append_sync, rec)

    def _appended(self) -> tuple[bytes, int]:
        """The complete lines past our offset and where they end; a torn last line waits for its newline."""
        if not self.path.exists():
            return b"", self._offset
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n")
        return (b"", self._offset) if end < 0 else (data[: end + 1], self._offset + end + 1)

    def _apply(self, state: ConfigState, lines: bytes, offset: int) -> int:
        n = 0
        for line in lines.splitlines():
            if line.strip():
                state.apply(ConfigRecord.decode(line))
                n += 1
        self._offset = offset
        return n

    def read_new(self, state: ConfigState) -> int:
        """Apply complete lines past our offset; a torn last line waits for its newline."""
        return self._apply(state, *self._appended())

    def load_sync(self) -> ConfigState:
        state = ConfigState()
        self._offset = 0
        self.read_new(state)
        return state

    async def load(self) -> ConfigState:
        return await asyncio.to_thread(self.load_sync)

    async def follow(self, state: ConfigState, on_change: Callable[[], None],
                     interval_s: float = 0.25) -> None:
        """Reads what was appended in a thread; applies it on the loop, where requests read ``state``."""
        while True:
            if self._apply(state, *await asyncio.to_thread(self._appended)):
                on_change()
            await asyncio.sleep(interval_s)


def open_config_log(data_dir: str, kafka_bootstrap: str = "", topic_prefix: str = "llmgw") -> ConfigLog:
    if kafka_bootstrap:
        from .kafka_config import KafkaConfigLog
        return KafkaConfigLog(kafka_bootstrap, f"{topic_prefix}.config")
    return FileConfigLog(Path(data_dir) / "config.jsonl")
