"""Optional capture of request and response bodies, per workspace, off by default.

A workspace opts in with a config record (``llmgw capture on --org O --workspace W``),
so every proxy follows it live. Bodies are redacted here, before they leave the
request path: provider and gateway keys, bearer tokens, cloud and VCS tokens, and
the values of JSON fields named like secrets. Capture never delays the client:
the relay copies at most ``max_bytes`` of what it forwards, and the rows go to
ClickHouse from a background batcher (``analytics/bodies.py``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from llmgw.core.config import ConfigRecord, ConfigState

DEFAULT_MAX_BYTES = 64 * 1024
REDACTED = "[REDACTED]"

_PATTERNS = [
    re.compile(r"sk-(?:ant-|proj-|llmgw-)?[A-Za-z0-9_\-]{16,}"),            # OpenAI, Anthropic, gateway keys
    re.compile(r"llmgw-admin-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=\-]{8,}"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),                                    # AWS access key ids
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}\b"),                          # GitHub tokens
    re.compile(r"\bxox[abprs]-[A-Za-z0-9\-]{10,}\b"),                       # Slack tokens
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
    re.compile(r'(?i)("(?:api[_-]?key|secret|password|passwd|token|access[_-]?token|authorization)"\s*:\s*")'
               r'[^"]{4,}(")'),
]


def redact(text: str) -> str:
    for pattern in _PATTERNS:
        if pattern.groups == 2:
            text = pattern.sub(lambda m: f"{m.group(1)}{REDACTED}{m.group(2)}", text)
        else:
            text = pattern.sub(REDACTED, text)
    return text


@dataclass(frozen=True, slots=True)
class CapturePolicy:
    max_bytes: int = DEFAULT_MAX_BYTES


def policy_for(state: ConfigState, org: str, workspace: str) -> CapturePolicy | None:
    rec = state.get("capture", f"{org}/{workspace}")
    if rec is None or rec.data is None:
        return None
    return CapturePolicy(int(rec.data.get("max_bytes", DEFAULT_MAX_BYTES)))


def record(org: str, workspace: str, on: bool, max_bytes: int = DEFAULT_MAX_BYTES,
           actor: str = "cli", reason: str = "") -> ConfigRecord:
    data = {"org": org, "workspace": workspace, "max_bytes": max_bytes} if on else None
    return ConfigRecord.put("capture", f"{org}/{workspace}", data, actor=actor, reason=reason)


@dataclass(frozen=True, slots=True)
class CapturedCall:
    event_id: str
    ts_ms: int
    org: str
    workspace: str
    api: str
    request: str
    response: str
    truncated: bool

    @classmethod
    def of(cls, event_id: str, ts_ms: int, org: str, workspace: str, api: str, request: bytes,
           response: bytes, limit: int) -> "CapturedCall":
        truncated = len(request) > limit or len(response) > limit
        return cls(event_id, ts_ms, org, workspace, api,
                   redact(request[:limit].decode("utf-8", "replace")),
                   redact(response[:limit].decode("utf-8", "replace")), truncated)
