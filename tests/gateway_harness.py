"""A real gateway in the test process: the real app on a loopback port,
the embedded ledger on a temp dir, upstreams pointed at the fake provider."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from llmgw.core.config import ConfigRecord
from llmgw.ledger.configlog import FileConfigLog
from llmgw.ledger.embedded import EmbeddedLedger, log_events
from llmgw.core.events import UsageEvent
from llmgw.proxy import keys as K
from llmgw.proxy.app import create_app
from llmgw.core.budgets import Budget, usd_to_micro
from llmgw.proxy.context import GATEWAY, Gateway
from llmgw.core.settings import Settings


class GatewayHarness:
    def __init__(self, fake: Any, data_dir: Path, ledger: Any = None, transport: Any = None, **overrides: Any) -> None:
        self.fake = fake
        self.data_dir = data_dir
        # analytics_process=False: a test's analytics share the session's chDB engine in this process
        # (tests/fixtures/chdb.py); tests/test_analytics_process.py runs the separate process.
        values = dict(host="127.0.0.1", port=0, data_dir=str(data_dir), analytics=False, analytics_process=False,
                      openai_base_url=fake.openai_base_url, openai_api_key=fake.openai_key,
                      anthropic_base_url=fake.anthropic_base_url, anthropic_api_key=fake.anthropic_key,
                      gateway_id="test-gw")
        values.update(overrides)
        self.settings = Settings(**values)
        self._ledger = ledger
        self._transport = transport      # None: the network (proxy/transport.py)
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        self.app = create_app(self.settings, ledger=self._ledger, transport=self._transport)
        self.runner = web.AppRunner(self.app, handler_cancellation=True)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def __aenter__(self) -> "GatewayHarness":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def gw(self) -> Gateway:
        return self.app[GATEWAY]

    def _put(self, rec: ConfigRecord) -> None:
        FileConfigLog(self.data_dir / "config.jsonl").append_sync(rec)
        self.gw.config.apply(rec)      # visible at once; the follower re-reads it idempotently
        self.gw.config_changed()

    def key(self, org: str = "acme", workspace: str = "backend", user: str = "alice", **kw: Any) -> tuple[str, str]:
        key, rec = K.mint(org, workspace, user, **kw)
        self._put(rec)
        return key, rec.data["key_id"]  # type: ignore[index]

    def budget(self, scope: str, window: str, usd: str, **kw: Any) -> Budget:
        kind, name = scope.split(":", 1)
        b = Budget(kind, name, window, usd_to_micro(usd), **kw)
        self._put(b.record())
        return b

    async def events(self) -> list[UsageEvent]:
        await self.gw.ledger.flush()  # type: ignore[attr-defined]
        return log_events(self.data_dir / "ledger" / "events.log")
