"""Organizations, workspaces, users and keys as config records: pure functions, state in, records out.

    org:NAME                 {"name", "metadata", "timezone"?}  (IANA; the org's day/month windows)
    workspace:ORG/NAME       {"org", "name", "metadata"}
    user:ORG/NAME            {"org", "name", "workspace", "email", "metadata"}
    key:KEY_ID               proxy/keys.py's record, plus "alias", "metadata", "rotated_ms"

Keys keep working for names that have no record (``llmgw keys create`` never
required one); the records give admins something to list, scope and annotate.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import time
from typing import Any

from llmgw.core.config import ConfigRecord, ConfigState
from llmgw.core.windows import check_zone
from llmgw.proxy import keys as K

from .errors import Forbidden
from .roles import WORKSPACE_ADMIN, AdminPrincipal

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")


def check_name(what: str, name: object) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{what} name {name!r}: use 1-128 letters, digits and . _ @ + - "
                         "(no spaces, slashes or colons)")
    return name


def check_metadata(metadata: object) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise ValueError("metadata must be a JSON object")
    return metadata


def now_ms() -> int:
    return int(time.time() * 1000)


# -- organizations, workspaces, users -------------------------------------------------------
def org_record(name: str, metadata: dict[str, Any] | None, actor: str, reason: str,
               timezone: object = None) -> ConfigRecord:
    """``timezone`` None or "" leaves the org on the config file's zone (else UTC)."""
    data: dict[str, Any] = {"name": name, "metadata": check_metadata(metadata)}
    if timezone not in (None, ""):
        data["timezone"] = check_zone(timezone)
    return ConfigRecord.put("org", check_name("org", name), data, actor, reason)


def workspace_record(org: str, name: str, metadata: dict[str, Any] | None, actor: str,
                     reason: str) -> ConfigRecord:
    check_name("org", org)
    return ConfigRecord.put("workspace", f"{org}/{check_name('workspace', name)}",
                            {"org": org, "name": name, "metadata": check_metadata(metadata)}, actor, reason)


def user_record(org: str, name: str, workspace: str, metadata: dict[str, Any] | None, actor: str,
                reason: str, email: str = "") -> ConfigRecord:
    check_name("org", org)
    if workspace:
        check_name("workspace", workspace)
    return ConfigRecord.put("user", f"{org}/{check_name('user', name)}",
                            {"org": org, "name": name, "workspace": workspace, "email": email,
                             "metadata": check_metadata(metadata)}, actor, reason)


def delete_record(type_: str, name: str, actor: str, reason: str) -> ConfigRecord:
    return ConfigRecord.put(type_, name, None, actor, reason)


def user_workspaces(state: ConfigState, org: str, user: str) -> set[str]:
    """Every workspace a user belongs to: its record's, and those of its keys (as ORG/WORKSPACE)."""
    out: set[str] = set()
    rec = state.get("user", f"{org}/{user}")
    if rec is not None and rec.data and rec.data.get("workspace"):
        out.add(f"{org}/{rec.data['workspace']}")
    for k in state.of_type("key"):
        d = k.data or {}
        if d.get("org") == org and d.get("user") == user:
            out.add(f"{org}/{d['workspace']}")
    return out


def check_user_home(state: ConfigState, org: str, workspace: str, user: str, admin: AdminPrincipal) -> None:
    """A user belongs to one workspace unless an org-level admin says otherwise.

    The user's home is its record's workspace, else the workspaces its keys are in. A workspace admin
    may not give a user of another workspace a key, or a record, in its own: the user's budget would
    then be shared across both and the other workspace's admin would lose control of it. An owner
    (an org-level admin) may, and doing so is that say-so.
    """
    if admin.role != WORKSPACE_ADMIN:
        return
    rec = state.get("user", f"{org}/{user}")
    home = rec.data.get("workspace") if rec is not None and rec.data else ""
    homes = {f"{org}/{home}"} if home else user_workspaces(state, org, user)
    elsewhere = sorted(homes - {f"{org}/{workspace}"})
    if elsewhere:
        raise Forbidden(f"user {org}/{user} belongs to workspace {', '.join(elsewhere)}, not {org}/{workspace}; "
                        "only an owner can give a user a key or a record in a second workspace")


# -- keys ------------------------------------------------------------------------------------
def create_key(org: str, workspace: str, user: str, *, state: ConfigState, admin: AdminPrincipal,
               tags: tuple[str, ...] = (), allowed_models: tuple[str, ...] = (), expires_ms: int = 0,
               alias: str = "", metadata: dict[str, Any] | None = None, actor: str = "",
               reason: str = "") -> tuple[str, ConfigRecord]:
    """A new key for ORG/WORKSPACE/USER: the one validation the HTTP API, LiteLLM's calls and the CLI share."""
    for what, name in (("org", org), ("workspace", workspace), ("user", user)):
        check_name(what, name)
    check_expiry(expires_ms, now_ms())
    check_user_home(state, org, workspace, user, admin)
    actor = actor or admin.actor
    key, rec = K.mint(org, workspace, user, tags=check_tags(tags), allowed_models=check_models(allowed_models),
                      expires_ms=expires_ms, actor=actor)
    data = {**(rec.data or {}), "alias": alias, "metadata": check_metadata(metadata)}
    return key, ConfigRecord(rec.id, rec.type, data, rec.ts_ms, actor, reason)


def rotate_key(rec: ConfigRecord, actor: str, reason: str) -> tuple[str, ConfigRecord]:
    """A new secret for the same key id: budgets on key:ID keep applying, the old secret stops at once."""
    d = dict(rec.data or {})
    key = f"{K.PREFIX}{d['key_id']}-{secrets.token_urlsafe(24)}"
    d.update(sha256=hashlib.sha256(key.encode()).hexdigest(), rotated_ms=now_ms())
    return key, ConfigRecord.put("key", d["key_id"], d, actor, reason)


def check_expiry(expires_ms: object, now: int) -> int:
    """0 (never) or an instant still ahead: a key born expired is a typo (a past date, ms read as s)."""
    if isinstance(expires_ms, bool) or not isinstance(expires_ms, int) or expires_ms < 0:
        raise ValueError("expires_ms must be a non-negative integer (epoch milliseconds; 0: never)")
    if expires_ms and expires_ms <= now:
        raise ValueError(f"expiry {expires_ms} is in the past; give a future time, or revoke or expire the key "
                         "instead")
    return expires_ms


def update_key(rec: ConfigRecord, changes: dict[str, Any], actor: str, reason: str) -> ConfigRecord:
    d = dict(rec.data or {})
    if "allowed_models" in changes:
        d["allowed_models"] = list(check_models(changes["allowed_models"]))
    if "tags" in changes:
        d["tags"] = list(check_tags(changes["tags"]))
    if "expires_ms" in changes:
        d["expires_ms"] = int(changes["expires_ms"] or 0)
    if "alias" in changes:
        d["alias"] = str(changes["alias"] or "")
    if "metadata" in changes:
        d["metadata"] = check_metadata(changes["metadata"])
    return ConfigRecord.put("key", d["key_id"], d, actor, reason)


def check_models(models: object) -> tuple[str, ...]:
    if models is None:
        return ()
    if not isinstance(models, (list, tuple)) or not all(isinstance(m, str) and m for m in models):
        raise ValueError("allowed models must be a list of model names or glob patterns")
    return tuple(models)


def check_tags(tags: object) -> tuple[str, ...]:
    if tags is None:
        return ()
    if not isinstance(tags, (list, tuple)) or not all(isinstance(t, str) and ":" in t for t in tags):
        raise ValueError("tags must be a list of NAME:VALUE strings, e.g. project:payments")
    return tuple(tags)


def key_view(rec: ConfigRecord, now: int | None = None) -> dict[str, Any]:
    """What anyone may see of a key: never the secret, nor its hash."""
    d = rec.data or {}
    expires = int(d.get("expires_ms") or 0)
    status = "expired" if expires and (now or now_ms()) >= expires else "active"
    out = {k: d.get(k) for k in ("key_id", "org", "workspace", "user", "tags", "allowed_models", "expires_ms",
                                 "created_ms", "rotated_ms", "alias", "metadata")}
    out["status"] = status
    return out


def find_key(state: ConfigState, ref: str) -> ConfigRecord | None:
    """A key by id, by the full key (its id part; no secret check: admins only), or by alias."""
    key_id = K.key_id_of(ref) or ref
    rec = state.get("key", key_id)
    if rec is not None and rec.data is not None:
        return rec
    for r in state.of_type("key"):
        if ref and (r.data or {}).get("alias") == ref:
            return r
    return None
