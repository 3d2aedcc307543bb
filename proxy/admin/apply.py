"""Config as code: make the live config match a YAML document, showing the diff first.

``plan(state, doc)`` compares the desired records with the live ones and
returns the changes; ``render`` prints them as ``+``/``~``/``-`` lines; the
caller appends ``change.record`` for each (actor ``apply``). Applying the same
document twice yields no change the second time.

Managed: organizations, workspaces, users, every budget record (explicit
budgets, tag-narrowed budgets, defaults, exceptions), rate limits and model
allow-lists. What the document does not declare is deleted, except: keys are
never created or deleted, and a key's own budgets and limits are managed only
if the document declares the key (its ``allowed_models``/``tags`` only if it
declares those); approved budget-increase raises stay on top of the declared
limits until they end.
The document's shape is in ``deploy/gateway.yaml`` and ``docs/governance.md``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import yaml

from llmgw.core.config import ConfigRecord, ConfigState
from llmgw.core.windows import WINDOWS
from llmgw.proxy.access import TYPE as MODELS_TYPE, ModelList
from llmgw.core.budgets import Budget, micro_to_usd, parse_hold, usd_to_micro
from llmgw.proxy.ratelimit import METRICS, TYPE as LIMITS_TYPE, RateLimit

from . import entities as E
from .increase import active_raise_micro
from llmgw.core.timeutil import parse_instant_ms

MANAGED_TYPES = ("org", "workspace", "user", "budget", MODELS_TYPE, LIMITS_TYPE)
_POLICY = {"models", "limits"}
_TOP = {"version", "orgs", "defaults", "budgets", "tags", "keys"}
_ORG = {"metadata", "timezone", "budgets", "projects", "exceptions", "defaults", "tags", "workspaces", "users"} | _POLICY
_WS = {"metadata", "budgets", "projects", "exceptions"} | _POLICY
_USER = {"workspace", "email", "metadata", "budgets", "projects", "exceptions"} | _POLICY
_KEY = {"allowed_models", "tags", "budgets", "limits"}


@dataclass(frozen=True, slots=True)
class Change:
    action: str                         # create, update, delete
    before: ConfigRecord | None
    record: ConfigRecord                # what to append


def load(text: str) -> dict[str, Any]:
    doc = yaml.safe_load(text) or {}
    if not isinstance(doc, dict):
        raise ValueError("expected a mapping at the top level (orgs:, defaults:, keys:)")
    return doc


def _keys(where: str, node: Any, allowed: set[str]) -> dict[str, Any]:
    if node is None:
        return {}
    if not isinstance(node, dict):
        raise ValueError(f"{where}: expected a mapping")
    if unknown := sorted(set(node) - allowed):
        raise ValueError(f"{where}: unknown field(s) {', '.join(map(str, unknown))}; "
                         f"expected {', '.join(sorted(allowed))}")
    return node


def _limit(where: str, value: Any) -> dict[str, Any]:
    """``50`` or ``"12.50"`` (USD), or ``{limit_usd: 50, action: downgrade, downgrade_to: ...,
    hold: strict, client_tags: true}``."""
    if isinstance(value, dict):
        spec = _keys(where, value, {"limit_usd", "action", "downgrade_to", "hold", "client_tags"})
        if "limit_usd" not in spec:
            raise ValueError(f"{where}: missing limit_usd")
        if "client_tags" in spec and not isinstance(spec["client_tags"], bool):
            raise ValueError(f"{where}.client_tags: expected true or false")
        return {"limit_micro_usd": usd_to_micro(str(spec["limit_usd"])),
                **{k: str(spec[k]) for k in ("action", "downgrade_to") if spec.get(k)},
                **({"hold": parse_hold(str(spec["hold"]))} if "hold" in spec else {}),
                **({"client_tags": spec["client_tags"]} if "client_tags" in spec else {})}
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{where}: expected a USD amount")
    return {"limit_micro_usd": usd_to_micro(str(value))}


def _windows(where: str, node: Any) -> list[tuple[str, dict[str, Any]]]:
    spec = _keys(where, node, set(WINDOWS))
    return [(w, _limit(f"{where}.{w}", v)) for w, v in spec.items()]


class _Desired:
    def __init__(self, actor: str, reason: str, now_ms: int) -> None:
        self.actor, self.reason, self.now_ms = actor, reason, now_ms
        self.records: dict[str, ConfigRecord] = {}

    def add(self, rec: ConfigRecord, where: str) -> None:
        if rec.id in self.records:
            raise ValueError(f"{where}: {rec.id} is declared twice")
        self.records[rec.id] = rec

    def budget(self, where: str, scope_kind: str, name: str, org: str, window: str, spec: dict[str, Any],
               *, tag: str = "", kind: str = "budget", until_ms: int = 0) -> None:
        b = Budget(scope_kind, name, window, spec["limit_micro_usd"], org=org, tag=tag, kind=kind,
                   until_ms=until_ms,
                   **{k: v for k, v in spec.items() if k in ("action", "downgrade_to", "hold", "client_tags")})
        self.add(b.record(actor=self.actor, reason=self.reason), where)

    def policy(self, where: str, node: dict[str, Any], scope_kind: str, name: str, org: str) -> None:
        """``models`` (an allow-list of glob patterns) and ``limits`` (rpm, tpm, rpd, tpd) of one scope."""
        if node.get("models") is not None:
            pats = node["models"]
            if not isinstance(pats, list) or not pats or not all(isinstance(m, str) and m for m in pats):
                raise ValueError(f"{where}.models: expected a list of model names or glob patterns")
            self.add(ModelList(scope_kind, name, tuple(pats), org).record(self.actor, self.reason), where)
        for metric, v in _keys(f"{where}.limits", node.get("limits"), set(METRICS)).items():
            spec = _keys(f"{where}.limits.{metric}", v, {"limit", "burst"}) if isinstance(v, dict) else {"limit": v}
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in spec.values()) or "limit" not in spec:
                raise ValueError(f"{where}.limits.{metric}: expected an integer, or {{limit: N, burst: M}}")
            lim = RateLimit(scope_kind, name, metric, spec["limit"], spec.get("burst", 0), org)
            self.add(lim.record(self.actor, self.reason), where)

    def scoped(self, where: str, node: dict[str, Any], scope_kind: str, name: str, org: str) -> None:
        """``budgets``, ``projects`` (tag-narrowed budgets), ``exceptions``, ``models`` and ``limits``."""
        self.policy(where, node, scope_kind, name, org)
        for w, spec in _windows(f"{where}.budgets", node.get("budgets")):
            self.budget(where, scope_kind, name, org, w, spec)
        for tag, windows in (node.get("projects") or {}).items():
            if ":" not in str(tag):
                raise ValueError(f"{where}.projects: {tag!r} is not a NAME:VALUE tag")
            for w, spec in _windows(f"{where}.projects.{tag}", windows):
                self.budget(where, scope_kind, name, org, w, spec, tag=str(tag))
        for i, exc in enumerate(node.get("exceptions") or ()):
            at = f"{where}.exceptions[{i}]"
            e = _keys(at, exc, {"tag", "window", "limit_usd", "until", "client_tags"})
            if not e.get("tag") or e.get("window") not in WINDOWS or "until" not in e or "limit_usd" not in e:
                raise ValueError(f"{at}: an exception needs tag, window, limit_usd and until")
            if not isinstance(e.get("client_tags", False), bool):
                raise ValueError(f"{at}.client_tags: expected true or false")
            spec = {**_limit(at, e["limit_usd"]), "client_tags": e.get("client_tags", False)}
            self.budget(at, scope_kind, name, org, e["window"], spec, tag=str(e["tag"]),
                        kind="exception", until_ms=parse_instant_ms(str(e["until"]), self.now_ms))

    def defaults(self, where: str, node: Any, org: str) -> None:
        """Per scope kind: a default budget per window, and default ``models`` and ``limits``."""
        for kind, spec in _keys(where, node, {"org", "workspace", "user", "key"}).items():
            spec = dict(_keys(f"{where}.{kind}", spec, set(WINDOWS) | _POLICY))
            self.policy(f"{where}.{kind}", spec, kind, "*", org)
            for w, limit in _windows(f"{where}.{kind}", {k: v for k, v in spec.items() if k in WINDOWS}):
                self.budget(where, kind, "*", org, w, limit, kind="default")

    def tags(self, where: str, node: Any, org: str) -> None:
        for tag, windows in (node or {}).items():
            for w, spec in _windows(f"{where}.{tag}", windows):
                self.budget(where, "tag", str(tag), org, w, spec)


def desired_records(doc: Mapping[str, Any], *, actor: str, reason: str, now_ms: int) -> dict[str, ConfigRecord]:
    _keys("top level", doc, _TOP)
    d = _Desired(actor, reason, now_ms)
    d.defaults("defaults", doc.get("defaults"), "")
    d.tags("tags", doc.get("tags"), "")
    for org, node in (doc.get("orgs") or {}).items():
        where = f"orgs.{org}"
        o = _keys(where, node, _ORG)
        try:
            d.add(E.org_record(str(org), o.get("metadata"), actor, reason, o.get("timezone")), where)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        d.scoped(where, o, "org", str(org), str(org))
        d.defaults(f"{where}.defaults", o.get("defaults"), str(org))
        d.tags(f"{where}.tags", o.get("tags"), str(org))
        for ws, wnode in (o.get("workspaces") or {}).items():
            at = f"{where}.workspaces.{ws}"
            w = _keys(at, wnode, _WS)
            d.add(E.workspace_record(str(org), str(ws), w.get("metadata"), actor, reason), at)
            d.scoped(at, w, "workspace", str(ws), str(org))
        for user, unode in (o.get("users") or {}).items():
            at = f"{where}.users.{user}"
            u = _keys(at, unode, _USER)
            d.add(E.user_record(str(org), str(user), str(u.get("workspace") or ""), u.get("metadata"), actor,
                                reason, email=str(u.get("email") or "")), at)
            d.scoped(at, u, "user", str(user), str(org))
    for key_id, knode in (doc.get("keys") or {}).items():
        k = _keys(f"keys.{key_id}", knode, _KEY)
        d.scoped(f"keys.{key_id}", k, "key", str(key_id), "")     # budgets and limits; models live on the key
    return d.records


def plan(state: ConfigState, doc: Mapping[str, Any], *, actor: str = "apply", reason: str = "",
         now_ms: int) -> list[Change]:
    want = desired_records(doc, actor=actor, reason=reason, now_ms=now_ms)
    changes: list[Change] = []
    for rid, rec in want.items():
        cur = state.records.get(rid)
        data = dict(rec.data or {})
        if rec.type == "budget" and cur is not None and cur.data:
            raised = active_raise_micro(cur.data, now_ms)
            if raised:                       # keep an approved raise on top of the declared limit
                data["limit_micro_usd"] += raised
                data["raises"] = [r for r in cur.data["raises"] if int(r["until_ms"]) > now_ms]
        if cur is None or cur.data is None:
            changes.append(Change("create", None, rec))
        elif cur.data != data:
            changes.append(Change("update", cur, ConfigRecord(rid, rec.type, data, rec.ts_ms, actor, reason)))
    declared_keys = {str(k) for k in (doc.get("keys") or {})}
    for rid, cur in sorted(state.records.items()):
        if cur.type not in MANAGED_TYPES or rid in want or cur.data is None:
            continue
        if cur.data.get("scope_kind") == "key" and cur.data.get("name") not in declared_keys | {"*"}:
            continue                         # keys are left alone unless the document declares them
        if cur.data.get("created_by_raise") and active_raise_micro(cur.data, now_ms):
            continue                         # a raise's own budget ends with the raise
        changes.append(Change("delete", cur, ConfigRecord(rid, cur.type, None, now_ms, actor, reason)))
    changes.extend(_key_changes(state, doc, actor, reason))
    return changes


def _key_changes(state: ConfigState, doc: Mapping[str, Any], actor: str, reason: str) -> list[Change]:
    out = []
    for key_id, node in (doc.get("keys") or {}).items():
        cur = state.get("key", str(key_id))
        if cur is None or cur.data is None:
            raise ValueError(f"keys.{key_id}: no such key (apply never mints keys; use `llmgw keys create`)")
        declared = {f: node[f] for f in ("allowed_models", "tags") if node and f in node}
        if not declared:
            continue
        new = E.update_key(cur, declared, actor, reason)
        if new.data != cur.data:
            out.append(Change("update", cur, new))
    return out


def _fmt(field: str, value: Any) -> str:
    if field == "limit_micro_usd" and isinstance(value, int):
        return micro_to_usd(value)
    return repr(value)


def render(changes: list[Change]) -> list[str]:
    """One line per change: ``+ create``, ``~ update`` (with the fields that change), ``- delete``."""
    lines = []
    for c in changes:
        if c.action == "create":
            lines.append(f"+ create {c.record.id}  {_summary(c.record)}")
        elif c.action == "delete":
            lines.append(f"- delete {c.record.id}")
        else:
            before, after = (c.before.data if c.before else None) or {}, c.record.data or {}
            diffs = [f"{k}: {_fmt(k, before.get(k))} -> {_fmt(k, after.get(k))}"
                     for k in sorted({*before, *after}) if before.get(k) != after.get(k)]
            lines.append(f"~ update {c.record.id}  {'; '.join(diffs)}")
    return lines


def _summary(rec: ConfigRecord) -> str:
    if rec.type == "budget" and rec.data:
        return Budget.from_record(rec).describe()
    if rec.type == LIMITS_TYPE and rec.data:
        return RateLimit.from_record(rec).describe()
    return ", ".join(f"{k}={v!r}" for k, v in (rec.data or {}).items() if v not in ("", {}, [], None))
