"""Failure policy: what a workspace gets when the ledger is unreachable.

Configured in the config file (``LLMGW_CONFIG``)::

    failure_policy:
      default: {mode: fail_closed, max_stale_s: 300}
      workspaces:
        research: {mode: fail_open, max_stale_s: 900}      # any org's workspace "research"
        acme/payments: {max_stale_s: 60}                   # one org's; mode from the default

While the budget snapshot is at most ``max_stale_s`` old the call is served
as usual: budgets are checked against the last snapshot plus this replica's
own settled calls and open reservations, and events queue or spool until
the ledger takes them. Past ``max_stale_s``:

- ``fail_closed`` refuses with 503 in the client's API shape (``retry-after``);
- ``fail_open`` serves (still checked against the last snapshot) and tags
  the call's event ``llmgw:stale`` so analysts can find what was served blind.

The gateway holds the policy (``Gateway.stale_tags``); the call lifecycle asks
it right after authentication, on every call and every WebSocket turn. There is
no path that skips it: the policy is part of the gateway, not an optional part.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from llmgw.ledger.driver import LedgerHealth

from .errors import LedgerUnavailable
from llmgw.core.principal import Principal

FAIL_CLOSED = "fail_closed"
FAIL_OPEN = "fail_open"
STALE_TAG = "llmgw:stale"
_MODES = (FAIL_CLOSED, FAIL_OPEN)


@dataclass(frozen=True, slots=True)
class Rule:
    mode: str = FAIL_CLOSED
    max_stale_s: float = 300.0

    @classmethod
    def parse(cls, where: str, raw: Any, base: "Rule") -> "Rule":
        if raw is None:
            return base
        if not isinstance(raw, Mapping):
            raise ValueError(f"failure_policy.{where}: expected a mapping with mode and max_stale_s")
        unknown = set(raw) - {"mode", "max_stale_s"}
        if unknown:
            raise ValueError(f"failure_policy.{where}: unknown keys {sorted(unknown)}")
        mode = str(raw.get("mode", base.mode))
        if mode not in _MODES:
            raise ValueError(f"failure_policy.{where}.mode: {mode!r} is not one of {', '.join(_MODES)}")
        try:
            max_stale_s = float(raw.get("max_stale_s", base.max_stale_s))
        except (TypeError, ValueError):
            raise ValueError(f"failure_policy.{where}.max_stale_s: expected seconds") from None
        if max_stale_s < 0 or math.isnan(max_stale_s):
            raise ValueError(f"failure_policy.{where}.max_stale_s: must be >= 0")
        return cls(mode, max_stale_s)


@dataclass(frozen=True, slots=True)
class FailurePolicy:
    default: Rule = Rule()
    workspaces: Mapping[str, Rule] = field(default_factory=dict)
    # below this age no workspace is affected: the request path's one comparison
    tightest_s: float = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tightest_s", min([self.default.max_stale_s,
                                                    *(r.max_stale_s for r in self.workspaces.values())]))

    @classmethod
    def from_config(cls, file_config: Mapping[str, Any]) -> "FailurePolicy":
        raw = file_config.get("failure_policy")
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise ValueError("failure_policy: expected a mapping with `default` and `workspaces`")
        unknown = set(raw) - {"default", "workspaces"}
        if unknown:
            raise ValueError(f"failure_policy: unknown keys {sorted(unknown)}")
        default = Rule.parse("default", raw.get("default"), Rule())
        ws = raw.get("workspaces") or {}
        if not isinstance(ws, Mapping):
            raise ValueError("failure_policy.workspaces: expected a mapping of workspace -> rule")
        return cls(default, {str(k): Rule.parse(f"workspaces.{k}", v, default) for k, v in ws.items()})

    def rule_for(self, org: str, workspace: str) -> Rule:
        ws = self.workspaces
        if not ws:
            return self.default
        return ws.get(f"{org}/{workspace}") or ws.get(workspace) or self.default


def stale_tags(policy: FailurePolicy, health: LedgerHealth, principal: Principal) -> tuple[str, ...]:
    """Tags to add to the call (``llmgw:stale`` when served blind), or raise ``LedgerUnavailable``."""
    age = health.snapshot_age_s()
    if age <= policy.tightest_s:      # the common case: one comparison
        return ()
    rule = policy.rule_for(principal.org, principal.workspace)
    if age <= rule.max_stale_s:
        return ()
    if rule.mode == FAIL_OPEN:
        return (STALE_TAG,)
    shown = "never loaded" if math.isinf(age) else f"{age:.0f} s old"
    raise LedgerUnavailable(
        f"The budget ledger is unreachable (spend snapshot {shown}; workspace {principal.workspace} allows "
        f"{rule.max_stale_s:g} s), so this gateway cannot check budgets and refuses calls for it (fail_closed). "
        "Retry shortly; if it persists, tell the gateway's operators.",
        retry_after_s=5)
