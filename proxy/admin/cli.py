"""``llmgw apply``, ``audit``, ``request-increase``, ``increase-requests`` and ``admins``.

Like ``llmgw keys`` and ``llmgw budgets``, these read and append the config
log directly (the file in the data dir, or the Kafka topic): whoever can run
them there is an owner. Each record names the actor: ``--actor``, default
``cli:<os user>`` (``apply`` for ``llmgw apply``).
"""
from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import time
from functools import partial
from typing import Any, Callable

import orjson

from llmgw.ledger.configlog import ConfigLog, open_config_log
from llmgw.core.config import ConfigRecord, ConfigState
from llmgw.core.windows import WINDOWS
from llmgw.core.budgets import usd_to_micro
from llmgw.proxy.context import org_timezones
from llmgw.proxy.errors import GatewayError
from llmgw.ledger.local_gateway import cli_config_log
from llmgw.core.settings import Settings

from . import apply as A
from . import audit as AU
from . import credentials as C
from . import increase as I
from .roles import OWNER, ROLES, AdminPrincipal
from llmgw.core.timeutil import iso_ms, parse_duration_s, parse_instant_ms
from llmgw.ledger.audit import audit_entries, read_history

Command = Callable[[argparse.Namespace], int]


def _settings(args: argparse.Namespace) -> Settings:
    flags = {k: getattr(args, k, None) for k in ("config", "data_dir", "kafka_bootstrap")}
    return Settings.load(**{k: v for k, v in flags.items() if v is not None})


def _log(args: argparse.Namespace) -> tuple[Settings, ConfigLog]:
    s = _settings(args)
    return s, cli_config_log(s)      # through a running `llmgw serve` of this data dir, if any


def _write(log: ConfigLog, records: list[ConfigRecord]) -> None:
    async def go() -> None:
        for rec in records:
            await log.append(rec)
    asyncio.run(go())


def _actor(args: argparse.Namespace) -> AdminPrincipal:
    return AdminPrincipal(args.actor or getpass.getuser(), OWNER, via="cli")


def _now() -> int:
    return int(time.time() * 1000)


def _guard(fn: Command) -> Command:
    """A refusal (no such request, already decided, ...) is a message and exit 1, not a traceback."""
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except GatewayError as err:
            print(f"llmgw: {err.message}", file=sys.stderr)
            return 1
    return run


# -- apply --------------------------------------------------------------------------------------
def cmd_apply(args: argparse.Namespace) -> int:
    _, log = _log(args)
    with open(args.file, encoding="utf-8") as f:
        doc = A.load(f.read())
    state = asyncio.run(log.load())
    changes = A.plan(state, doc, actor=_actor(args).actor, reason=args.reason or "", now_ms=_now())
    for line in A.render(changes):
        print(line)
    if not changes:
        print("no changes: the live config already matches " + args.file)
        return 0
    if args.dry_run:
        print(f"dry run: {len(changes)} change(s) not applied")
        return 0
    _write(log, [c.record for c in changes])
    print(f"applied {len(changes)} change(s)")
    return 0


# -- audit --------------------------------------------------------------------------------------
def _since(text: str) -> int:
    try:
        return _now() - parse_duration_s(text) * 1000
    except ValueError:
        return parse_instant_ms(text, _now())


def cmd_audit(args: argparse.Namespace) -> int:
    s = _settings(args)
    log = open_config_log(s.data_dir, s.kafka_bootstrap, s.topic_prefix)   # reads the log itself, even beside a gateway
    entries = audit_entries(asyncio.run(read_history(log)))
    types = tuple(t for t in (args.type or "").split(",") if t)
    picked = AU.select(entries, since_ms=_since(args.since) if args.since else 0, types=types,
                       actor=args.actor_filter or "", record_id=args.id or "", limit=args.limit or 0)
    for e in picked:
        if args.json:
            sys.stdout.write(orjson.dumps(e).decode() + "\n")
            continue
        why = f"  reason: {e['reason']}" if e["reason"] else ""
        fields = f" [{', '.join(e['changed'])}]" if e["action"] == "update" else ""
        print(f"{e['time']}  {e['actor']:<22} {e['action']:<6} {e['id']}{fields}{why}")
    return 0


# -- increase requests --------------------------------------------------------------------------
def cmd_request_increase(args: argparse.Namespace) -> int:
    _, log = _log(args)
    state = asyncio.run(log.load())
    now = _now()
    rec = I.file_request(state, key_id=args.key, window=args.window, amount_micro_usd=usd_to_micro(args.amount),
                         reason=args.reason, expires_ms=parse_instant_ms(args.expires, now) if args.expires else 0,
                         scope=args.scope or "", requested_by=_actor(args).actor, now_ms=now)
    _write(log, [rec])
    print(f"filed increase request {rec.data['id']}: +${args.amount} per {args.window} for key {args.key}; "  # type: ignore[index]
          f"an approver runs `llmgw increase-requests approve {rec.data['id']}`")  # type: ignore[index]
    return 0


def cmd_requests_list(args: argparse.Namespace) -> int:
    _, log = _log(args)
    recs = sorted(asyncio.run(log.load()).of_type(I.TYPE), key=lambda r: (r.data or {}).get("requested_ms", 0))
    for r in recs:
        v = I.request_view(r)
        if args.status and v["status"] != args.status:
            continue
        if args.json:
            sys.stdout.write(orjson.dumps(v).decode() + "\n")
            continue
        print(f"{v['id']}  {v['status']:<8} key {v['key_id']} ({v['org']}/{v['workspace']}/{v['user']})  "
              f"+${v['amount_usd']}/{v['window']}  by {v['requested_by']}"
              + (f"  until {v['until']}" if v.get("until") else "") + f"  reason: {v['reason']}")
    return 0


def _decide(args: argparse.Namespace, approve: bool) -> int:
    s, log = _log(args)
    state = asyncio.run(log.load())
    rec = I.get_request(state, args.id)
    who, now = _actor(args), _now()
    if approve:
        tz = org_timezones(dict(s.file_config), state).get((rec.data or {}).get("org", ""), "UTC")
        records, _ = I.approve(state, rec, who, now_ms=now, reason=args.reason or "", tz=tz)
        _write(log, records)
        v = I.request_view(records[-1])
        print(f"approved {args.id}: raised {', '.join(v['raised'])} by ${v['amount_usd']} until {v['until']}")
    else:
        _write(log, [I.deny(rec, who, now_ms=now, reason=args.reason or "")])
        print(f"denied {args.id}")
    return 0


# -- admin credentials --------------------------------------------------------------------------
def cmd_admins_create(args: argparse.Namespace) -> int:
    _, log = _log(args)
    expires = parse_instant_ms(args.expires, _now()) if args.expires else 0
    key, rec = C.mint_admin(args.name, args.role, tuple(args.workspace or ()), expires_ms=expires,
                            actor=_actor(args).actor, reason=args.reason or "")
    _write(log, [rec])
    print(key)
    print(f"# admin {rec.data['admin_id']} ({args.role}); shown once, store it now", file=sys.stderr)  # type: ignore[index]
    return 0


def cmd_admins_list(args: argparse.Namespace) -> int:
    _, log = _log(args)
    for r in sorted(asyncio.run(log.load()).of_type(C.ADMIN_TYPE), key=lambda r: r.ts_ms):
        v: dict[str, Any] = C.admin_view(r)
        ws = ",".join(v["workspaces"] or []) or "-"
        print(f"{v['admin_id']}  {v['name']:<20} {v['role']:<16} workspaces={ws}"
              + (f"  expires {iso_ms(v['expires_ms'])}" if v.get("expires_ms") else ""))
    return 0


def cmd_admins_revoke(args: argparse.Namespace) -> int:
    _, log = _log(args)
    state: ConfigState = asyncio.run(log.load())
    if state.get(C.ADMIN_TYPE, args.admin_id) is None:
        print(f"no admin credential {args.admin_id}", file=sys.stderr)
        return 1
    _write(log, [C.revoke_admin(args.admin_id, _actor(args).actor, args.reason or "")])
    print(f"revoked {args.admin_id}")
    return 0


def register(subparsers: Any) -> None:
    """Add this part's subcommands to ``llmgw``."""
    actor = argparse.ArgumentParser(add_help=False)
    actor.add_argument("--actor", help="who the audit log names (default: your OS user name)")

    a = subparsers.add_parser("apply", parents=[actor],
                              help="make the live config match a YAML file (shows the diff first)")
    a.add_argument("-f", "--file", required=True, help="config as code, e.g. deploy/gateway.yaml")
    a.add_argument("--dry-run", action="store_true", help="show the diff, change nothing")
    a.add_argument("--reason", help="why, for the audit log")
    a.set_defaults(func=_guard(cmd_apply))

    au = subparsers.add_parser("audit", help="who changed what, when, from what to what, and why")
    au.add_argument("--since", help="ISO date/time, or a duration ago: 24h, 7d")
    au.add_argument("--type", help="record types, comma-separated: key,budget,org,workspace,user,admin,"
                                   "increase_request")
    au.add_argument("--actor", dest="actor_filter", help="only changes by this actor")
    au.add_argument("--id", help="only this record id, e.g. key:k0123456789ab")
    au.add_argument("--limit", type=int, help="only the last N entries")
    au.add_argument("--json", action="store_true", help="one JSON object per line (before and after included)")
    au.set_defaults(func=_guard(cmd_audit))

    r = subparsers.add_parser("request-increase", parents=[actor], help="ask for more budget for a key")
    r.add_argument("--key", required=True, help="key id (kXXXXXXXXXXXX)")
    r.add_argument("--window", required=True, choices=list(WINDOWS))
    r.add_argument("--amount", required=True, help="extra US dollars per window, e.g. 50")
    r.add_argument("--reason", required=True)
    r.add_argument("--expires", help="when the raise ends: ISO date/time or a duration (default: end of window)")
    r.add_argument("--scope", help="the budget to raise, e.g. user:alice (default: the tightest one)")
    r.set_defaults(func=_guard(cmd_request_increase))

    ir = subparsers.add_parser("increase-requests", help="list, approve or deny budget-increase requests"
                               ).add_subparsers(dest="increase_cmd", required=True, metavar="ACTION")
    il = ir.add_parser("list", help="every request and its status")
    il.add_argument("--status", choices=[I.PENDING, I.APPROVED, I.DENIED, I.EXPIRED])
    il.add_argument("--json", action="store_true")
    il.set_defaults(func=_guard(cmd_requests_list))
    for name, approve in (("approve", True), ("deny", False)):
        d = ir.add_parser(name, parents=[actor], help=f"{name} a request"
                          + (" (raises the budget at once, until its expiry)" if approve else ""))
        d.add_argument("id")
        d.add_argument("--reason")
        d.set_defaults(func=_guard(partial(_decide, approve=approve)))

    ad = subparsers.add_parser("admins", help="admin credentials and their roles").add_subparsers(
        dest="admins_cmd", required=True, metavar="ACTION")
    ac = ad.add_parser("create", parents=[actor], help="mint an admin key with a role; prints it once")
    ac.add_argument("--name", required=True)
    ac.add_argument("--role", required=True, choices=list(ROLES))
    ac.add_argument("--workspace", action="append", help="ORG/WORKSPACE a workspace_admin manages (repeatable)")
    ac.add_argument("--expires", help="ISO date/time or a duration from now")
    ac.add_argument("--reason")
    ac.set_defaults(func=_guard(cmd_admins_create))
    ad.add_parser("list", help="admin credentials (never their secrets)").set_defaults(func=_guard(cmd_admins_list))
    ar = ad.add_parser("revoke", parents=[actor], help="revoke an admin credential by id")
    ar.add_argument("admin_id")
    ar.add_argument("--reason")
    ar.set_defaults(func=_guard(cmd_admins_revoke))
