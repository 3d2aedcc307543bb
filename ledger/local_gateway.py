"""The ``llmgw serve`` that holds a data dir, found by the CLI so commands go through it.

Why: a running embedded gateway holds chDB's file lock (``llmgw spend`` could
not open the store beside it) and follows the config log on a timer (a key
minted by ``llmgw keys create`` was refused for up to half a second). So
``serve`` writes ``<data_dir>/gateway.json`` (mode 0600): its admin URL, its
pid and a random local token. The token authenticates as an owner on the
admin API (``via="cli"``). It grants nothing more than the data dir itself
does, since whoever can read that file can also append to ``config.jsonl``.
The file is removed at a clean stop; a stale one (its pid gone) is ignored.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable

import orjson

from llmgw.ledger.configlog import ConfigLog, open_config_log
from llmgw.core.config import ConfigRecord, ConfigState

from llmgw.core.settings import Settings

FILE_NAME = "gateway.json"
TOKEN_PREFIX = "llmgw-local-"
STARTING_WAIT_S = 15.0          # a gateway that wrote its file may not listen yet


class GatewayRefused(Exception):
    """The running gateway answered with an error (its message is the admin API's)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def discovery_path(data_dir: str) -> Path:
    return Path(data_dir) / FILE_NAME


def listen_url(host: str, port: int) -> str:
    """The address a local CLI reaches the gateway on (a wildcard bind is reached on loopback)."""
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def publish(settings: Settings) -> tuple[str, Callable[[], None]]:
    """Write the discovery file; returns the token and a function that removes the file."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    path = discovery_path(settings.data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{FILE_NAME}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(orjson.dumps({"url": listen_url(settings.host, settings.port), "pid": os.getpid(),
                              "host": socket.gethostname(), "token": token, "embedded": settings.embedded,
                              "analytics_dsn": settings.analytics_dsn if settings.analytics else ""}))
    os.replace(tmp, path)

    def unpublish() -> None:
        try:
            if orjson.loads(path.read_bytes()).get("token") == token:    # not a newer gateway's file
                path.unlink()
        except (OSError, orjson.JSONDecodeError):
            pass
    return token, unpublish


def pid_alive(pid: int) -> bool:
    """Whether a process of this pid exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class LocalGateway:
    url: str
    token: str
    pid: int
    embedded: bool
    analytics_dsn: str

    def request(self, method: str, path: str, query: dict[str, str] | None = None,
                body: Any = None, timeout_s: float = 300.0, raw: bytes | None = None) -> bytes:
        """One admin call; waits while the gateway is still starting, raises ``GatewayRefused`` on 4xx/5xx."""
        qs = "?" + urllib.parse.urlencode({k: v for k, v in (query or {}).items() if v is not None}) if query else ""
        data = raw if raw is not None else orjson.dumps(body) if body is not None else None
        req = urllib.request.Request(self.url + path + qs, data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        deadline = time.monotonic() + STARTING_WAIT_S
        while True:
            try:
                with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                    answer: bytes = resp.read()
                    return answer
            except urllib.error.HTTPError as err:
                raw = err.read()
                try:
                    message = orjson.loads(raw)["error"]["message"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    message = raw.decode(errors="replace")[:500]
                raise GatewayRefused(err.code, message) from None
            except urllib.error.URLError as err:
                refused = isinstance(err.reason, ConnectionRefusedError)
                if not refused or time.monotonic() > deadline or not pid_alive(self.pid):
                    raise ConnectionError(f"the gateway at {self.url} (pid {self.pid}) did not answer: "
                                          f"{err.reason}") from None
                time.sleep(0.1)

    def json(self, method: str, path: str, query: dict[str, str] | None = None, body: Any = None,
             raw: bytes | None = None) -> Any:
        return orjson.loads(self.request(method, path, query, body, raw=raw))


def find(settings: Settings) -> LocalGateway | None:
    """The live gateway serving ``settings.data_dir`` from this host, or None."""
    path = discovery_path(settings.data_dir)
    try:
        d = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    if d.get("host") != socket.gethostname() or not pid_alive(int(d.get("pid") or 0)):
        return None
    return LocalGateway(str(d["url"]), str(d["token"]), int(d["pid"]), bool(d.get("embedded")),
                        str(d.get("analytics_dsn") or ""))


class GatewayConfigLog:
    """A ``ConfigLog`` whose appends go through the running gateway, which applies them at once.

    Reads still come from the log itself (reading never conflicts with the gateway).
    """

    def __init__(self, gateway: LocalGateway, log: ConfigLog) -> None:
        self.gateway = gateway
        self._log = log

    async def append(self, rec: ConfigRecord) -> None:
        await asyncio.to_thread(self.append_many, [rec])     # a blocking HTTP call: off the caller's loop

    def append_many(self, records: Iterable[ConfigRecord]) -> None:
        self.gateway.request("POST", "/admin/config/records",
                             body={"records": [orjson.loads(r.encode()) for r in records]})

    async def load(self) -> ConfigState:
        return await self._log.load()

    async def follow(self, state: ConfigState, on_change: Callable[[], None], interval_s: float = 0.25) -> None:
        await self._log.follow(state, on_change, interval_s)


def cli_config_log(settings: Settings) -> ConfigLog:
    """The config log as the CLI should write it: through a running local gateway if there is one."""
    log = open_config_log(settings.data_dir, settings.kafka_bootstrap, settings.topic_prefix)
    gw = find(settings)
    return GatewayConfigLog(gw, log) if gw is not None else log


def serve_ctx(settings: Settings, on_token: Callable[[str], None]) -> Callable[[Any], AsyncIterator[None]]:
    """A cleanup context for ``llmgw serve``: publish the discovery file while the app runs."""
    async def ctx(app: Any) -> AsyncIterator[None]:
        token, unpublish = publish(settings)
        on_token(token)
        try:
            yield
        finally:
            unpublish()
    return ctx
