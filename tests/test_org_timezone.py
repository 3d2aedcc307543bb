"""An org's time zone, set through the admin API or `llmgw apply`, is validated and moves the org's day and
month windows: a spent daily budget refuses until the org's local midnight and admits from it, in the
running gateway's ledger and after a restart (the embedded log is refolded by the same zone)."""
from __future__ import annotations

import os
from datetime import datetime
from zoneinfo import ZoneInfo

import aiohttp
import orjson
import pytest

from llmgw.core import events as E
from llmgw.core.windows import check_zone
from llmgw.proxy.errors import BudgetExceeded
from llmgw.core.principal import Principal
from tests.admin_support import OWNER_KEY, Api, admin_harness
from tests.test_cli_serve import llmgw

NY = ZoneInfo("America/New_York")
PARIS = ZoneInfo("Europe/Paris")
ALICE = Principal("k1", "acme", "backend", "alice")


def ms(*args, tz) -> int:
    return int(datetime(*args, tzinfo=tz).timestamp() * 1000)


def spent(at_ms: int, micro_usd: int) -> E.UsageEvent:
    return E.UsageEvent(event_id=E.new_event_id(at_ms), ts_start_ms=at_ms, ts_end_ms=at_ms, org="acme",
                        workspace="backend", user="alice", key_id="k1", provider="anthropic", api="messages",
                        model_requested="m", model_served="m", cost_micro_usd=micro_usd)


def refuses_until_local_midnight(gw, tz: ZoneInfo) -> None:
    """A $1/day budget with $0.999 spent the evening before: refused at 23:59 local, admitted at 00:00."""
    with pytest.raises(BudgetExceeded):
        gw.policy.reserve(ALICE, (), 5_000, ms(2026, 11, 30, 23, 59, tz=tz))
    r = gw.policy.reserve(ALICE, (), 5_000, ms(2026, 12, 1, 0, 0, tz=tz))
    assert r.open
    gw.policy.release(r, forwarded=False)


def test_only_iana_names_pass():
    assert [check_zone(z) for z in ("UTC", "Europe/Paris", "America/New_York")] == [
        "UTC", "Europe/Paris", "America/New_York"]
    for bad in ("Mars/Olympus", "europe/paris", "EST5EDT ", "../etc/passwd", "", None, 5, "+02:00"):
        with pytest.raises(ValueError, match="IANA"):
            check_zone(bad)


async def test_admin_api_sets_validates_and_keeps_the_zone_and_the_window_resets_at_local_midnight(
        fake_provider, tmp_path):
    h = admin_harness(fake_provider, tmp_path)
    await h.start()
    try:
        async with aiohttp.ClientSession() as http:
            owner = Api(http, h.url, OWNER_KEY)
            for method, path, body in (("POST", "/admin/orgs", {"name": "acme", "timezone": "Mars/Olympus"}),
                                       ("POST", "/admin/orgs", {"name": "acme", "timezone": 5}),
                                       ("PUT", "/admin/orgs/acme", {"timezone": "New York"})):
                status, err = await owner.call(method, path, body)
                assert status == 400 and set(err["error"]) == {"message", "type", "code"}, (status, err)
                assert err["error"]["type"] == "invalid_request_error" and "IANA" in err["error"]["message"]
            assert h.gw.config.get("org", "acme") is None                 # nothing written by a refusal
            made = await owner.ok("POST", "/admin/orgs", {"name": "acme", "timezone": "America/New_York"}, 201)
            assert made["timezone"] == "America/New_York"
            kept = await owner.ok("PUT", "/admin/orgs/acme", {"metadata": {"cost_center": "42"}})
            assert kept["timezone"] == "America/New_York"                 # a PUT without it keeps the zone
            assert (await owner.ok("GET", "/admin/orgs/acme"))["timezone"] == "America/New_York"
            await owner.ok("POST", "/admin/budgets", {"scope": "user:alice", "org": "acme", "window": "day",
                                                      "limit_usd": "1"}, 201)
        assert h.gw.tz_of("acme") == "America/New_York"
        h.gw.ledger.submit(spent(ms(2026, 11, 30, 20, tz=NY), 999_000))     # 01:00 UTC on Dec 1
        await h.gw.ledger.flush()
        refuses_until_local_midnight(h.gw, NY)
    finally:
        await h.stop()
    h = admin_harness(fake_provider, tmp_path)                               # the log refolded on restart
    await h.start()
    try:
        assert h.gw.tz_of("acme") == "America/New_York"
        refuses_until_local_midnight(h.gw, NY)
    finally:
        await h.stop()


async def test_apply_sets_the_zone_refuses_a_bad_one_and_the_gateway_folds_by_it(fake_provider, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("LLMGW_KAFKA_BOOTSTRAP", "LLMGW_CONFIG")}
    env["LLMGW_DATA_DIR"] = str(tmp_path)
    doc = tmp_path / "gateway.yaml"
    doc.write_text("orgs:\n  acme:\n    timezone: Europe/Pariss\n    users:\n      alice:\n"
                   "        budgets: {day: {limit_usd: 1}}\n")
    bad = llmgw("apply", "-f", str(doc), env=env)
    assert bad.returncode == 2 and "orgs.acme: time zone 'Europe/Pariss'" in bad.stderr and "IANA" in bad.stderr
    assert not (tmp_path / "config.jsonl").exists() or b"org:acme" not in (tmp_path / "config.jsonl").read_bytes()
    doc.write_text(doc.read_text().replace("Europe/Pariss", "Europe/Paris"))
    good = llmgw("apply", "-f", str(doc), env=env)
    assert good.returncode == 0, good.stderr
    org = [orjson.loads(x) for x in (tmp_path / "config.jsonl").read_bytes().splitlines()
           if orjson.loads(x)["id"] == "org:acme"]
    assert org[-1]["data"]["timezone"] == "Europe/Paris"
    assert llmgw("apply", "-f", str(doc), env=env).stdout.startswith("no changes")     # idempotent
    h = admin_harness(fake_provider, tmp_path)
    await h.start()
    try:
        assert h.gw.tz_of("acme") == "Europe/Paris"
        h.gw.ledger.submit(spent(ms(2026, 11, 30, 23, 30, tz=PARIS), 999_000))     # 22:30 UTC: still Nov 30
        await h.gw.ledger.flush()
        refuses_until_local_midnight(h.gw, PARIS)
    finally:
        await h.stop()


@pytest.mark.kafka
async def test_the_kafka_ledger_worker_folds_by_the_zone_the_config_log_gives_the_org(kafka_bootstrap, tmp_path):
    """`llmgw ledger worker` (its real entry point) learns acme's zone from the config topic, as the
    gateways do, so the day it folds a call into is the day the gateways' policy reads."""
    import asyncio
    import signal
    import subprocess
    import sys

    from aiokafka.errors import KafkaError

    from llmgw.ledger.kafka_config import KafkaConfigLog
    from llmgw.ledger.topics import Topics
    from llmgw.core.windows import window_start
    from llmgw.proxy.admin import entities as EN
    from tests.fixtures.kafka import unique_topic
    from tests.test_ledger_worker import produce, read_snapshot_state, wait_caught_up

    prefix = unique_topic("tz")
    await KafkaConfigLog(kafka_bootstrap, f"{prefix}.config").append(
        EN.org_record("acme", None, "admin:test", "", "America/New_York"))
    env = {k: v for k, v in os.environ.items() if k != "LLMGW_CONFIG"}
    env.update(LLMGW_KAFKA_BOOTSTRAP=kafka_bootstrap, LLMGW_TOPIC_PREFIX=prefix, LLMGW_DATA_DIR=str(tmp_path),
               LLMGW_SNAPSHOT_RETAIN_CLOSED_S="0")     # the fixed date's windows must not expire
    proc = subprocess.Popen([sys.executable, "-m", "llmgw.proxy.cli", "ledger", "worker"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        topics = Topics(prefix)
        at = ms(2026, 11, 30, 20, tz=NY)                                   # 01:00 UTC on Dec 1
        async with asyncio.timeout(90):
            while True:                                                    # the worker made its topics
                try:
                    await produce(kafka_bootstrap, topics, [spent(at, 999_000)])
                    break
                except KafkaError:                                         # no topic until the worker made it
                    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                    await asyncio.sleep(0.5)
            await wait_caught_up(kafka_bootstrap, topics)
            folded, _ = await read_snapshot_state(kafka_bootstrap, topics)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    ny_day = window_start("day", at, "America/New_York")
    assert f"user|acme/alice|day|{ny_day}" in folded
    assert f"user|acme/alice|day|{window_start('day', at)}" not in folded          # not the UTC day
    assert folded[f"user|acme/alice|day|{ny_day}"].spend_micro_usd == 999_000
