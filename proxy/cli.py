"""``llmgw``: a thin shell over the project's functions.

Each subcommand parses arguments, calls one function and prints the result.
Settings come from flags, then ``LLMGW_*`` variables, then the config file.
"""
from __future__ import annotations

import argparse
import getpass
import asyncio
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

from llmgw.analytics import cli as analytics_cli, reconcile_cli, sink_cli
from llmgw.ledger import alerts_cli
from llmgw.core.config import ConfigRecord, ConfigState
from llmgw.pricing import cli as pricing_cli

from . import keys as K
from .access import ModelAccess, ModelList, parse_patterns
from .admin import cli as admin_cli
from llmgw.core.budgets import Budget, BudgetBook, micro_to_usd, parse_action, parse_hold, usd_to_micro
from llmgw.ledger.configlog import ConfigLog
from llmgw.ledger.local_gateway import GatewayRefused, cli_config_log, find as find_gateway, serve_ctx
from .ops import cli as ops_cli
from . import routes_cli
from .ratelimit import METRICS, RateBook, RateLimit
from llmgw.core.scopes import ENTITY_KINDS, parse_scope
from llmgw.core.settings import Settings
from llmgw.core.principal import Principal

Command = Callable[[argparse.Namespace], int]


if TYPE_CHECKING:
    from .admin.roles import AdminPrincipal


def _settings(args: argparse.Namespace, **extra: object) -> Settings:
    flags = {k: getattr(args, k, None) for k in ("config", "data_dir", "kafka_bootstrap")}
    given: dict[str, Any] = {k: v for k, v in {**flags, **extra}.items() if v is not None}
    return Settings.load(**given)


def _config_io(args: argparse.Namespace) -> ConfigLog:
    """Through the running `llmgw serve` of this data dir if there is one: it applies the record at once."""
    return cli_config_log(_settings(args))


def _append(args: argparse.Namespace, rec: ConfigRecord) -> None:
    """Append one change, naming who made it: ``cli:`` and ``--actor``, default the OS user (never just
    "cli"), as ``llmgw apply`` and the admin commands do."""
    asyncio.run(_config_io(args).append(replace(rec, actor=_admin(args).actor)))


def _state(args: argparse.Namespace) -> ConfigState:
    return asyncio.run(_config_io(args).load())


# -- serve ------------------------------------------------------------------------
LISTEN_BACKLOG = 4096          # the kernel caps it at net.core.somaxconn


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from .app import create_app

    s = _settings(args, host=args.host, port=args.port, workers=args.workers,
                  upstream_auth=False if args.no_upstream_auth else None)
    if args.worker_index is None and s.workers != 1:
        return _serve_workers(s)
    if args.worker_index is None and not _upstream_credentials_ok(s):
        return 2
    from llmgw.core.logs import configure_logging
    configure_logging(s)                     # one JSON object per line, secrets redacted
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    if args.worker_index is None:            # a worker's supervisor has printed the line for all of them
        mode = "embedded ledger in " + s.data_dir if s.embedded else "Kafka at " + s.kafka_bootstrap
        print(f"llmgw serving on http://{s.host}:{s.port} ({mode})", flush=True)
    app = create_app(s)
    if args.worker_index is None:            # the CLI beside it goes through it (ledger/local_gateway.py)
        from .admin.runtime import ADMIN

        def on_token(token: str) -> None:
            app[ADMIN].local_token = token
        app.cleanup_ctx.append(serve_ctx(s, on_token))
    # backlog: aiohttp's default of 128 overflows when a fleet of agents (or a load balancer
    # reconnecting) opens hundreds of connections at once, and each dropped SYN waits 1-3 s to retry
    web.run_app(app, host=s.host, port=s.port, print=None, access_log=None, backlog=LISTEN_BACKLOG,
                shutdown_timeout=s.shutdown_timeout_s, reuse_port=True if args.worker_index is not None else None)
    return 0


def _upstream_credentials_ok(s: Settings) -> bool:
    """Refuse to start with no upstream credential at all; name the upstreams that have none."""
    creds = s.upstream_credentials()
    missing = [name for name, ok in creds.items() if not ok]
    if not any(creds.values()) and s.upstream_auth:
        print("llmgw: no upstream credential is set, so every call would reach the provider without a key "
              "and be refused. Set LLMGW_OPENAI_API_KEY and/or LLMGW_ANTHROPIC_API_KEY (or api_key on an "
              "upstream in the config file), or pass --no-upstream-auth for a model server that needs none.",
              file=sys.stderr)
        return False
    if missing and any(creds.values()):
        print(f"llmgw: no credential for upstream {', '.join(missing)}: calls routed there go without a key",
              file=sys.stderr)
    return True


def _serve_workers(s: Settings) -> int:
    from llmgw.core.logs import configure_logging
    from .workers import STOP_GRACE_S, plan, share_dashboard_secret, supervise

    workers = plan(s)                        # ValueError: one line, exit 2 (embedded ledger, port 0)
    if not _upstream_credentials_ok(s):
        return 2
    configure_logging(s)
    share_dashboard_secret(s, workers)
    print(f"llmgw serving on http://{s.host}:{s.port} (Kafka at {s.kafka_bootstrap}, {s.workers} workers)",
          flush=True)
    return supervise(workers, s.shutdown_timeout_s + STOP_GRACE_S)


# -- keys ---------------------------------------------------------------------------
def cmd_keys_create(args: argparse.Namespace) -> int:
    """The API's own validation (proxy/admin/entities.create_key): names, tags, models, an expiry ahead."""
    from .admin import entities as E
    from llmgw.core.timeutil import parse_instant_ms

    org, workspace = _key_home(args)
    expires = parse_instant_ms(args.expires, int(time.time() * 1000)) if args.expires else 0
    models = tuple(m.strip() for m in args.models.split(",")) if args.models else ()
    key, rec = E.create_key(org, workspace, args.user, state=_state(args), admin=_admin(args),
                            tags=tuple(args.tag or ()), allowed_models=models, expires_ms=expires,
                            alias=args.alias or "", actor=_admin(args).actor)
    _append(args, rec)
    print(key)
    print(f"# key id {rec.data['key_id']} for {org}/{workspace}/{args.user}; "  # type: ignore[index]
          "shown once, store it now", file=sys.stderr)
    return 0


def _key_home(args: argparse.Namespace) -> tuple[str, str]:
    """``--workspace ORG/NAME``, or ``--org`` and ``--workspace NAME`` (core/scopes.py)."""
    from llmgw.core.scopes import parse_workspace
    if not args.org and "/" not in (args.workspace or ""):
        raise ValueError(f"workspace {args.workspace!r} needs its organization: --org ORG, "
                         f"or --workspace ORG/{args.workspace}")
    return parse_workspace(args.workspace, args.org or "")


def _admin(args: argparse.Namespace) -> AdminPrincipal:
    """The person at the terminal as an owner: the CLI has the data dir's authority."""
    from .admin.roles import OWNER, AdminPrincipal
    return AdminPrincipal(getattr(args, "actor", None) or getpass.getuser(), OWNER, via="cli")


def cmd_keys_list(args: argparse.Namespace) -> int:
    for r in sorted(_state(args).of_type("key"), key=lambda r: r.ts_ms):
        d = r.data or {}
        models = ",".join(d.get("allowed_models") or []) or "*"
        print(f"{d['key_id']}\t{d['org']}/{d['workspace']}/{d['user']}\tmodels={models}")
    return 0


def cmd_keys_update(args: argparse.Namespace) -> int:
    """Rename a key (its alias), change its tags, allowed models or expiry; its secret, owner and id stay.
    The admin API's own change (proxy/admin/entities.update_key): the same checks, the same record."""
    from .admin import entities as E
    from llmgw.core.timeutil import iso_ms, parse_instant_ms

    rec = _state(args).get("key", args.key_id)
    if rec is None or rec.data is None:
        print(f"no key {args.key_id}", file=sys.stderr)
        return 1
    changes: dict[str, object] = {}
    if args.alias is not None:
        changes["alias"] = args.alias
    if args.tag is not None:
        changes["tags"] = [t for t in args.tag if t]
    if args.models is not None:
        changes["allowed_models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.expires is not None:
        changes["expires_ms"] = parse_instant_ms(args.expires, int(time.time() * 1000)) if args.expires else 0
    if not changes:
        print("nothing to change: give --alias, --tag, --models or --expires", file=sys.stderr)
        return 2
    new = E.update_key(rec, changes, _admin(args).actor, args.reason or "")
    _append(args, new)
    d = new.data or {}
    print(f"updated {args.key_id}: alias={d.get('alias') or '-'} tags={','.join(d.get('tags') or []) or '-'} "
          f"models={','.join(d.get('allowed_models') or []) or '*'} "
          f"expires={iso_ms(int(d.get('expires_ms') or 0)) or 'never'}")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    if _state(args).get("key", args.key_id) is None:
        print(f"no key {args.key_id}", file=sys.stderr)
        return 1
    _append(args, K.revoke(args.key_id, reason=args.reason or ""))
    print(f"revoked {args.key_id}")
    return 0


# -- budgets ---------------------------------------------------------------------------
def _parse_until(text: str) -> int:
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def cmd_budgets_set(args: argparse.Namespace) -> int:
    sc = parse_scope(args.scope, args.org or "")
    action, to = parse_action(args.action)
    b = Budget(sc.kind, sc.name, args.window, usd_to_micro(args.limit_usd), org=sc.org, tag=args.tag or "",
               kind="exception" if args.until else "budget", until_ms=_parse_until(args.until) if args.until else 0,
               action=action, downgrade_to=to, hold=parse_hold(args.hold), client_tags=args.client_tag)
    if b.kind == "exception" and not b.tag:
        print("--until makes an exception, which needs --tag (the project it lifts)", file=sys.stderr)
        return 2
    _append(args, b.record(reason=args.reason or ""))
    print(f"set: {b.describe()}" + (f" until {args.until}" if args.until else "") + f"; at cap: {b.at_cap()}")
    return 0


def cmd_budgets_delete(args: argparse.Namespace) -> int:
    """Remove a budget, default or exception, named as it was set: the admin API's own delete
    (proxy/admin/budget_ops.delete_budget)."""
    from .admin.budget_ops import delete_budget
    from .admin.errors import NotFound

    if args.default:
        b = Budget(args.scope, "*", args.window, 0, org=args.org or "", kind="default")
    else:
        sc = parse_scope(args.scope, args.org or "")
        b = Budget(sc.kind, sc.name, args.window, 0, org=sc.org, tag=args.tag or "",
                   kind="exception" if args.exception else "budget")
    rid = f"budget:{b.record_name}"
    try:
        rec = delete_budget(_state(args), rid, b.kind, _admin(args), args.reason or "", int(time.time() * 1000))
    except NotFound:
        print(f"no such {b.kind}: {args.scope} {args.window}" + (f" on {b.tag}" if b.tag else "")
              + (f" in org {b.org}" if b.org else "") + "; see `llmgw budgets list`", file=sys.stderr)
        return 1
    _append(args, rec)
    print(f"deleted the {b.kind} {args.scope} {args.window}" + (f" on {b.tag}" if b.tag else ""))
    return 0


def cmd_budgets_default(args: argparse.Namespace) -> int:
    action, to = parse_action(args.action)
    b = Budget(args.kind, "*", args.window, usd_to_micro(args.limit_usd), org=args.org or "", kind="default",
               action=action, downgrade_to=to, hold=parse_hold(args.hold))
    _append(args, b.record(reason=args.reason or ""))
    print(f"default: {b.describe()}")
    return 0


def cmd_budgets_list(args: argparse.Namespace) -> int:
    for r in sorted(_state(args).of_type("budget"), key=lambda r: r.id):
        b = Budget.from_record(r)
        until = f" until {datetime.fromtimestamp(b.until_ms / 1000, timezone.utc):%Y-%m-%d}" if b.until_ms else ""
        print(f"{b.kind:9} {b.describe()}{until}; at cap: {b.at_cap()}")
    return 0


def cmd_budgets_explain(args: argparse.Namespace) -> int:
    state = _state(args)
    rec = state.get("key", K.key_id_of(args.key) or args.key)      # the id, or the key as printed
    if rec is None or rec.data is None:
        print(f"no key {args.key}", file=sys.stderr)
        return 1
    d = rec.data
    p = Principal(d["key_id"], d["org"], d["workspace"], d["user"], tuple(d.get("tags") or ()),
                    tuple(d.get("allowed_models") or ()))
    tags = tuple(sorted({*p.tags, *(args.tag or ())}))
    applied = BudgetBook.from_state(state).effective(p, tags, int(time.time() * 1000))
    print(f"key {p.key_id}: org {p.org}, workspace {p.workspace}, user {p.user}, tags {', '.join(tags) or '-'}")
    if not applied:
        print("no budget applies")
    for a in applied:
        src = {"default": "default for every " + a.budget.scope_kind, "exception": "exception",
               "budget": "explicit"}[a.budget.kind]
        carve = f"; not counting {', '.join(e for _, e in a.carve_out)}" if a.carve_out else ""
        print(f"  {a.budget.window:5} {micro_to_usd(a.budget.limit_micro_usd):>12} on {a.spend_dim} {a.entity}"
              f"  <- {src} ({a.budget.origin}){carve}; at cap: {a.budget.at_cap()}")
    limits = RateBook.from_state(state).effective(p)
    print("rate limits:" if limits else "no rate limit applies")
    for r in limits:
        src = "default for every " + r.limit.scope_kind if r.limit.name == "*" else "explicit"
        burst = f", burst {r.limit.capacity:,}" if r.limit.burst else ""
        print(f"  {r.limit.metric:5} {r.limit.limit:>11,}{burst} on {r.limit.scope_kind} {r.entity}"
              f"  <- {src} ({r.limit.origin})")
    lists = ModelAccess.from_state(state).lists_for(p)
    print("models: " + ("every list must allow the model" if lists else "any model (no allow-list applies)"))
    for m in lists:
        print(f"  {m.scope_kind} {m.name}: {', '.join(m.patterns)}  <- {m.origin}")
    return 0


# -- rate limits and model access ---------------------------------------------------------
def cmd_limits_set(args: argparse.Namespace) -> int:
    sc = parse_scope(args.scope, args.org or "", ENTITY_KINDS)
    lim = RateLimit(sc.kind, sc.name, args.metric, args.limit, args.burst or 0, org=sc.org)
    _append(args, lim.record(reason=args.reason or ""))
    print(f"limit: {lim.describe()}")
    return 0


def cmd_limits_unset(args: argparse.Namespace) -> int:
    sc = parse_scope(args.scope, args.org or "", ENTITY_KINDS)
    lim = RateLimit(sc.kind, sc.name, args.metric, 0, org=sc.org)
    if _state(args).get("ratelimit", lim.record_name) is None:
        print(f"no {args.metric} limit on {args.scope}" + (f" in org {sc.org}" if sc.org else ""), file=sys.stderr)
        return 1
    _append(args, ConfigRecord.put("ratelimit", lim.record_name, None, reason=args.reason or ""))
    print(f"removed the {args.metric} limit on {args.scope}")
    return 0


def cmd_limits_list(args: argparse.Namespace) -> int:
    for r in sorted(_state(args).of_type("ratelimit"), key=lambda r: r.id):
        print(RateLimit.from_record(r).describe())
    return 0


def cmd_models_allow(args: argparse.Namespace) -> int:
    sc = parse_scope(args.scope, args.org or "", ENTITY_KINDS)
    m = ModelList(sc.kind, sc.name, parse_patterns(args.patterns), org=sc.org)
    _append(args, m.record(reason=args.reason or ""))
    print(f"models: {m.who()} may call {', '.join(m.patterns)}")
    return 0


def cmd_models_clear(args: argparse.Namespace) -> int:
    sc = parse_scope(args.scope, args.org or "", ENTITY_KINDS)
    m = ModelList(sc.kind, sc.name, (), org=sc.org)
    _append(args, ConfigRecord.put("models", m.record_name, None, reason=args.reason or ""))
    print(f"models: {m.who()} has no allow-list of its own")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    for r in sorted(_state(args).of_type("models"), key=lambda r: r.id):
        m = ModelList.from_record(r)
        print(f"{m.who()}: {', '.join(m.patterns)}")
    return 0


# -- capture ---------------------------------------------------------------------------
def cmd_capture(args: argparse.Namespace) -> int:
    from llmgw.core.capture import record
    on = args.state == "on"
    _append(args, record(args.org, args.workspace, on, args.max_bytes, reason=args.reason or ""))
    print(f"body capture {'on' if on else 'off'} for {args.org}/{args.workspace}"
          + (f" (first {args.max_bytes} bytes each way, secrets redacted, kept 30 days)" if on else ""))
    return 0


# -- ledger ----------------------------------------------------------------------------
def cmd_ledger_rebuild(args: argparse.Namespace) -> int:
    s = _settings(args)
    if s.embedded and (gw := find_gateway(s)) is not None:
        # the gateway's checkpoint lags what it has folded: compare with its live view at a quiet cut
        r = gw.json("POST", "/admin/ledger/rebuild")
        print(f"rebuilt {r['rebuilt_keys']} spend keys from the log up to position {r['position']}; the running "
              f"gateway has {r['live_keys']}: " + ("identical" if r["identical"] else
                                                    "DIFFERENT: " + ", ".join(r["differences"])))
        return 0 if r["identical"] else 1
    if s.embedded:
        from llmgw.ledger.embedded import Checkpoint, rebuild
        from pathlib import Path
        from .context import org_timezones
        zones = org_timezones(dict(s.file_config), _state(args))       # as the gateway folded
        rebuilt = rebuild(s.data_dir, lambda org: zones.get(org, "UTC"))
        position, live = Checkpoint(Path(s.data_dir) / "ledger" / "totals.json").load()
        same = rebuilt == live
        print(f"rebuilt {len(rebuilt)} spend keys from the log; checkpoint has {len(live)}: "
              + ("identical" if same else "DIFFERENT (the checkpoint may be behind a running gateway)"))
        return 0 if same else 1
    from llmgw.ledger.kafka_rebuild import main as kafka_rebuild
    return kafka_rebuild(s)


def cmd_ledger_worker(args: argparse.Namespace) -> int:
    s = _settings(args)
    if s.embedded:
        print("the ledger worker needs Kafka (set LLMGW_KAFKA_BOOTSTRAP); embedded mode folds in-process",
              file=sys.stderr)
        return 2
    from llmgw.ledger.worker import run_worker
    return run_worker(s)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmgw", description="LLM budget gateway: meter every model call, "
                                "refuse calls that would break a budget.")
    p.add_argument("--config", help="YAML config file (also LLMGW_CONFIG)")
    p.add_argument("--data-dir", help="local data directory (also LLMGW_DATA_DIR; default ./llmgw-data)")
    p.add_argument("--kafka-bootstrap", help="Kafka bootstrap servers; unset means embedded mode")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run the gateway (embedded ledger unless Kafka is configured)")
    s.add_argument("--host", default=None, help="listen address (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=None, help="listen port (default 4000)")
    s.add_argument("--workers", type=int, default=None, help="processes serving the port, one per core "
                   "(also LLMGW_WORKERS; default 1; more than 1 needs Kafka)")
    s.add_argument("--no-upstream-auth", action="store_true", help="start even with no upstream credential "
                   "(a local model server that needs none; also LLMGW_UPSTREAM_AUTH=0)")
    s.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)   # set by the supervisor
    s.set_defaults(func=cmd_serve)

    k = sub.add_parser("keys", help="create, list and revoke gateway API keys").add_subparsers(
        dest="keys_cmd", required=True, metavar="ACTION")
    kc = k.add_parser("create", help="mint a key for org/workspace/user; prints it once")
    kc.add_argument("--org", help="the organization (or give --workspace ORG/NAME)")
    kc.add_argument("--workspace", required=True, help="NAME with --org, or ORG/NAME")
    kc.add_argument("--user", required=True)
    kc.add_argument("--tag", action="append", help="tag every call with NAME:VALUE (repeatable)")
    kc.add_argument("--models", help="comma-separated allowed model patterns, e.g. 'claude-haiku-*,gpt-4o-mini'")
    kc.add_argument("--expires", help="expiry: ISO date or time (UTC unless stated), or a duration from now (30d)")
    kc.add_argument("--alias", help="a name for the key, shown in listings")
    kc.add_argument("--actor", help="who the audit log names (default: your OS user name)")
    kc.set_defaults(func=cmd_keys_create)
    k.add_parser("list", help="list keys (never their secrets)").set_defaults(func=cmd_keys_list)
    ku = k.add_parser("update", help="rename a key, change its tags, allowed models or expiry (same secret)")
    ku.add_argument("key_id")
    ku.add_argument("--alias", help="the key's new name ('' clears it)")
    ku.add_argument("--tag", action="append", help="the key's tags, replacing the old ones (repeatable; "
                    "--tag '' clears them)")
    ku.add_argument("--models", help="comma-separated allowed model patterns ('' allows every model)")
    ku.add_argument("--expires", help="expiry: ISO date or time, or a duration from now (30d); '' never expires")
    ku.add_argument("--reason")
    ku.set_defaults(func=cmd_keys_update)
    kr = k.add_parser("revoke", help="revoke a key by its id")
    kr.add_argument("key_id")
    kr.add_argument("--reason")
    kr.set_defaults(func=cmd_keys_revoke)

    b = sub.add_parser("budgets", help="set, list and explain budgets").add_subparsers(
        dest="budgets_cmd", required=True, metavar="ACTION")
    bs = b.add_parser("set", help="cap a scope over a window, e.g. `budgets set user:alice day 50`")
    bs.add_argument("scope", help="org:NAME, workspace:NAME or workspace:ORG/NAME, user:NAME, key:KEY_ID "
                    "or tag:NAME:VALUE")
    bs.add_argument("window", choices=["hour", "day", "week", "month"])
    bs.add_argument("limit_usd", help="cap in US dollars, e.g. 50 or 12.50")
    bs.add_argument("--org", help="only in this organization (default: the name in any org)")
    bs.add_argument("--tag", help="only calls tagged NAME:VALUE, e.g. project:payments")
    bs.add_argument("--until", help="makes an exception (needs --tag) that ends at this ISO date/time")
    bs.add_argument("--action", default="refuse", help="at cap: refuse (default) or downgrade:MODEL, "
                    "a cheaper model of the same API served instead while it still fits")
    bs.add_argument("--hold", default="predicted", choices=["predicted", "strict"],
                    help="what a call reserves: predicted (default; what this key's recent calls on the model "
                    "used) or strict (the call's worst case; never overshoots on one proxy)")
    bs.add_argument("--client-tag", action="store_true",
                    help="with --tag: a tag the client sends (x-llmgw-tags) matches too, not only the key's own")
    bs.add_argument("--reason")
    bs.set_defaults(func=cmd_budgets_set)
    bd = b.add_parser("default", help="a budget for every scope of a kind, e.g. `budgets default user day 20`")
    bd.add_argument("kind", choices=["org", "workspace", "user", "key"])
    bd.add_argument("window", choices=["hour", "day", "week", "month"])
    bd.add_argument("limit_usd")
    bd.add_argument("--org")
    bd.add_argument("--action", default="refuse", help="refuse (default) or downgrade:MODEL")
    bd.add_argument("--hold", default="predicted", choices=["predicted", "strict"])
    bd.add_argument("--reason")
    bd.set_defaults(func=cmd_budgets_default)
    bx = b.add_parser("delete", help="remove a budget, e.g. `budgets delete user:alice day`, "
                      "`budgets delete user day --default`")
    bx.add_argument("scope", help="as given to `set` (or a scope kind with --default)")
    bx.add_argument("window", choices=["hour", "day", "week", "month"])
    bx.add_argument("--org")
    bx.add_argument("--tag", help="the budget's project tag, if it has one")
    kinds = bx.add_mutually_exclusive_group()
    kinds.add_argument("--default", action="store_true", help="the default of a scope kind")
    kinds.add_argument("--exception", action="store_true", help="the exception (with --tag)")
    bx.add_argument("--reason")
    bx.set_defaults(func=cmd_budgets_delete)
    b.add_parser("list", help="list budgets, defaults and exceptions").set_defaults(func=cmd_budgets_list)
    be = b.add_parser("explain", help="every budget that applies to a key, and where it came from")
    be.add_argument("--key", required=True, help="key id (kXXXXXXXXXXXX) or the key itself")
    be.add_argument("--tag", action="append", help="as if the call carried this tag")
    be.set_defaults(func=cmd_budgets_explain)

    scope_help = ("org:NAME, workspace:NAME or workspace:ORG/NAME, user:NAME or key:KEY_ID; "
                  "NAME * sets the default for every one")
    li = sub.add_parser("limits", help="rate limits: requests and tokens per minute and per day").add_subparsers(
        dest="limits_cmd", required=True, metavar="ACTION")
    ls = li.add_parser("set", help="e.g. `limits set user:alice rpm 60 --burst 10`, `limits set user:* tpd 2000000`")
    ls.add_argument("scope", help=scope_help)
    ls.add_argument("metric", choices=list(METRICS))
    ls.add_argument("limit", type=int, help="requests or tokens per minute (rpm, tpm) or per day (rpd, tpd)")
    ls.add_argument("--burst", type=int, help="most admitted at once (default: the limit itself)")
    ls.add_argument("--org", help="only in this organization (default: the name in any org)")
    ls.add_argument("--reason")
    ls.set_defaults(func=cmd_limits_set)
    lu = li.add_parser("unset", help="remove one limit")
    lu.add_argument("scope", help=scope_help)
    lu.add_argument("metric", choices=list(METRICS))
    lu.add_argument("--org")
    lu.add_argument("--reason")
    lu.set_defaults(func=cmd_limits_unset)
    li.add_parser("list", help="list rate limits and defaults").set_defaults(func=cmd_limits_list)
    mo = sub.add_parser("models", help="model allow-lists per user, workspace, org or key").add_subparsers(
        dest="models_cmd", required=True, metavar="ACTION")
    ma = mo.add_parser("allow", help="e.g. `models allow workspace:interns 'claude-haiku-*,gpt-4o-mini'`")
    ma.add_argument("scope", help=scope_help)
    ma.add_argument("patterns", help="comma-separated model names or glob patterns; replaces the scope's list")
    ma.add_argument("--org")
    ma.add_argument("--reason")
    ma.set_defaults(func=cmd_models_allow)
    mc = mo.add_parser("clear", help="remove a scope's allow-list")
    mc.add_argument("scope", help=scope_help)
    mc.add_argument("--org")
    mc.add_argument("--reason")
    mc.set_defaults(func=cmd_models_clear)
    mo.add_parser("list", help="list model allow-lists").set_defaults(func=cmd_models_list)

    cp = sub.add_parser("capture", help="store redacted request/response bodies for one workspace (off by default)")
    cp.add_argument("state", choices=["on", "off"])
    cp.add_argument("--org", required=True)
    cp.add_argument("--workspace", required=True)
    cp.add_argument("--max-bytes", type=int, default=64 * 1024, help="bytes kept of each body (default 65536)")
    cp.add_argument("--reason")
    cp.set_defaults(func=cmd_capture)

    lg = sub.add_parser("ledger", help="the event-sourced ledger").add_subparsers(
        dest="ledger_cmd", required=True, metavar="ACTION")
    lg.add_parser("rebuild", help="refold the whole log and compare with the live aggregates").set_defaults(
        func=cmd_ledger_rebuild)
    lg.add_parser("worker", help="run a ledger processor (Kafka mode; run several to scale)").set_defaults(
        func=cmd_ledger_worker)

    for register in (pricing_cli.register, analytics_cli.register, sink_cli.register, reconcile_cli.register,
                     admin_cli.register, ops_cli.register, alerts_cli.register, routes_cli.register):
        register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"llmgw: {exc}", file=sys.stderr)
        return 2
    except (GatewayRefused, ConnectionError) as exc:     # the running gateway said no, or went away
        print(f"llmgw: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
