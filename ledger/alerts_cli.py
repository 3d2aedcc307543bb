"""``llmgw alerts ...`` and ``llmgw webhooks ...``: a thin shell over the alert modules.

- ``alerts list``: fired alerts and their deliveries (embedded file or Kafka topic).
- ``alerts run``: the Kafka-mode evaluator (embedded mode runs it inside ``llmgw serve``).
- ``alerts thresholds 80,95,100 [--budget SCOPE --window W]``: per-budget or global thresholds.
- ``webhooks add URL [--format slack|json]``, ``webhooks list``, ``webhooks remove ID``, ``webhooks test ID``.
"""
from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp

from llmgw.core.budgets import Budget, micro_to_usd
from llmgw.core.scopes import parse_scope
from llmgw.ledger.local_gateway import cli_config_log
from llmgw.core.settings import Settings

from .alert_store import FIRED, AlertRecord, ensure_alert_topic, read_alert_topic, read_jsonl
from .alerts import POLICY_TYPE, THRESHOLD, Alert, AlertPolicy
from llmgw.core.config import ConfigRecord, ConfigState
from llmgw.ledger.configlog import open_config_log
from .webhooks import FORMATS, WEBHOOK_TYPE, Webhook, post_once, render


def _settings(args: argparse.Namespace) -> Settings:
    flags = {k: getattr(args, k, None) for k in ("config", "data_dir", "kafka_bootstrap")}
    return Settings.load(**{k: v for k, v in flags.items() if v is not None})


def _append(s: Settings, rec: ConfigRecord) -> None:
    """Through a running `llmgw serve` of this data dir, if any; the audit log names the OS user."""
    asyncio.run(cli_config_log(s).append(replace(rec, actor=f"cli:{getpass.getuser()}")))


def _state(s: Settings) -> ConfigState:
    return asyncio.run(open_config_log(s.data_dir, s.kafka_bootstrap, s.topic_prefix).load())


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ") if ms else "-"


# -- alerts ----------------------------------------------------------------------------------------
def load_records(s: Settings) -> dict[str, AlertRecord]:
    if s.embedded:
        return read_jsonl(Path(s.data_dir) / "alerts" / "alerts.jsonl")
    async def read() -> dict[str, AlertRecord]:
        topic = f"{s.topic_prefix}.alerts"
        await ensure_alert_topic(s.kafka_bootstrap, topic)      # never run: an empty list, not a hang
        return await read_alert_topic(s.kafka_bootstrap, topic)
    return asyncio.run(read())


def cmd_alerts_list(args: argparse.Namespace) -> int:
    records = sorted(load_records(_settings(args)).values(), key=lambda r: r.alert.fired_ms)
    if not args.all:
        records = [r for r in records if r.status == FIRED]
    for r in records[-args.limit:]:
        if args.json:
            sys.stdout.buffer.write(r.encode() + b"\n")
            continue
        a = r.alert
        sent = ", ".join(f"{d.webhook_id}:{d.status}" + (f"({d.attempts})" if d.attempts > 1 else "")
                         for d in r.deliveries) or "no webhooks"
        tag = "" if r.status == FIRED else f" [{r.status}]"
        print(f"{_when(a.fired_ms)}  {a.label:>7}  {a.scope} {a.window} "
              f"{micro_to_usd(a.spent_micro_usd)}/{micro_to_usd(a.limit_micro_usd)}{tag}  -> {sent}")
        print(f"    {a.message}")
    if not records:
        print("no alerts have fired")
    return 0


def cmd_alerts_run(args: argparse.Namespace) -> int:
    s = _settings(args)
    if s.embedded:
        print("in embedded mode alerts run inside `llmgw serve`; `alerts run` is for Kafka mode "
              "(set LLMGW_KAFKA_BOOTSTRAP)", file=sys.stderr)
        return 2
    import logging

    from .alerting import main_kafka
    logging.basicConfig(level=s.log_level, format="%(message)s")
    return main_kafka(s)


def _pcts(text: str) -> list[int]:
    try:
        return [int(p.strip().rstrip("%")) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"thresholds: comma-separated percentages, e.g. 50,80,100; got {text!r}")


def cmd_alerts_thresholds(args: argparse.Namespace) -> int:
    s = _settings(args)
    data: dict[str, Any] = {"thresholds_pct": args.thresholds}
    if args.runway is not None:
        data["runway"] = args.runway
    AlertPolicy.from_mapping(data)                       # validate before writing
    if args.budget:
        if not args.window:
            print("--budget needs --window", file=sys.stderr)
            return 2
        sc = parse_scope(args.budget, args.org or "")
        b = Budget(sc.kind, sc.name, args.window, 0, org=sc.org, tag=args.tag or "",
                   kind="default" if sc.name == "*" else "budget")
        target, what = b.record_name, f"{sc} {args.window}" + (f" on {b.tag}" if b.tag else "")
    else:
        target, what = "*", "every budget without its own thresholds"
    _append(s, ConfigRecord.put(POLICY_TYPE, target, data, reason=args.reason or ""))
    print(f"alert thresholds for {what}: {', '.join(f'{p}%' for p in sorted(set(args.thresholds)))}"
          + ("" if args.runway is None else f"; runway alert {'on' if args.runway else 'off'}"))
    return 0


# -- webhooks --------------------------------------------------------------------------------------
def cmd_webhooks_add(args: argparse.Namespace) -> int:
    hook = Webhook.new(args.url, args.format, args.name or "")
    _append(_settings(args), hook.record(reason=args.reason or ""))
    print(f"webhook {hook.id}: {hook.format} to {hook.safe_url}")
    return 0


def cmd_webhooks_list(args: argparse.Namespace) -> int:
    hooks = [Webhook.from_record(r) for r in _state(_settings(args)).of_type(WEBHOOK_TYPE)]
    for h in sorted(hooks, key=lambda h: h.id):
        print(f"{h.id}\t{h.format}\t{h.safe_url}")
    if not hooks:
        print("no webhooks; add one with `llmgw webhooks add URL --format slack|json`")
    return 0


def cmd_webhooks_remove(args: argparse.Namespace) -> int:
    s = _settings(args)
    if _state(s).get(WEBHOOK_TYPE, args.id) is None:
        print(f"no webhook {args.id}", file=sys.stderr)
        return 1
    _append(s, ConfigRecord.put(WEBHOOK_TYPE, args.id, None, reason=args.reason or ""))
    print(f"removed webhook {args.id}")
    return 0


def sample_alert(now_ms: int) -> Alert:
    return Alert("test|0|90", THRESHOLD, 90, "test", "", "budget", "workspace backend monthly budget $100.00",
                 "refuse", "workspace acme/backend", "workspace", "acme/backend", "acme", "month", now_ms,
                 now_ms + 86_400_000, "UTC", 90_000_000, 100_000_000, 0, now_ms,
                 "Test from llmgw: workspace acme/backend has used 90% of its monthly budget ($90.00 of $100.00).")


def cmd_webhooks_test(args: argparse.Namespace) -> int:
    rec = _state(_settings(args)).get(WEBHOOK_TYPE, args.id)
    if rec is None:
        print(f"no webhook {args.id}", file=sys.stderr)
        return 1
    hook = Webhook.from_record(rec)

    async def send() -> tuple[int, str]:
        async with aiohttp.ClientSession() as session:
            status, error, _ = await post_once(session, hook, render(sample_alert(int(time.time() * 1000)),
                                                                     hook.format), "test", 1, 10.0)
            return status, error

    status, error = asyncio.run(send())
    print(f"webhook {hook.id} ({hook.safe_url}): " + (f"HTTP {status}" if status else error))
    return 0 if 200 <= status < 300 else 1


# -- parser ----------------------------------------------------------------------------------------
def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    a = subparsers.add_parser("alerts", help="budget alerts: list, run (Kafka mode), thresholds").add_subparsers(
        dest="alerts_cmd", required=True, metavar="ACTION")
    al = a.add_parser("list", help="fired alerts and where they were delivered")
    al.add_argument("--all", action="store_true", help="include thresholds superseded by a higher one")
    al.add_argument("--limit", type=int, default=50)
    al.add_argument("--json", action="store_true", help="one record per line, as stored")
    al.set_defaults(func=cmd_alerts_list)
    a.add_parser("run", help="run the alert evaluator on the Kafka snapshots (one per deployment)").set_defaults(
        func=cmd_alerts_run)
    at = a.add_parser("thresholds", help="alert percentages for one budget (--budget) or every budget")
    at.add_argument("thresholds", type=_pcts, help="e.g. 50,75,90,100")
    at.add_argument("--budget", help="the budget's scope, e.g. workspace:acme/backend or user:* for the default")
    at.add_argument("--window", choices=["hour", "day", "week", "month"])
    at.add_argument("--org")
    at.add_argument("--tag")
    at.add_argument("--runway", dest="runway", action="store_true", default=None, help="runway alert on")
    at.add_argument("--no-runway", dest="runway", action="store_false", help="runway alert off")
    at.add_argument("--reason")
    at.set_defaults(func=cmd_alerts_thresholds)

    w = subparsers.add_parser("webhooks", help="where alerts are delivered").add_subparsers(
        dest="webhooks_cmd", required=True, metavar="ACTION")
    wa = w.add_parser("add", help="deliver alerts to URL (generic JSON or Slack incoming webhook)")
    wa.add_argument("url")
    wa.add_argument("--format", choices=FORMATS, default="json")
    wa.add_argument("--name", help="id to refer to it by (default: derived from the URL)")
    wa.add_argument("--reason")
    wa.set_defaults(func=cmd_webhooks_add)
    w.add_parser("list", help="configured webhooks (host only: URLs are secrets)").set_defaults(func=cmd_webhooks_list)
    wr = w.add_parser("remove", help="stop delivering to a webhook")
    wr.add_argument("id")
    wr.add_argument("--reason")
    wr.set_defaults(func=cmd_webhooks_remove)
    wt = w.add_parser("test", help="send a sample alert to a webhook once")
    wt.add_argument("id")
    wt.set_defaults(func=cmd_webhooks_test)


__all__ = ["register"]
