"""Structured logs: one JSON object per line, secrets scrubbed on the way out.

Every record becomes ``{"ts", "level", "logger", "event", "message", ...}``
plus the fields passed as ``extra=`` (``request_id``, ``api``, ``model``,
``status``, ``duration_s``, ``outcome``, ``key_id``...). A key is only ever
named by its public ``key_id``. As a last line of defence the formatter
replaces any gateway key (``sk-llmgw-...``), any ``Bearer`` token and the
exact configured upstream/admin secrets with ``<redacted>`` wherever they
appear, message and traceback included.
"""
from __future__ import annotations

import logging
import re
import sys
from typing import Any, Iterable

import orjson

from ..settings import Settings

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_PATTERNS = (
    re.compile(r"sk-llmgw-[A-Za-z0-9_\-]+"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=\-]+"),
)
REDACTED = "<redacted>"
_PLAIN = frozenset({str, int, float, bool})


class Redactor:
    """Replaces known secrets and anything shaped like a key or bearer token."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Short strings would redact ordinary words; real keys are long.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            if s in text:
                text = text.replace(s, REDACTED)
        if "sk-llmgw-" in text:
            text = _PATTERNS[0].sub(REDACTED, text)
        if "earer" in text or "EARER" in text:          # cheap pre-check before the regex
            text = _PATTERNS[1].sub(lambda m: m.group(1) + REDACTED, text)
        return text


class JsonFormatter(logging.Formatter):
    def __init__(self, redact: Redactor | None = None) -> None:
        super().__init__()
        self.redact = redact or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": "log",
            "message": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _STANDARD:
                out[k] = v if v is None or type(v) in _PLAIN else str(v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return self.redact(orjson.dumps(out).decode())


class TextFormatter(logging.Formatter):
    def __init__(self, redact: Redactor | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self.redact = redact or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


def secrets_of(settings: Settings) -> list[str]:
    """Every credential the settings hold: upstream keys, the admin key, keys in the config file."""
    found = [settings.openai_api_key, settings.anthropic_api_key, settings.admin_key]
    for up in (settings.file_config.get("upstreams") or {}).values() if isinstance(
            settings.file_config.get("upstreams"), dict) else ():
        if isinstance(up, dict):
            found.extend(str(v) for k, v in up.items() if "key" in k.lower() or "token" in k.lower())
    return [s for s in found if s]


def configure_logging(settings: Settings, stream: Any = None) -> logging.Handler:
    """Install the process's one log handler (``llmgw serve`` calls this once)."""
    redact = Redactor(secrets_of(settings))
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(redact) if settings.log_format == "json" else TextFormatter(redact))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # not in our lines, and each costs a lookup per record
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False   # ours is llmgw.access, without query strings
    return handler
