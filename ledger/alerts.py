"""Budget alerts as pure functions: which alerts the spend calls for, and their words.

No I/O, no clock: the drivers (``ledger.alerting``) pass the snapshot, the
budgets, what already fired and the time, and persist and deliver the result.

Resolution (``subjects_of``): every spend key of a *current* window is matched
against the budgets the gateway enforces, through ``BudgetBook.effective`` (the
same function the proxy checks calls with), so explicit budgets, defaults
(every entity of their kind that has spend), tag budgets, project-narrowed
budgets and time-boxed exceptions alert exactly where they cap, carve-outs
included. Windows that have ended are never evaluated.

Thresholds (``AlertPolicy``; default 50/75/90/100 %): threshold ``t`` is
crossed when ``spent * 100 >= limit * t`` (integers, exact). Each fires once
per *alert key* ``budget_id|window_start|threshold`` at a given limit: a
fired key is armed again only if the budget's limit changes (an approved
increase re-arms the thresholds). When one evaluation finds several new
thresholds crossed, only the highest is delivered; the lower ones are recorded
as superseded, so a jump from 40 % to 95 % sends one alert, not three.

Runway (``runway_hit_ms``): the burn rate is the window's average so far,
``spent / (now - window_start)``; the alert fires, once per (budget, window),
when that rate reaches the limit before the window ends, and only after
``runway_min_elapsed_pct`` of the window has passed (10 % by default: three
days of a month, 2.4 hours of a day), so a busy first hour does not predict a
month.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Callable, Iterable, Mapping


from llmgw.core.budgets import Applied, Budget, BudgetBook, micro_to_usd
from llmgw.core.principal import Principal

from llmgw.core import spend_keys as F
from llmgw.core.config import ConfigState
from llmgw.ledger.fold import TzOf
from llmgw.core.spend_keys import parse_spend_key, spend_key
from llmgw.core.windows import window_bounds, zone

DEFAULT_THRESHOLDS_PCT = (50, 75, 90, 100)
THRESHOLD, RUNWAY = "threshold", "runway"
POLICY_TYPE = "alert_policy"          # config records: name = a budget's record_name, or "*"
_ADJ = {"hour": "hourly", "day": "daily", "week": "weekly", "month": "monthly"}


# -- policy --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AlertPolicy:
    thresholds_pct: tuple[int, ...] = DEFAULT_THRESHOLDS_PCT
    runway: bool = True
    runway_min_elapsed_pct: int = 10

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any], base: "AlertPolicy | None" = None) -> "AlertPolicy":
        """Fields present in ``d`` override ``base`` (the built-in defaults if None)."""
        b = base or cls()
        pcts = d.get("thresholds_pct", b.thresholds_pct)
        policy = cls(tuple(sorted({int(p) for p in pcts})), bool(d.get("runway", b.runway)),
                     int(d.get("runway_min_elapsed_pct", b.runway_min_elapsed_pct)))
        if any(p <= 0 or p > 1000 for p in policy.thresholds_pct):
            raise ValueError(f"alert thresholds must be percentages in 1..1000, got {list(pcts)}")
        if not 0 <= policy.runway_min_elapsed_pct <= 100:
            raise ValueError("runway_min_elapsed_pct must be in 0..100")
        return policy


class PolicyBook:
    """Per budget: its own ``alert_policy`` record, else the ``*`` record, else the file's default."""

    def __init__(self, state: ConfigState, default: AlertPolicy) -> None:
        self.default = default
        star = state.get(POLICY_TYPE, "*")
        self._star = AlertPolicy.from_mapping(star.data, default) if star and star.data else default
        self._own = {r.id.split(":", 1)[1]: r.data for r in state.of_type(POLICY_TYPE) if r.data}

    def of(self, budget: Budget) -> AlertPolicy:
        own = self._own.get(budget.record_name)
        return AlertPolicy.from_mapping(own, self._star) if own else self._star


# -- subjects: a budget applied to one spend key -------------------------------------------------
@dataclass(frozen=True, slots=True)
class Subject:
    budget: Budget
    budget_id: str                 # origin@dim:entity: unique per budget and entity it caps
    dim: str
    entity: str
    window: str
    start_ms: int
    end_ms: int
    tz: str
    org: str
    carve_keys: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return spend_key(self.dim, self.entity, self.window, self.start_ms)

    def spent(self, spent_of: Callable[[str], int]) -> int:
        return spent_of(self.key) - sum(spent_of(k) for k in self.carve_keys)


def _org_of(dim: str, entity: str, key_orgs: Mapping[str, str]) -> str:
    if dim == F.KEY:
        return key_orgs.get(entity, "")
    return entity.split("/", 1)[0]


def _caller(dim: str, entity: str, key_orgs: Mapping[str, str]) -> tuple[Principal, tuple[str, ...]] | None:
    """A principal (and tags) whose calls count against exactly this (dim, entity)."""
    if dim == F.KEY:
        return Principal(entity, key_orgs.get(entity, ""), "", ""), ()
    parts = entity.split("/", 2)
    if dim == F.ORG:
        return Principal("", entity, "", ""), ()
    if dim in (F.WORKSPACE, F.USER) and len(parts) >= 2:
        org, name = parts[0], entity.split("/", 1)[1]
        return Principal("", org, name if dim == F.WORKSPACE else "", name if dim == F.USER else ""), ()
    if dim == F.TAG and len(parts) >= 2:
        org, tag = entity.split("/", 1)
        return Principal("", org, "", ""), (tag,)
    if dim in (F.WORKSPACE_TAG, F.USER_TAG) and len(parts) == 3:
        org, name, tag = parts
        return Principal("", org, name if dim == F.WORKSPACE_TAG else "", name if dim == F.USER_TAG else ""), (tag,)
    return None


def budget_id(a: Applied) -> str:
    origin = a.budget.origin or f"budget:{a.budget.record_name}"
    return f"{origin}@{a.spend_dim}:{a.entity}"


def subjects_of(keys: Iterable[str], book: BudgetBook, now_ms: int, tz_of: TzOf,
                key_orgs: Mapping[str, str] | None = None) -> list[Subject]:
    """Every budget that caps a spend key of a window containing ``now_ms``."""
    key_orgs = key_orgs or {}
    applied_cache: dict[tuple[str, str], list[Applied]] = {}
    current: dict[tuple[str, str], tuple[int, int]] = {}      # (window, tz) -> bounds around now
    out: list[Subject] = []
    for key in keys:
        try:
            dim, entity, window, start_ms = parse_spend_key(key)
        except ValueError:
            continue
        org = _org_of(dim, entity, key_orgs)
        tz = tz_of(org)
        bounds = current.get((window, tz))
        if bounds is None:
            try:
                bounds = current[(window, tz)] = window_bounds(window, now_ms, tz)
            except ValueError:
                continue
        start, end = bounds
        if start != start_ms:
            continue
        applied = applied_cache.get((dim, entity))
        if applied is None:
            caller = _caller(dim, entity, key_orgs)
            found = book.effective(caller[0], caller[1], now_ms) if caller else []
            applied = applied_cache[(dim, entity)] = [a for a in found if a.spend_dim == dim and a.entity == entity]
        for a in applied:
            if a.budget.window != window:
                continue
            carve = tuple(spend_key(d, e, window, start_ms) for d, e in a.carve_out)
            out.append(Subject(a.budget, budget_id(a), dim, entity, window, start_ms, end, tz, org, carve))
    return out


# -- alerts --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Alert:
    key: str                    # budget_id|window_start_ms|threshold: fired once (per limit)
    kind: str                   # threshold, runway
    threshold_pct: int          # 0 for runway
    budget_id: str
    budget_origin: str
    budget_kind: str            # budget, default, exception
    budget_text: str            # Budget.describe()
    action: str                 # refuse, downgrade
    scope: str                  # "workspace acme/backend", "user acme/alice on project:x"
    dim: str
    entity: str
    org: str
    window: str
    window_start_ms: int
    window_end_ms: int
    tz: str
    spent_micro_usd: int
    limit_micro_usd: int
    projected_ms: int           # runway: when the cap is reached at this rate; 0 otherwise
    fired_ms: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Alert":
        return cls(**{f.name: d[f.name] for f in fields(cls)})

    @property
    def label(self) -> str:
        return "runway" if self.kind == RUNWAY else f"{self.threshold_pct}%"


@dataclass(frozen=True, slots=True)
class Evaluation:
    fire: list[Alert]
    superseded: list[Alert]

    def __bool__(self) -> bool:
        return bool(self.fire or self.superseded)


def alert_key(budget_id_: str, window_start_ms: int, label: str) -> str:
    return f"{budget_id_}|{window_start_ms}|{label}"


def runway_hit_ms(spent: int, limit: int, start_ms: int, now_ms: int) -> int | None:
    """When the window-average burn rate reaches ``limit`` (None if it never spends or already did)."""
    elapsed = now_ms - start_ms
    if spent <= 0 or elapsed <= 0 or spent >= limit:
        return None
    return start_ms + -(-limit * elapsed // spent)


def evaluate(subjects: Iterable[Subject], spent_of: Callable[[str], int], fired: Mapping[str, int],
             policy_of: Callable[[Budget], AlertPolicy], now_ms: int) -> Evaluation:
    """New alerts. ``fired`` maps an alert key to the limit it fired at."""
    fire: list[Alert] = []
    superseded: list[Alert] = []
    for s in subjects:
        limit = s.budget.limit_micro_usd
        spent = s.spent(spent_of)
        if limit <= 0 or spent <= 0:
            continue
        pol = policy_of(s.budget)
        done = {t for t in pol.thresholds_pct if fired.get(alert_key(s.budget_id, s.start_ms, str(t))) == limit}
        new = [t for t in pol.thresholds_pct if spent * 100 >= limit * t and t not in done]
        if new:
            top = max(new)
            deliver_top = not any(t > top for t in done)
            for t in new:
                a = _threshold_alert(s, t, spent, now_ms)
                (fire if t == top and deliver_top else superseded).append(a)
        if pol.runway and fired.get(alert_key(s.budget_id, s.start_ms, RUNWAY)) != limit:
            runway = _runway_alert(s, spent, now_ms, pol.runway_min_elapsed_pct)
            if runway is not None:
                fire.append(runway)
    return Evaluation(fire, superseded)


def _runway_alert(s: Subject, spent: int, now_ms: int, min_elapsed_pct: int) -> Alert | None:
    if (now_ms - s.start_ms) * 100 < (s.end_ms - s.start_ms) * min_elapsed_pct:
        return None
    hit = runway_hit_ms(spent, s.budget.limit_micro_usd, s.start_ms, now_ms)
    if hit is None or hit >= s.end_ms:
        return None
    b = s.budget
    scope = scope_label(s.dim, s.entity)
    msg = (f"At this rate, {scope} hits its {_ADJ[b.window]} cap of {micro_to_usd(b.limit_micro_usd)} "
           f"{when_phrase(b.window, hit, s.tz)}, before the window resets {_moment(s.end_ms, s.tz)} "
           f"(spent {micro_to_usd(spent)} since {_moment(s.start_ms, s.tz)}).")
    return _alert(s, RUNWAY, 0, spent, hit, now_ms, msg)


def _threshold_alert(s: Subject, pct: int, spent: int, now_ms: int) -> Alert:
    b = s.budget
    scope = scope_label(s.dim, s.entity)
    used = f"{micro_to_usd(spent)} of {micro_to_usd(b.limit_micro_usd)}"
    resets = f"resets {_moment(s.end_ms, s.tz)}"
    if spent >= b.limit_micro_usd:
        then = (f"calls are downgraded to {b.downgrade_to}" if b.action == "downgrade" and b.downgrade_to
                else "calls are refused")
        msg = f"{scope} has reached its {_ADJ[b.window]} budget ({used}): {then} until it {resets}."
    else:
        msg = (f"{scope} has used {spent * 100 // b.limit_micro_usd}% of its {_ADJ[b.window]} budget "
               f"({used}, alert at {pct}%); it {resets}.")
    return _alert(s, THRESHOLD, pct, spent, 0, now_ms, msg[0].upper() + msg[1:])


def _alert(s: Subject, kind: str, pct: int, spent: int, projected_ms: int, now_ms: int, msg: str) -> Alert:
    b = s.budget
    label = RUNWAY if kind == RUNWAY else str(pct)
    return Alert(alert_key(s.budget_id, s.start_ms, label), kind, pct, s.budget_id, b.origin, b.kind,
                 b.describe(), b.action, scope_label(s.dim, s.entity), s.dim, s.entity, s.org, s.window,
                 s.start_ms, s.end_ms, s.tz, spent, b.limit_micro_usd, projected_ms, now_ms, msg)


# -- words ---------------------------------------------------------------------------------------
def scope_label(dim: str, entity: str) -> str:
    if dim in (F.ORG, F.WORKSPACE, F.USER, F.KEY):
        return f"{dim} {entity}"
    if dim == F.TAG:
        org, tag = entity.split("/", 1)
        return f"{tag} in org {org}"
    org, name, tag = entity.split("/", 2)
    return f"{dim.split('.')[0]} {org}/{name} on {tag}"


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _local(ts_ms: int, tz: str) -> datetime:
    return datetime.fromtimestamp(ts_ms / 1000, zone(tz))


def _tzname(tz: str) -> str:
    return tz or "UTC"


def when_phrase(window: str, ts_ms: int, tz: str) -> str:
    """'on the 19th' for a month, 'on Thursday the 20th' for a week, 'at 15:40 UTC' within a day."""
    dt = _local(ts_ms, tz)
    if window == "month":
        return f"on the {ordinal(dt.day)}"
    if window == "week":
        return f"on {dt:%A} the {ordinal(dt.day)}"
    return f"at {dt:%H:%M} {_tzname(tz)}"


def _moment(ts_ms: int, tz: str) -> str:
    dt = _local(ts_ms, tz)
    return f"{dt:%a} {dt.day} {dt:%b %H:%M} {_tzname(tz)}"


def usd_text(micro: int) -> str:
    """Exact decimal dollars for payloads: '12.345678' (no float anywhere)."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), 1_000_000)
    return f"{sign}{whole}.{frac:06d}"


__all__ = ["Alert", "AlertPolicy", "DEFAULT_THRESHOLDS_PCT", "Evaluation", "POLICY_TYPE", "PolicyBook",
           "RUNWAY", "Subject", "THRESHOLD", "alert_key", "budget_id", "evaluate", "ordinal", "runway_hit_ms",
           "scope_label", "subjects_of", "usd_text", "when_phrase"]
