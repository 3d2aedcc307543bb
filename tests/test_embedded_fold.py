"""The embedded ledger computes an event's spend keys once, at submit, and folds with them after the
write: the folded totals must be exactly the reference fold of its log, and the view's local part
must be empty once everything is written, whatever the events (tags, rejections, zero cost, many
orgs) and even when an org's time zone changes between the submit and the write."""
from __future__ import annotations

import random
from pathlib import Path

from llmgw.core.events import OK, REJECTED_BUDGET, Tokens, UsageEvent, new_event_id
from llmgw.ledger.embedded import EmbeddedLedger, log_events, log_path
from llmgw.ledger.fold import fold_all

# 2026-11-30T23:30:00Z: half an hour before a UTC month ends, so time zones move windows.
LATE_NOV_MS = 1_796_081_400_000


def random_event(rnd: random.Random) -> UsageEvent:
    start = LATE_NOV_MS + rnd.randrange(0, 3_600_000)
    tags = tuple(rnd.sample(["project:apollo", "team:core", "env:prod", "project:zeus"], rnd.randrange(0, 3)))
    return UsageEvent(event_id=new_event_id(start), ts_start_ms=start, ts_end_ms=start + 100,
                      org=rnd.choice(["acme", "globex", "initech"]), workspace=rnd.choice(["a", "b"]),
                      user=rnd.choice(["ada", "bob"]), key_id=rnd.choice(["k1", "k2"]), provider="openai",
                      api="chat", model_requested="gpt-4o", model_served="gpt-4o",
                      tokens=Tokens(input=rnd.randrange(0, 500), output=rnd.randrange(0, 500)),
                      cost_micro_usd=rnd.choice([0, 1, rnd.randrange(0, 10**6)]), tags=tags,
                      outcome=rnd.choice([OK, OK, OK, REJECTED_BUDGET]))


async def test_folded_totals_are_the_reference_fold_of_the_log(tmp_path: Path) -> None:
    tzs = {"acme": "America/New_York", "globex": "Asia/Kolkata"}
    tz_of = lambda org: tzs.get(org, "UTC")  # noqa: E731
    ledger = EmbeddedLedger(tmp_path, tz_of=tz_of)
    await ledger.start()
    rnd = random.Random(7)
    for _ in range(400):
        ledger.submit(random_event(rnd))
    await ledger.flush()
    events = log_events(log_path(tmp_path))
    assert len(events) == 400
    want = fold_all(events, tz_of)
    assert ledger.view.folded == want
    assert ledger.view.local_backlog == 0
    assert all(ledger.view.spent_nano(k) == t.spend_nano_usd for k, t in want.items())
    # two keys spelled out, summed here by hand rather than by the fold's own key function: acme's
    # November in New York (from 04:00 UTC on the 1st) holds all of acme's calls; initech's UTC
    # December holds its calls from midnight on. A rejected call is in the log but costs nothing.
    for key, org, since in (("org|acme|month|1793505600000", "acme", 0),
                            ("org|initech|month|1796083200000", "initech", 1_796_083_200_000)):
        ok = [e for e in events if e.org == org and e.ts_start_ms >= since and e.outcome == OK]
        assert ok and ledger.view.folded[key].spend_nano_usd == sum(e.cost_nano_usd for e in ok)
        assert ledger.view.folded[key].requests == len(ok)
    await ledger.stop()


async def test_a_time_zone_changed_between_submit_and_write_folds_in_the_new_zone(tmp_path: Path) -> None:
    tzs = {"acme": "UTC"}
    tz_of = lambda org: tzs.get(org, "UTC")  # noqa: E731
    ledger = EmbeddedLedger(tmp_path, tz_of=tz_of, group_commit_s=0.05)
    await ledger.start()
    rnd = random.Random(11)
    for _ in range(50):
        ledger.submit(random_event(rnd).with_(org="acme", outcome=OK, cost_micro_usd=1000))
    tzs["acme"] = "Asia/Tokyo"            # before the group commit writes them: the fold sees Tokyo
    await ledger.flush()
    events = log_events(log_path(tmp_path))
    assert ledger.view.folded == fold_all(events, tz_of)
    assert any(k.endswith("|month|1796050800000") for k in ledger.view.folded)     # Dec 1 in Tokyo
    await ledger.stop()


def test_totals_plus_sums_every_field() -> None:
    """``Totals.plus`` sets its fields one by one: a field added to Totals must be summed there too."""
    from dataclasses import fields

    from llmgw.ledger.fold import Totals
    names = [f.name for f in fields(Totals)]
    a = Totals(**{n: i + 1 for i, n in enumerate(names)})
    b = Totals(**{n: 10 * (i + 1) for i, n in enumerate(names)})
    assert a.plus(b) == Totals(**{n: 11 * (i + 1) for i, n in enumerate(names)})
