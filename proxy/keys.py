"""Virtual keys: what a client presents instead of a provider credential.

A key reads ``sk-llmgw-<key_id>-<secret>``. Only ``sha256(key)`` is stored;
the public ``key_id`` finds the record and the hash is compared in constant
time. The key itself is printed once at creation and never logged: logs and
events carry ``key_id``.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any

from llmgw.core.config import ConfigRecord, ConfigState
from llmgw.core.principal import Principal

PREFIX = "sk-llmgw-"


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def mint(org: str, workspace: str, user: str, *, tags: tuple[str, ...] = (),
         allowed_models: tuple[str, ...] = (), expires_ms: int = 0,
         actor: str = "cli") -> tuple[str, ConfigRecord]:
    """A new key and the config record that makes it valid (append it to the log)."""
    key_id = "k" + secrets.token_hex(6)
    key = f"{PREFIX}{key_id}-{secrets.token_urlsafe(24)}"
    data = {"key_id": key_id, "sha256": _hash(key), "org": org, "workspace": workspace,
            "user": user, "tags": list(tags), "allowed_models": list(allowed_models),
            "expires_ms": expires_ms, "created_ms": int(time.time() * 1000)}
    return key, ConfigRecord.put("key", key_id, data, actor=actor)


def revoke(key_id: str, actor: str = "cli", reason: str = "") -> ConfigRecord:
    return ConfigRecord.put("key", key_id, None, actor=actor, reason=reason)


def key_id_of(key: str) -> str | None:
    if not key.startswith(PREFIX):
        return None
    rest = key[len(PREFIX):]
    key_id, sep, _ = rest.partition("-")
    return key_id if sep and key_id else None


def verified(state: ConfigState, type_: str, record_id: str | None, secret: str,
             now_ms: int) -> dict[str, Any] | None:
    """The record's data if ``secret`` hashes to its stored hash and it has not expired.

    The hash is compared in constant time, and the same work is done whether
    or not the id exists, so timing tells nothing about which ids are valid.
    """
    rec = state.get(type_, record_id) if record_id else None
    if rec is None or rec.data is None:
        _ = hmac.compare_digest(_hash(secret), "0" * 64)
        return None
    d = rec.data
    if not hmac.compare_digest(_hash(secret), d["sha256"]):
        return None
    if d.get("expires_ms") and now_ms >= d["expires_ms"] or d.get("blocked"):   # blocked: LiteLLM /key/block
        return None
    return d


def authenticate(state: ConfigState, key: str, now_ms: int) -> Principal | None:
    d = verified(state, "key", key_id_of(key), key, now_ms)
    if d is None:
        return None
    return Principal(key_id=d["key_id"], org=d["org"], workspace=d["workspace"], user=d["user"],
                     tags=tuple(d.get("tags") or ()), allowed_models=tuple(d.get("allowed_models") or ()),
                     expires_ms=int(d.get("expires_ms") or 0))


def presented_key(headers: "object") -> str | None:
    """The gateway key from ``x-api-key`` or ``Authorization: Bearer``, whatever the API."""
    get = headers.get  # type: ignore[attr-defined]
    key: str | None = get("x-api-key")
    if key:
        return key.strip()
    auth = get("authorization") or ""
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None
