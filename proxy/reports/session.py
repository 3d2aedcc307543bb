"""Dashboard sessions: an HttpOnly cookie signed with HMAC-SHA256, never the admin key itself.

Logging in (``POST /dashboard/login``) checks an admin credential once, with the
admin part's own ``authenticate``, and sets a cookie that names the admin, its
role and scope, a fingerprint of the credential and an expiry. Every request
checks the signature and the expiry, and that the credential still exists
unchanged: revoking or rotating an admin key (or changing ``LLMGW_ADMIN_KEY``)
ends its sessions at once. OIDC sessions end at their expiry.

The signing secret is derived from ``LLMGW_ADMIN_KEY`` when it is set (the same
on every replica). Without it, a random secret is created once in
``<data_dir>/dashboard.secret`` (mode 0600): replicas that do not share the
data directory then each keep their own sessions.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import orjson

from llmgw.core.config import ConfigState
from llmgw.proxy.admin.credentials import ADMIN_PREFIX, ADMIN_TYPE
from llmgw.proxy.admin.roles import AdminPrincipal
from llmgw.core.settings import Settings

COOKIE = "llmgw_dashboard"
TTL_MS = 8 * 3_600_000
_VERSION = "v1"
_OWNER = "owner"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def secret_for(settings: Settings) -> bytes:
    """The HMAC key for session cookies (see the module docstring)."""
    if settings.admin_key:
        return hmac.new(settings.admin_key.encode(), b"llmgw dashboard session v1", hashlib.sha256).digest()
    path = Path(settings.data_dir) / "dashboard.secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_bytes()
        if len(secret) < 32:
            raise ValueError(f"{path} is shorter than 32 bytes; delete it to make a new one") from None
        return secret
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
        f.flush()
        os.fsync(f.fileno())
    return path.read_bytes()


def _stored_hash(state: ConfigState, owner_key: str, credential: str) -> str | None:
    """The stored sha256 of the credential a session was opened with; None once it is gone."""
    if credential == _OWNER:
        return hashlib.sha256(owner_key.encode()).hexdigest() if owner_key else None
    rec = state.get(ADMIN_TYPE, credential)
    return str(rec.data["sha256"]) if rec is not None and rec.data else None


@dataclass(frozen=True, slots=True)
class Session:
    admin: AdminPrincipal
    credential: str          # "owner" (LLMGW_ADMIN_KEY), an admin_id, or "" (OIDC: no stored credential)
    fingerprint: str         # HMAC of the credential's stored hash: the cookie never carries the hash
    expires_ms: int


class Sessions:
    """Issues and checks session cookies for one gateway."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, f"{_VERSION}.{payload}".encode(), hashlib.sha256).digest())

    def _fingerprint(self, stored_hash: str) -> str:
        return _b64(hmac.new(self._secret, b"credential " + stored_hash.encode(), hashlib.sha256).digest()[:16])

    def issue(self, admin: AdminPrincipal, token: str, state: ConfigState, owner_key: str, now_ms: int) -> str:
        """The cookie value for an admin who just presented ``token`` (already authenticated)."""
        credential = ""
        if admin.via == "admin_key":
            credential = _OWNER
        elif token.startswith(ADMIN_PREFIX):
            credential = token[len(ADMIN_PREFIX):].partition("-")[0]
        stored = _stored_hash(state, owner_key, credential) if credential else None
        body = {"n": admin.name, "r": admin.role, "w": list(admin.workspaces), "v": admin.via, "i": admin.id,
                "c": credential, "f": self._fingerprint(stored) if stored else "", "e": now_ms + TTL_MS}
        payload = _b64(orjson.dumps(body))
        return f"{_VERSION}.{payload}.{self._sign(payload)}"

    def check(self, cookie: str | None, state: ConfigState, owner_key: str, now_ms: int) -> Session | None:
        """The session a cookie proves, or None (forged, expired, or its credential is gone)."""
        if not cookie:
            return None
        version, _, rest = cookie.partition(".")
        payload, _, signature = rest.partition(".")
        if version != _VERSION or not payload or not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            body = orjson.loads(_unb64(payload))
            session = Session(AdminPrincipal(str(body["n"]), str(body["r"]), tuple(body["w"]), str(body["v"]),
                                             str(body.get("i") or "")),
                              str(body["c"]), str(body["f"]), int(body["e"]))
        except (ValueError, KeyError, TypeError):
            return None
        if now_ms >= session.expires_ms:
            return None
        if session.credential:
            stored = _stored_hash(state, owner_key, session.credential)
            if stored is None or not hmac.compare_digest(self._fingerprint(stored), session.fingerprint):
                return None
        return session


__all__ = ["COOKIE", "TTL_MS", "Session", "Sessions", "secret_for"]
