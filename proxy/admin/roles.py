"""Who may do what on the admin surface: four roles, one permission table.

    role              what                                                   where
    owner             everything                                             every org and workspace
    workspace_admin   keys, budgets, users, increase approvals; read config  only its own workspaces
    finance           read config, spend, exports, audit; no keys, no changes every org
    viewer            read config, keys (never secrets), spend, audit         every org

A permission alone is not enough for a workspace admin: each handler also
asks ``covers(org, workspace)`` for the thing it touches. Workspaces are named
``ORG/WORKSPACE`` in an admin's scope.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import Forbidden

OWNER, WORKSPACE_ADMIN, FINANCE, VIEWER = "owner", "workspace_admin", "finance", "viewer"
ROLES = (OWNER, WORKSPACE_ADMIN, FINANCE, VIEWER)

READ_CONFIG = "config.read"          # orgs, workspaces, users, budgets, defaults, exceptions
READ_KEYS = "keys.read"              # key metadata; secrets are never readable by anyone
WRITE_KEYS = "keys.write"            # create, rotate, revoke, expire, models, tags
WRITE_BUDGETS = "budgets.write"      # budgets and exceptions on scopes the admin covers
WRITE_DEFAULTS = "defaults.write"    # defaults apply to every scope of a kind: owner only
WRITE_ORGS = "orgs.write"            # organizations and workspaces
WRITE_USERS = "users.write"
READ_SPEND = "spend.read"
READ_EXPORTS = "exports.read"
READ_AUDIT = "audit.read"
REQUEST_INCREASE = "increase.request"
APPROVE_INCREASE = "increase.approve"
MANAGE_ADMINS = "admins.manage"      # admin credentials and their roles
APPLY = "config.apply"               # config as code: replaces the whole managed state

PERMISSIONS: dict[str, frozenset[str]] = {
    OWNER: frozenset({READ_CONFIG, READ_KEYS, WRITE_KEYS, WRITE_BUDGETS, WRITE_DEFAULTS, WRITE_ORGS,
                      WRITE_USERS, READ_SPEND, READ_EXPORTS, READ_AUDIT, REQUEST_INCREASE,
                      APPROVE_INCREASE, MANAGE_ADMINS, APPLY}),
    WORKSPACE_ADMIN: frozenset({READ_CONFIG, READ_KEYS, WRITE_KEYS, WRITE_BUDGETS, WRITE_USERS, READ_SPEND,
                                READ_AUDIT, REQUEST_INCREASE, APPROVE_INCREASE}),
    FINANCE: frozenset({READ_CONFIG, READ_SPEND, READ_EXPORTS, READ_AUDIT}),
    VIEWER: frozenset({READ_CONFIG, READ_KEYS, READ_SPEND, READ_AUDIT}),
}


@dataclass(frozen=True, slots=True)
class AdminPrincipal:
    """An authenticated admin: a credential, the owner key, or an OIDC token."""

    name: str
    role: str
    workspaces: tuple[str, ...] = ()     # "ORG/WORKSPACE"; only a workspace admin is limited by it
    via: str = "credential"              # credential, admin_key, oidc, cli
    id: str = ""                         # the admin key's id, or the OIDC subject ("" for the owner key)

    @property
    def actor(self) -> str:
        """The ``actor`` written on every config record this admin causes: who, by name and by the id
        that cannot be reused (``admin:lead#a1b2c3d4e5f6``, ``oidc:lead@acme.example#00u1x``, ``cli:alice``)."""
        who = f"{self.via if self.via in ('oidc', 'cli') else 'admin'}:{self.name}"
        return f"{who}#{self.id}" if self.id and self.id != self.name else who

    def can(self, permission: str) -> bool:
        return permission in PERMISSIONS.get(self.role, frozenset())

    def covers(self, org: str, workspace: str) -> bool:
        if self.role != WORKSPACE_ADMIN:
            return True
        return f"{org}/{workspace}" in self.workspaces

    def require(self, permission: str, org: str | None = None, workspace: str | None = None) -> None:
        """Raise ``Forbidden`` unless the role grants ``permission`` on (org, workspace)."""
        if not self.can(permission):
            raise Forbidden(f"role {self.role} may not {permission.replace('.', ' ')}")
        if workspace is not None and org is not None and not self.covers(org, workspace):
            raise Forbidden(f"workspace {org}/{workspace} is outside this admin's scope "
                            f"({', '.join(self.workspaces) or 'none'})")


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    return role
