"""Model access: which models a key, user, workspace or organization may call.

An allow-list is a set of glob patterns (``claude-haiku-*``, ``gpt-4o-mini``).
A key carries its own (``keys create --models``); users, workspaces and
organizations get theirs from config records (``llmgw models allow``), either
for one entity or as the default of a kind (``user:*``), an explicit list
replacing the default. A call must be allowed by every list that applies (they
narrow, never widen), and is refused with 403 before anything is reserved or
forwarded, the error naming each list that refused and what it allows.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from llmgw.core.config import ConfigRecord, ConfigState

from .errors import PolicyDenied
from llmgw.core.principal import Principal
from .ratelimit import KINDS, name_of

TYPE = "models"


@dataclass(frozen=True, slots=True)
class ModelList:
    scope_kind: str                # org, workspace, user, key
    name: str                      # entity name, or "*" for the default of the kind
    patterns: tuple[str, ...]
    org: str = ""                  # "" matches the name in any organization
    origin: str = ""

    @property
    def record_name(self) -> str:
        return f"{self.org}|{self.scope_kind}:{self.name}"

    def record(self, actor: str = "cli", reason: str = "") -> ConfigRecord:
        data = {"scope_kind": self.scope_kind, "name": self.name, "patterns": list(self.patterns), "org": self.org}
        return ConfigRecord.put(TYPE, self.record_name, data, actor=actor, reason=reason)

    @classmethod
    def from_record(cls, rec: ConfigRecord) -> "ModelList":
        d = rec.data or {}
        return cls(d["scope_kind"], d["name"], tuple(d.get("patterns") or ()), d.get("org", ""), rec.id)

    def allows(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, pat) for pat in self.patterns)

    def who(self) -> str:
        who = "every " + self.scope_kind if self.name == "*" else f"{self.scope_kind} {self.name}"
        return who + (f" (org {self.org})" if self.org else "")


def parse_patterns(text: str) -> tuple[str, ...]:
    pats = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    if not pats:
        raise ValueError("give at least one model name or glob pattern, e.g. 'claude-haiku-*,gpt-4o-mini'")
    return pats


class ModelAccess:
    def __init__(self, lists: list[ModelList]) -> None:
        self._by_scope: dict[tuple[str, str], list[ModelList]] = {}
        self._defaults: dict[str, list[ModelList]] = {}
        for m in lists:
            if m.name == "*":
                self._defaults.setdefault(m.scope_kind, []).append(m)
            else:
                self._by_scope.setdefault((m.scope_kind, m.name), []).append(m)
        self.count = len(lists)

    @classmethod
    def from_state(cls, state: ConfigState) -> "ModelAccess":
        return cls([ModelList.from_record(r) for r in state.of_type(TYPE)])

    def lists_for(self, p: Principal) -> list[ModelList]:
        out = [ModelList("key", p.key_id, p.allowed_models, origin="the key itself")] if p.allowed_models else []
        if not self.count:
            return out
        for kind in KINDS:
            own = [m for m in self._by_scope.get((kind, name_of(p, kind)), ()) if m.org in ("", p.org)]
            out.extend(own or [d for d in self._defaults.get(kind, ()) if d.org in ("", p.org)])
        return out

    def allowed(self, p: Principal, model: str) -> bool:
        return all(m.allows(model) for m in self.lists_for(p))

    def check(self, p: Principal, model: str) -> None:
        refused = [m for m in self.lists_for(p) if not m.allows(model)]
        if not refused:
            return
        parts = [("this key" if m.origin == "the key itself" else m.who()) + " allows " + ", ".join(m.patterns)
                 for m in refused]
        raise PolicyDenied(f"model {model!r} is not allowed: " + "; ".join(parts)
                           + ". Ask an admin to run `llmgw models allow` if you need it.")
