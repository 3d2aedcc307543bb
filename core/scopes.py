"""Scopes as people write them, read in one place.

    org:NAME
    workspace:NAME   or  workspace:ORG/NAME   (the form ``explain``, the dashboard and the API print)
    user:NAME        or  user:ORG/NAME
    key:KEY_ID
    tag:NAME:VALUE   (budgets only)

A budget, rate limit or model allow-list matches a workspace or user by its
bare name, pinned to one organization by ``org`` (otherwise the name matches in
any org). ``workspace:ORG/NAME`` is that pin written inside the scope, so it is
read as (workspace, NAME, org ORG). Every place that takes a scope (budgets,
rate limits, model allow-lists, increase requests, alert thresholds, spend and
chargeback filters; CLI, admin API and ``apply``) parses it here: a scope that
is written in some other form is refused with the form it should take, never
stored under a name that no call can match.
"""
from __future__ import annotations

from dataclasses import dataclass

SCOPE_KINDS = ("org", "workspace", "user", "key", "tag")
ENTITY_KINDS = ("org", "workspace", "user", "key")       # rate limits and model allow-lists
_FORMS = {"org": "org:NAME", "workspace": "workspace:NAME or workspace:ORG/NAME",
          "user": "user:NAME or user:ORG/NAME", "key": "key:KEY_ID", "tag": "tag:NAME:VALUE"}
_ORG_PINNED = ("workspace", "user")


@dataclass(frozen=True, slots=True)
class Scope:
    kind: str                # org, workspace, user, key, tag
    name: str                # the bare name ("*": the default for every one of the kind)
    org: str = ""            # "" matches the name in any organization

    def __str__(self) -> str:
        if self.org and self.kind in _ORG_PINNED:
            return f"{self.kind}:{self.org}/{self.name}"
        return f"{self.kind}:{self.name}"


def forms(kinds: tuple[str, ...] = SCOPE_KINDS) -> str:
    return ", ".join(_FORMS[k] for k in kinds)


def parse_scope(text: str, org: str = "", kinds: tuple[str, ...] = SCOPE_KINDS) -> Scope:
    """``text`` as a scope of one of ``kinds``; ``org`` is the separate org pin (``--org``, ``"org"``),
    which must agree with an ``ORG/`` written in the scope. Raises ``ValueError`` naming the right form."""
    text = str(text or "").strip()
    org = str(org or "").strip()
    kind, sep, name = text.partition(":")
    if not sep or kind not in kinds or not name:
        raise ValueError(f"scope {text[:80]!r}: expected one of {forms(kinds)}"
                         + (" (NAME * sets the default for every one)" if "tag" not in kinds else ""))
    if kind == "tag":
        if ":" not in name:
            raise ValueError("a tag scope reads tag:NAME:VALUE, e.g. tag:project:payments")
        return Scope(kind, name, org)
    if kind in _ORG_PINNED and "/" in name:
        o, _, bare = name.partition("/")
        if not o or not bare or "/" in bare or o == "*":
            raise ValueError(f"scope {text[:80]!r}: expected {_FORMS[kind]}, e.g. {kind}:acme/backend")
        if org and org != o:
            raise ValueError(f"scope {text} names org {o!r} but the org given is {org!r}")
        return Scope(kind, bare, o)
    if "/" in name or ":" in name:
        raise ValueError(f"scope {text[:80]!r}: expected {_FORMS[kind]}")
    return Scope(kind, name, org)


def parse_workspace(text: str, org: str = "") -> tuple[str, str]:
    """A workspace given on its own (``--workspace``, a spend filter): ``ORG/NAME`` or ``NAME`` with ``org``,
    as (org, name). ``workspace:`` in front is accepted too. Raises ``ValueError`` when no org is known."""
    text = str(text or "").strip()
    s = parse_scope(text if text.startswith("workspace:") else f"workspace:{text}", org, ("workspace",))
    if not s.org:
        raise ValueError(f"workspace {text[:80]!r} needs its organization: write ORG/NAME (e.g. acme/{s.name}) "
                         "or give the org")
    return s.org, s.name
