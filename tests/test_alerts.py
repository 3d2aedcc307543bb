"""Alert evaluation as pure functions: resolution against spend keys, thresholds once, runway words,
payload shapes."""
from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import orjson
import pytest

from llmgw.ledger.alerts import (RUNWAY, AlertPolicy, PolicyBook, evaluate, ordinal, runway_hit_ms, subjects_of,
                                 when_phrase)
from llmgw.core.config import ConfigRecord, ConfigState
from llmgw.core.spend_keys import spend_key
from llmgw.ledger.webhooks import Webhook, json_payload, render, slack_payload
from llmgw.core.windows import window_bounds
from llmgw.core.budgets import Budget, BudgetBook

UTC = timezone.utc


def ms(*args: int, tz: str = "UTC") -> int:
    zone = UTC if tz == "UTC" else ZoneInfo(tz)
    return int(datetime(*args, tzinfo=zone).timestamp() * 1000)  # type: ignore[misc]


def budget(scope: str, window: str, usd: int, **kw: object) -> Budget:
    kind, name = scope.split(":", 1)
    return Budget.from_record(Budget(kind, name, window, usd * 1_000_000, **kw).record())  # type: ignore[arg-type]


def key(dim: str, entity: str, window: str, now: int, tz: str = "UTC") -> str:
    return spend_key(dim, entity, window, window_bounds(window, now, tz)[0])


def run(budgets: list[Budget], totals: dict[str, int], now: int, fired: dict[str, int] | None = None,
        policy: AlertPolicy = AlertPolicy(runway=False), tz: str = "UTC"):
    book = BudgetBook(budgets)
    subjects = subjects_of(totals, book, now, lambda org: tz)
    return evaluate(subjects, lambda k: totals.get(k, 0), fired or {}, lambda b: policy, now)


NOW = ms(2025, 11, 10, 12)


def test_highest_new_threshold_fires_lower_ones_are_superseded_and_nothing_fires_twice():
    b = budget("workspace:backend", "month", 100)
    k = key("workspace", "acme/backend", "month", NOW)
    first = run([b], {k: 60_000_000}, NOW)
    assert [a.threshold_pct for a in first.fire] == [50] and not first.superseded
    fired = {a.key: a.limit_micro_usd for a in first.fire}
    assert not run([b], {k: 70_000_000}, NOW, fired)                      # nothing new below 75
    jump = run([b], {k: 95_000_000}, NOW, fired)                          # 60% -> 95%: one alert
    assert [a.threshold_pct for a in jump.fire] == [90]
    assert [a.threshold_pct for a in jump.superseded] == [75]
    fired.update({a.key: a.limit_micro_usd for a in jump.fire + jump.superseded})
    assert not run([b], {k: 99_999_999}, NOW, fired)
    cap = run([b], {k: 100_000_000}, NOW, fired)                          # exactly at the cap: 100% crossed
    assert [a.threshold_pct for a in cap.fire] == [100]
    assert "reached its monthly budget" in cap.fire[0].message and "refused" in cap.fire[0].message


def test_the_alert_key_is_budget_window_start_threshold():
    b = budget("workspace:backend", "month", 100)
    start = window_bounds("month", NOW)[0]
    (a,) = run([b], {key("workspace", "acme/backend", "month", NOW): 91_000_000}, NOW).fire
    assert a.key == f"{b.origin}@workspace:acme/backend|{start}|90"
    assert a.budget_id == f"{b.origin}@workspace:acme/backend"


def test_a_changed_limit_rearms_thresholds():
    k = key("user", "acme/alice", "day", NOW)
    old = budget("user:alice", "day", 10)
    (a,) = run([old], {k: 9_500_000}, NOW).fire
    fired = {a.key: a.limit_micro_usd}
    raised = budget("user:alice", "day", 20)                              # an approved increase
    assert raised.origin == old.origin
    assert not run([raised], {k: 9_500_000}, NOW, fired)                 # 47% of the new cap
    (b,) = run([raised], {k: 18_500_000}, NOW, fired).fire               # 92% of the new cap fires again
    assert b.key == a.key and b.limit_micro_usd == 20_000_000


def test_defaults_apply_to_every_entity_with_spend_and_an_explicit_budget_wins():
    default = budget("user:*", "day", 10, kind="default")
    bob = budget("user:bob", "day", 100)
    totals = {key("user", "acme/alice", "day", NOW): 9_000_000, key("user", "beta/carol", "day", NOW): 9_000_000,
              key("user", "acme/bob", "day", NOW): 9_000_000}
    fired = run([default, bob], totals, NOW).fire
    assert sorted(a.entity for a in fired) == ["acme/alice", "beta/carol"]   # bob: $9 of $100, no alert
    assert all(a.budget_kind == "default" and a.threshold_pct == 90 for a in fired)


def test_org_pinned_budget_matches_only_its_org():
    b = budget("workspace:backend", "month", 10, org="acme")
    totals = {key("workspace", "acme/backend", "month", NOW): 9_000_000,
              key("workspace", "beta/backend", "month", NOW): 9_000_000}
    assert [a.entity for a in run([b], totals, NOW).fire] == ["acme/backend"]


def test_closed_windows_are_never_evaluated():
    b = budget("user:alice", "day", 10)
    yesterday = key("user", "acme/alice", "day", NOW - 86_400_000)
    assert not run([b], {yesterday: 9_900_000}, NOW)


def test_exception_alerts_on_its_project_and_the_plain_cap_excludes_it():
    plain = budget("user:erin", "day", 10)
    exc = budget("user:erin", "day", 50, tag="project:payments", kind="exception", until_ms=NOW + 86_400_000)
    totals = {key("user", "acme/erin", "day", NOW): 48_000_000,           # all of erin's spend
              key("user.tag", "acme/erin/project:payments", "day", NOW): 46_000_000}
    fired = run([plain, exc], totals, NOW).fire
    by_entity = {a.entity: a for a in fired}
    assert by_entity["acme/erin/project:payments"].threshold_pct == 90    # $46 of the $50 exception
    assert by_entity["acme/erin/project:payments"].budget_kind == "exception"
    assert "acme/erin" not in by_entity                                   # $2 outside the project: 20%
    expired = budget("user:erin", "day", 50, tag="project:payments", kind="exception", until_ms=NOW - 1)
    fired = run([plain, expired], totals, NOW).fire
    assert [(a.entity, a.threshold_pct) for a in fired] == [("acme/erin", 100)]


def test_tag_budget_alerts_on_the_org_project_key():
    b = budget("tag:project:search", "week", 10)
    totals = {key("tag", "acme/project:search", "week", NOW): 7_600_000}
    (a,) = run([b], totals, NOW).fire
    assert a.threshold_pct == 75 and a.scope == "project:search in org acme"


def test_key_budget_uses_the_key_records_org_for_its_time_zone():
    b = budget("key:k123", "day", 10)
    now = ms(2025, 11, 10, 23, 30)              # 15:30 in Los Angeles, a different UTC day
    k = key("key", "k123", "day", now, tz="America/Los_Angeles")
    subjects = subjects_of({k: 1}, BudgetBook([b]), now, lambda org: "America/Los_Angeles" if org == "acme" else "UTC",
                           {"k123": "acme"})
    assert [s.tz for s in subjects] == ["America/Los_Angeles"]


def test_zero_limits_and_zero_spend_fire_nothing():
    totals = {key("user", "acme/a", "day", NOW): 0, key("user", "acme/b", "day", NOW): 5}
    assert not run([budget("user:a", "day", 10), budget("user:b", "day", 0)], totals, NOW)


# -- runway ----------------------------------------------------------------------------------------
def test_runway_names_the_day_of_the_month_the_cap_is_hit():
    b = budget("workspace:backend", "month", 100)
    now = ms(2025, 11, 10)                        # 9 days into November
    k = key("workspace", "acme/backend", "month", now)
    ev = run([b], {k: 50_000_000}, now, policy=AlertPolicy(thresholds_pct=(), runway=True))
    (a,) = ev.fire
    assert a.kind == RUNWAY and a.key.endswith("|runway")
    assert a.projected_ms == ms(2025, 11, 19)     # $50 in 9 days -> $100 after 18 days
    assert "At this rate, workspace acme/backend hits its monthly cap of $100.00 on the 19th" in a.message
    fired = {a.key: a.limit_micro_usd}
    assert not run([b], {k: 60_000_000}, now + 3_600_000, fired, policy=AlertPolicy(thresholds_pct=(), runway=True))


def test_runway_day_is_the_org_time_zones_day():
    tz = "America/Los_Angeles"
    b = budget("workspace:backend", "month", 100)
    now = ms(2025, 11, 10, tz=tz)
    start = ms(2025, 11, 1, tz=tz)
    k = spend_key("workspace", "acme/backend", "month", start)
    spent = 100_000_000 * (now - start) // (ms(2025, 11, 19, 20, tz=tz) - start)   # hits at 20:00 local on the 19th
    (a,) = run([b], {k: spent + 1}, now, policy=AlertPolicy(thresholds_pct=(), runway=True), tz=tz).fire
    assert datetime.fromtimestamp(a.projected_ms / 1000, UTC).day == 20      # already the 20th in UTC
    assert "on the 19th" in a.message


def test_runway_waits_for_enough_of_the_window_and_ignores_safe_rates():
    b = budget("workspace:backend", "month", 100)
    early = ms(2025, 11, 2)                          # 1 day of 30 < 10%: too early to tell
    k = key("workspace", "acme/backend", "month", early)
    pol = AlertPolicy(thresholds_pct=(), runway=True)
    assert not run([b], {k: 40_000_000}, early, policy=pol)
    later = ms(2025, 11, 16)                         # half the month, 40% spent: lasts the month
    assert not run([b], {k: 40_000_000}, later, policy=pol)


@pytest.mark.parametrize(("window", "ts", "text"), [
    ("month", ms(2025, 11, 19, 8), "on the 19th"),
    ("month", ms(2025, 11, 22, 8), "on the 22nd"),
    ("week", ms(2025, 11, 20, 8), "on Thursday the 20th"),
    ("day", ms(2025, 11, 20, 15, 40), "at 15:40 UTC"),
])
def test_when_phrase(window: str, ts: int, text: str):
    assert when_phrase(window, ts, "UTC") == text


def test_ordinals():
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 31, 111)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "31st", "111th"]


def test_runway_hit_is_exact_integer_math():
    assert runway_hit_ms(1, 3, 0, 10) == 30
    assert runway_hit_ms(3, 10, 0, 10) == 34          # 33.3 rounds up: never earlier than the rate says
    assert runway_hit_ms(10, 10, 0, 10) is None
    assert runway_hit_ms(0, 10, 0, 10) is None


# -- policy ------------------------------------------------------------------------------------------
def test_thresholds_per_budget_then_global_record_then_file_default():
    own = budget("workspace:backend", "month", 100)
    other = budget("workspace:frontend", "month", 100)
    state = ConfigState()
    file_default = AlertPolicy.from_mapping({"thresholds_pct": [80]})
    assert PolicyBook(state, file_default).of(own).thresholds_pct == (80,)
    state.apply(ConfigRecord.put("alert_policy", "*", {"thresholds_pct": [60, 100]}))
    state.apply(ConfigRecord.put("alert_policy", own.record_name, {"thresholds_pct": [95], "runway": False}))
    book = PolicyBook(state, file_default)
    assert book.of(own) == AlertPolicy((95,), False)
    assert book.of(other).thresholds_pct == (60, 100)
    with pytest.raises(ValueError):
        AlertPolicy.from_mapping({"thresholds_pct": [0, 50]})


# -- payloads ----------------------------------------------------------------------------------------
def _alert():
    b = budget("workspace:backend", "month", 100)
    return run([b], {key("workspace", "acme/backend", "month", NOW): 91_234_567}, NOW).fire[0]


def test_json_payload_documents_budget_scope_window_threshold_money_reset_message():
    p = orjson.loads(render(_alert(), "json"))
    assert p["type"] == "llmgw.budget_alert" and p["version"] == 1 and p["kind"] == "threshold"
    assert p["threshold_pct"] == 90 and p["percent_used"] == 91
    assert p["spent_micro_usd"] == 91_234_567 and p["spent_usd"] == "91.234567"
    assert p["limit_micro_usd"] == 100_000_000 and p["limit_usd"] == "100.000000"
    assert p["scope"] == {"label": "workspace acme/backend", "dimension": "workspace", "entity": "acme/backend",
                          "org": "acme"}
    assert p["window"]["name"] == "month" and p["window"]["start"] == "2025-11-01T00:00:00Z"
    assert p["window_resets_at"] == "2025-12-01T00:00:00Z" == p["window"]["end"]
    assert p["budget"]["kind"] == "budget" and p["budget"]["description"].startswith("workspace backend monthly")
    assert "91% of its monthly budget" in p["message"]
    assert p == json_payload(_alert())


def assert_slack_message(p: dict) -> None:
    """The constraints Slack's incoming webhooks enforce on a message with Block Kit blocks."""
    assert set(p) <= {"text", "blocks"} and isinstance(p["text"], str) and 0 < len(p["text"]) <= 40_000
    assert isinstance(p["blocks"], list) and 0 < len(p["blocks"]) <= 50
    for block in p["blocks"]:
        assert block["type"] in {"header", "section", "context", "divider"}
        if block["type"] == "header":
            assert block["text"]["type"] == "plain_text" and 0 < len(block["text"]["text"]) <= 150
        if block["type"] == "section":
            assert "text" in block or "fields" in block
            if "text" in block:
                assert block["text"]["type"] in {"mrkdwn", "plain_text"} and 0 < len(block["text"]["text"]) <= 3000
            for f in block.get("fields", []):
                assert f["type"] in {"mrkdwn", "plain_text"} and 0 < len(f["text"]) <= 2000
            assert len(block.get("fields", [])) <= 10
        if block["type"] == "context":
            assert 0 < len(block["elements"]) <= 10
            for e in block["elements"]:
                assert e["type"] in {"mrkdwn", "plain_text", "image"} and 0 < len(e["text"]) <= 3000


def test_slack_payload_is_well_formed():
    p = slack_payload(_alert())
    assert_slack_message(p)
    assert "91% of its monthly budget" in p["text"]
    assert orjson.loads(render(_alert(), "slack")) == p


def test_webhook_urls_are_validated_and_never_shown_whole():
    h = Webhook.new("https://hooks.slack.com/services/T000/B000/SECRETTOKEN", "slack")
    assert "SECRET" not in h.safe_url and h.safe_url == "https://hooks.slack.com/..."
    assert Webhook.from_record(h.record()) == h
    with pytest.raises(ValueError):
        Webhook.new("ftp://example.com/x")
    with pytest.raises(ValueError):
        Webhook.new("https://example.com/x", "teams")
