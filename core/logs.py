"""Structured logs: one JSON object per line, secrets scrubbed on the way out.

Every record becomes ``{"ts", "level", "logger", "event", "message", ...}``
plus the fields passed as ``extra=`` (``request_id``, ``api``, ``model``,
``status``, ``duration_s``, ``outcome``, ``key_id``...). A key is only ever
named by its public ``key_id``. As a last line of defence the formatter
replaces every credential shape the gateway mints or forwards with
``<redacted>`` wherever it appears, message and traceback included (aiohttp's
own parser errors quote the offending header line verbatim):

- client keys ``sk-llmgw-...`` and admin keys ``llmgw-admin-...``;
- JWTs (``eyJ...``: OIDC tokens) and anything after ``Bearer``/``Basic``;
- provider-shaped keys (``sk-...``, ``sk-ant-...``, ``sk-proj-...``);
- the value of an ``Authorization``, ``Proxy-Authorization``, ``x-api-key``,
  ``api-key`` or ``x-goog-api-key`` header, however it is quoted;
- the exact secrets of the settings (upstream keys, the owner key, keys and
  tokens in the config file, the OIDC HS256 secret).
"""
from __future__ import annotations

import collections
import logging
import re
import sys
import threading
import traceback
from typing import Any, Iterable

import orjson

from llmgw.core.settings import Settings

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_TOKEN = r"[A-Za-z0-9._~+/=\-]+"
_PATTERNS = (
    # minted by the gateway, and what providers and IdPs issue: redacted wherever they appear
    re.compile(r"(?:sk-llmgw-|llmgw-admin-)[A-Za-z0-9_\-]+"),
    re.compile(r"\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*"),
    re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}"),
    # whatever follows an auth scheme, or sits in a credential header, whatever its shape
    re.compile(r"(?i)(\b(?:proxy-)?authorization|\bx-api-key|\bapi-key|\bx-goog-api-key)"
               r"((?:['\"]?\s*[:=]\s*['\"]?|\s+(?=[A-Za-z0-9._~+/=\-]{8,}))(?:(?:bearer|basic)\s+)?)"
               r"(?!<redacted>)[^\s'\",;\\}]+"),
    re.compile(r"(?i)(\b(?:bearer|basic)\s+)" + _TOKEN),
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
        if "llmgw-" in text:                           # cheap pre-checks before each regex
            text = _PATTERNS[0].sub(REDACTED, text)
        if "eyJ" in text:
            text = _PATTERNS[1].sub(REDACTED, text)
        if "sk-" in text:
            text = _PATTERNS[2].sub(REDACTED, text)
        lower = text.lower()
        if "api-key" in lower or "authorization" in lower:
            text = _PATTERNS[3].sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
        if "bearer" in lower or "basic" in lower:
            text = _PATTERNS[4].sub(lambda m: m.group(1) + REDACTED, text)
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
    """Every credential the settings hold: upstream keys, the admin key, keys in the config file, the OIDC secret."""
    found = [settings.openai_api_key, settings.anthropic_api_key, settings.admin_key]
    for up in (settings.file_config.get("upstreams") or {}).values() if isinstance(
            settings.file_config.get("upstreams"), dict) else ():
        if isinstance(up, dict):
            found.extend(str(v) for k, v in up.items() if "key" in k.lower() or "token" in k.lower())
    admin = settings.file_config.get("admin")
    oidc = admin.get("oidc") if isinstance(admin, dict) else None
    if isinstance(oidc, dict) and oidc.get("hs256_secret"):
        found.append(str(oidc["hs256_secret"]))
    return [s for s in found if s]


class OffLoopHandler(logging.Handler):
    """Formats (and redacts) on the caller's thread, writes on a thread of its own.

    A log line is written from the event loop (an access line per call, a warning mid-stream); a
    ``StreamHandler`` there blocks every call in flight whenever stderr's reader (journald, a pipe,
    a terminal) is slow. The buffer is unbounded: a line is never dropped, and a stalled reader costs
    memory instead of latency.

    The caller's side is one ``format``, one append and one ``Event.set``: no handler lock (the
    formatter keeps no state between records), no copy of the record, and no thread woken per line.
    The writer, once woken, lets lines gather for ``GATHER_S`` and writes all of them in one
    ``write`` and one ``flush``: under load, one wake-up and one system call for many access lines
    instead of a thread switch and a write per line. A line reaches stderr at most ``GATHER_S``
    after it was logged (``flush``, and so ``logging.shutdown`` at exit, writes at once)."""

    GATHER_S = 0.02

    def __init__(self, target: logging.StreamHandler[Any]) -> None:
        super().__init__()
        self.setFormatter(target.formatter)
        self.target = target
        self._lines: collections.deque[str] = collections.deque()
        self._wake = threading.Event()
        self._writer: tuple[threading.Thread, threading.Event] | None = None
        self._writer_lock = threading.Lock()         # flush and close may come from two threads
        self._start()

    def _start(self) -> None:
        stop = threading.Event()
        writer = threading.Thread(target=self._write, args=(stop,), name="llmgw-log-writer", daemon=True)
        self._writer = writer, stop
        writer.start()

    def _stop(self) -> None:
        if self._writer is not None:
            (writer, stop), self._writer = self._writer, None
            stop.set()                               # the writer writes every line there is, then ends
            self._wake.set()
            writer.join()

    def handle(self, record: logging.LogRecord) -> bool:
        # Handler.handle would take self.lock around emit; the deque is what orders the lines.
        rv = self.filter(record)
        if rv:
            self.emit(rv if isinstance(rv, logging.LogRecord) else record)
        return bool(rv)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record))
        except Exception:
            self.handleError(record)
            return
        self._wake.set()

    def _write(self, stop: threading.Event) -> None:
        lines, terminator = self._lines, self.target.terminator
        while True:
            self._wake.wait()
            self._wake.clear()                       # a line appended from here on sets it again
            if not stop.is_set():
                stop.wait(self.GATHER_S)             # let a burst gather; a stop cuts it short
            batch = []
            while lines:
                batch.append(lines.popleft())
            if batch:
                self._write_lines(terminator.join(batch) + terminator)
            if stop.is_set() and not lines:
                return

    def _write_lines(self, text: str) -> None:
        try:
            stream = self.target.stream
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):           # stderr closed or its reader gone: as StreamHandler does
            if logging.raiseExceptions:
                traceback.print_exc(file=sys.__stderr__)

    def flush(self) -> None:
        """Wait until every line handed over so far is written (logging.shutdown calls this at exit):
        the writer writes what there is and ends, and a new one takes the lines that follow."""
        with self._writer_lock:
            if self._writer is not None:
                self._stop()
                self._start()

    def close(self) -> None:
        with self._writer_lock:
            self._stop()
        super().close()


def configure_logging(settings: Settings, stream: Any = None) -> OffLoopHandler:
    """Install the process's one log handler (``llmgw serve`` calls this once)."""
    redact = Redactor(secrets_of(settings))
    target = logging.StreamHandler(stream or sys.stderr)
    target.setFormatter(JsonFormatter(redact) if settings.log_format == "json" else TextFormatter(redact))
    handler = OffLoopHandler(target)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        if isinstance(h, OffLoopHandler):
            h.close()
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # not in our lines, and each costs a lookup per record
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False   # ours is llmgw.access, without query strings
    logging._srcfile = None     # no caller lookup (a frame walk per record): no formatter here prints it
    return handler
