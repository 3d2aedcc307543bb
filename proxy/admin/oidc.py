"""Optional OIDC/JWT bearer tokens for people: a company IdP signs, the gateway maps a claim to a role.

Configured in the config file (``LLMGW_CONFIG``), section ``admin.oidc``::

    admin:
      oidc:
        issuer: https://idp.example.com/         # must equal the token's iss
        audience: llmgw-admin                    # must be in the token's aud
        algorithms: [RS256]                      # RS256 and/or HS256; nothing else is accepted
        jwks_file: /etc/llmgw/idp-jwks.json      # RS256 public keys (or `jwks:` inline)
        hs256_secret: "..."                      # HS256 shared secret (keep the file private)
        role_claim: groups                       # a string or a list of strings
        role_map: {platform-admins: owner, finance-team: finance, eng-leads: workspace_admin}
        workspaces_claim: llmgw_workspaces       # ["acme/backend"] for a workspace_admin
        name_claim: email                        # who the audit log names (default: sub)

Keys are read from the file at start; the gateway never fetches a JWKS over
the network. Verification uses ``joserfc`` (an optional dependency).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .errors import AuthError
from .roles import OWNER, ROLES, WORKSPACE_ADMIN, AdminPrincipal

_ALLOWED = ("RS256", "HS256")
# A role claim naming several roles gets the strongest one it names.
_STRENGTH = {OWNER: 3, WORKSPACE_ADMIN: 2, "finance": 1, "viewer": 0}


def looks_like_jwt(token: str) -> bool:
    return token.startswith("eyJ") and token.count(".") == 2


@dataclass(frozen=True)
class OidcVerifier:
    issuer: str
    audience: str
    algorithms: tuple[str, ...]
    keys: Any                     # a joserfc KeySet (RS256) and/or OctKey (HS256), by algorithm
    role_claim: str
    role_map: Mapping[str, str]
    workspaces_claim: str
    name_claim: str

    @classmethod
    def from_file_config(cls, file_config: Mapping[str, Any]) -> "OidcVerifier | None":
        section = ((file_config.get("admin") or {}).get("oidc")) if isinstance(file_config, Mapping) else None
        if not section:
            return None
        try:
            from joserfc.jwk import KeySet, OctKey
        except ImportError:
            raise ValueError("admin.oidc is configured but the optional dependency joserfc is not "
                             "installed (pip install joserfc)") from None
        algorithms = tuple(section.get("algorithms") or ("RS256",))
        if bad := [a for a in algorithms if a not in _ALLOWED]:
            raise ValueError(f"admin.oidc.algorithms: {bad} not supported; use {', '.join(_ALLOWED)}")
        keys: dict[str, Any] = {}
        if "RS256" in algorithms:
            raw = section.get("jwks") or (json.loads(Path(section["jwks_file"]).read_text())
                                          if section.get("jwks_file") else None)
            if not raw:
                raise ValueError("admin.oidc: RS256 needs `jwks_file` or `jwks` (the IdP's public keys)")
            keys["RS256"] = KeySet.import_key_set(raw)
        if "HS256" in algorithms:
            if not section.get("hs256_secret"):
                raise ValueError("admin.oidc: HS256 needs `hs256_secret`")
            keys["HS256"] = OctKey.import_key(str(section["hs256_secret"]))
        role_map = {str(k): str(v) for k, v in (section.get("role_map") or {}).items()}
        if bad := [v for v in role_map.values() if v not in ROLES]:
            raise ValueError(f"admin.oidc.role_map: unknown roles {bad}; expected {', '.join(ROLES)}")
        if not section.get("issuer") or not section.get("audience"):
            raise ValueError("admin.oidc needs `issuer` and `audience`")
        return cls(str(section["issuer"]), str(section["audience"]), algorithms, keys,
                   str(section.get("role_claim", "llmgw_role")), role_map,
                   str(section.get("workspaces_claim", "llmgw_workspaces")),
                   str(section.get("name_claim", "sub")))

    def verify(self, token: str) -> AdminPrincipal:
        from joserfc import jwt
        from joserfc.errors import JoseError

        claims: dict[str, Any] | None = None
        for alg in self.algorithms:
            try:
                claims = dict(jwt.decode(token, self.keys[alg], algorithms=[alg]).claims)
                break
            except (JoseError, ValueError):
                continue
        if claims is None:
            raise AuthError("the bearer token's signature does not verify with the configured IdP keys")
        registry = jwt.JWTClaimsRegistry(leeway=30, iss={"essential": True, "value": self.issuer},
                                         aud={"essential": True, "value": self.audience},
                                         exp={"essential": True})
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise AuthError(f"the bearer token is not valid here: {exc}") from None
        return self._principal(claims)

    def _principal(self, claims: Mapping[str, Any]) -> AdminPrincipal:
        raw = claims.get(self.role_claim)
        values = [raw] if isinstance(raw, str) else [str(v) for v in raw or ()]
        roles = [self.role_map.get(v, v if v in ROLES else "") for v in values]
        roles = [r for r in roles if r]
        if not roles:
            raise AuthError(f"the token's `{self.role_claim}` claim maps to no llmgw role")
        role = max(roles, key=_STRENGTH.__getitem__)
        ws = claims.get(self.workspaces_claim) or ()
        workspaces = (ws,) if isinstance(ws, str) else tuple(str(w) for w in ws)
        sub = str(claims.get("sub") or "")
        name = str(claims.get(self.name_claim) or sub or "unknown")
        return AdminPrincipal(name, role, workspaces, via="oidc", id=sub)
