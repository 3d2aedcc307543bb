"""Admin credentials: the owner key, minted admin keys with roles, and the first-start key.

An admin key reads ``llmgw-admin-<admin_id>-<secret>``: a different prefix
from client keys (``sk-llmgw-``), so neither can pass for the other. Only
``sha256(key)`` is stored, in a config record ``admin:<admin_id>``, and the
key itself is shown once. ``LLMGW_ADMIN_KEY`` (setting ``admin_key``) is an
owner credential that lives only in the environment. Without it, the first
gateway to start on an empty config log mints an owner key, prints it once and
records ``admin_bootstrap:owner`` so that no later start does it again.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any

from llmgw.core.config import ConfigRecord, ConfigState
from llmgw.proxy.keys import PREFIX as CLIENT_PREFIX
from llmgw.proxy.keys import verified

from .entities import check_expiry, check_name
from .roles import OWNER, WORKSPACE_ADMIN, AdminPrincipal, check_role

ADMIN_PREFIX = "llmgw-admin-"
ADMIN_TYPE = "admin"
BOOTSTRAP_ID = ("admin_bootstrap", "owner")


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def mint_admin(name: str, role: str, workspaces: tuple[str, ...] = (), *, expires_ms: int = 0,
               actor: str = "cli", reason: str = "") -> tuple[str, ConfigRecord]:
    """A new admin key and the config record that makes it valid (append it to the log)."""
    check_name("admin", name)                  # the API's and the CLI's one validation
    check_role(role)
    check_expiry(expires_ms, int(time.time() * 1000))   # a credential born expired is a typo, not a key
    if role == WORKSPACE_ADMIN and not workspaces:
        raise ValueError("a workspace_admin needs at least one workspace (ORG/WORKSPACE)")
    for ws in workspaces:
        org, sep, w = ws.partition("/")
        if not (sep and org and w):
            raise ValueError(f"workspace {ws!r}: expected ORG/WORKSPACE, e.g. acme/backend")
    admin_id = "a" + secrets.token_hex(6)
    key = f"{ADMIN_PREFIX}{admin_id}-{secrets.token_urlsafe(24)}"
    data = {"admin_id": admin_id, "name": name, "role": role, "workspaces": list(workspaces),
            "sha256": _hash(key), "expires_ms": expires_ms, "created_ms": int(time.time() * 1000)}
    return key, ConfigRecord.put(ADMIN_TYPE, admin_id, data, actor=actor, reason=reason)


def revoke_admin(admin_id: str, actor: str, reason: str = "") -> ConfigRecord:
    return ConfigRecord.put(ADMIN_TYPE, admin_id, None, actor=actor, reason=reason)


def admin_view(rec: ConfigRecord) -> dict[str, Any]:
    d = rec.data or {}
    return {k: d.get(k) for k in ("admin_id", "name", "role", "workspaces", "expires_ms", "created_ms")}


def authenticate_admin(state: ConfigState, owner_key: str, token: str, now_ms: int) -> AdminPrincipal | None:
    """The admin behind ``token``, or None. Client keys are never admins."""
    if token.startswith(CLIENT_PREFIX):
        return None
    if owner_key and hmac.compare_digest(_hash(token), _hash(owner_key)):
        return AdminPrincipal("owner-key", OWNER, via="admin_key")
    if not token.startswith(ADMIN_PREFIX):
        return None
    admin_id, sep, _ = token[len(ADMIN_PREFIX):].partition("-")
    d = verified(state, ADMIN_TYPE, admin_id if sep else None, token, now_ms)
    if d is None:
        return None
    return AdminPrincipal(d["name"], d["role"], tuple(d.get("workspaces") or ()), id=d["admin_id"])


def needs_bootstrap(state: ConfigState, owner_key: str) -> bool:
    return not owner_key and state.get(*BOOTSTRAP_ID) is None and not state.of_type(ADMIN_TYPE)


def bootstrap_records() -> tuple[str, list[ConfigRecord]]:
    """The first owner key (to print once) and the records that store its hash and the fact."""
    key, rec = mint_admin("bootstrap-owner", OWNER, actor="bootstrap", reason="first start without LLMGW_ADMIN_KEY")
    marker = ConfigRecord.put(*BOOTSTRAP_ID, {"admin_id": rec.data["admin_id"]},  # type: ignore[index]
                              actor="bootstrap", reason="first owner credential generated")
    return key, [rec, marker]
