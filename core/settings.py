"""One frozen ``Settings``, read once, passed down explicitly.

Precedence: command-line flags > ``LLMGW_*`` environment > config file
(``LLMGW_CONFIG`` or ``--config``, YAML) > defaults. Nothing else in the code
reads the environment.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml


UPSTREAM_CLIENTS = ("h1", "aiohttp")


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 4000
    data_dir: str = "./llmgw-data"
    # Empty means embedded mode: the ledger is a local durable log in data_dir.
    kafka_bootstrap: str = ""
    topic_prefix: str = "llmgw"
    kafka_replication_factor: int = 0  # topics the gateway and worker create; 0: min(3, brokers)
    kafka_min_insync_replicas: int = 0  # their min.insync.replicas; 0: min(2, replication factor)
    clickhouse_dsn: str = ""           # default: chdb://<data_dir>/clickhouse
    analytics: bool = True             # embedded mode writes every event to ClickHouse
    analytics_process: bool = True     # embedded: ClickHouse runs in a child process fed from the ledger log (0: in-process)
    openai_base_url: str = "https://api.openai.com/v1"
    openai_api_key: str = ""
    anthropic_base_url: str = "https://api.anthropic.com"
    anthropic_api_key: str = ""
    config: str = ""                   # YAML file: upstreams, routes, org time zones
    prices: str = ""                   # price overrides file (default <data_dir>/prices.json if present)
    unknown_model: str = "reject"      # or "fallback"
    fallback_price: str = ""           # named catalog entry used when unknown_model=fallback
    max_body_bytes: int = 32 * 1024 * 1024
    spool_max_bytes: int = 256 * 1024 * 1024   # Kafka mode: local spool bound while the broker is away
    connect_timeout_s: float = 10.0
    first_byte_timeout_s: float = 600.0
    upstream_client: str = "h1"        # HTTP client for upstream calls: "h1" (proxy/h1.py, leaner) or "aiohttp"
    stream_max_s: float = 3600.0       # longest stream a hold covers: older holds are swept (proxy/holds.py)
    gateway_id: str = ""
    admin_key: str = ""
    log_level: str = "INFO"
    log_format: str = "json"           # "json": one object per line (core/logs.py); "text": plain
    snapshot_max_age_s: float = 30.0   # /readyz fails once the budget snapshot is older (Kafka mode)
    shutdown_timeout_s: float = 30.0   # SIGTERM: open streams get this long to finish, then events flush
    orphan_after_s: float = 3600.0     # Kafka mode: the ledger worker charges a call with no usage event after this
    snapshot_retain_closed_s: float = 86_400.0   # Kafka mode: a closed window's totals leave the snapshot after this (0: never)
    usage_key: str = "key"             # Kafka mode: usage topic key, "key" (API key), "call" or "org" (docs/ledger.md)
    otel: bool = False                 # emit OpenTelemetry spans/metrics if opentelemetry is installed
    workers: int = 1                   # `llmgw serve` processes on one port (Kafka mode; proxy/workers.py)
    upstream_auth: bool = True         # `serve` refuses to start with no upstream credential (--no-upstream-auth)
    batch_poll_s: float = 300.0        # how often open batches are asked whether they ended (0: only when read)
    file_config: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # a wrong name fails the start, not each call's first trip upstream
        if self.upstream_client not in UPSTREAM_CLIENTS:
            raise ValueError(f"LLMGW_UPSTREAM_CLIENT must be one of {', '.join(UPSTREAM_CLIENTS)}, "
                             f"not {self.upstream_client!r}")

    @property
    def embedded(self) -> bool:
        return not self.kafka_bootstrap

    @property
    def analytics_dsn(self) -> str:
        return self.clickhouse_dsn or f"chdb://{Path(self.data_dir).resolve() / 'clickhouse'}"

    def upstream_credentials(self) -> dict[str, bool]:
        """Upstream name -> whether it has a credential: the two built in, then the config file's.

        Without one, calls would go out with no key and every provider answers 401;
        only a local model server (vLLM, Ollama) is meant to be called like that.
        """
        out = {"openai": bool(self.openai_api_key), "anthropic": bool(self.anthropic_api_key)}
        for name, u in (self.file_config.get("upstreams") or {}).items():
            out[str(name)] = bool((u or {}).get("api_key"))
        return out

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **flags: Any) -> "Settings":
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        config_path = flags.get("config") or env.get("LLMGW_CONFIG", "")
        file_config: dict[str, Any] = {}
        if config_path:
            file_config = yaml.safe_load(Path(config_path).read_text()) or {}
            if not isinstance(file_config, dict):
                raise ValueError(f"{config_path}: expected a mapping at the top level")
            values.update({k: v for k, v in (file_config.get("settings") or {}).items()})
        for f in fields(cls):
            if f.name == "file_config":
                continue
            raw = env.get(f"LLMGW_{f.name.upper()}")
            if raw is not None and raw != "":
                values[f.name] = raw
            if flags.get(f.name) is not None:
                values[f.name] = flags[f.name]
        values = {k: _coerce(cls, k, v) for k, v in values.items() if k in _NAMES}
        values.setdefault("gateway_id", f"{socket.gethostname()}:{os.getpid()}")
        return cls(**values, file_config=file_config)


_NAMES = {f.name for f in fields(Settings)} - {"file_config"}


def _coerce(cls: type, name: str, value: Any) -> Any:
    default = getattr(cls(), name)
    if isinstance(default, bool):
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    return str(value)


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, type) rows for the README's configuration table."""
    rows = []
    for f in fields(Settings):
        if f.name == "file_config":
            continue
        rows.append((f"LLMGW_{f.name.upper()}", repr(getattr(Settings(), f.name)), type(getattr(Settings(), f.name)).__name__))
    return rows
