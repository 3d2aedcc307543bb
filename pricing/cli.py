"""``llmgw pricing ...``: import price files, show an entry and its history, cost a usage.

A thin shell: each command parses its arguments, calls the pure functions of this
package and prints. ``register(subparsers)`` adds the ``pricing`` command to the
``llmgw`` parser; every leaf sets ``func(args) -> int`` (the exit status).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Mapping

import orjson

from llmgw.core.events import Tokens
from llmgw.pricing import litellm
from llmgw.pricing.catalog import Catalog, UnknownModel, load_catalog
from llmgw.pricing.cost import cost
from llmgw.pricing.importer import format_changes, plan_import, to_write, write_overrides
from llmgw.pricing.instant import format_instant, parse_instant_ms
from llmgw.pricing.price import CatalogError, Price, dec_str

DEFAULT_DATA_DIR = "./llmgw-data"
OVERRIDES_NAME = "prices.json"


def default_overrides_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$LLMGW_DATA_DIR/prices.json`` (``./llmgw-data`` when unset)."""
    env = os.environ if environ is None else environ
    return Path(env.get("LLMGW_DATA_DIR") or DEFAULT_DATA_DIR) / OVERRIDES_NAME


def format_usd(micro_usd: int) -> str:
    sign = "-" if micro_usd < 0 else ""
    whole, frac = divmod(abs(micro_usd), 1_000_000)
    return f"{sign}${whole}.{frac:06d}"


def format_usd_nano(nano_usd: int) -> str:
    sign = "-" if nano_usd < 0 else ""
    whole, frac = divmod(abs(nano_usd), 1_000_000_000)
    return f"{sign}${whole}.{frac:09d}"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000_000 * 1000   # whole seconds: version ids stay readable


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    """Add ``pricing`` (with ``import``, ``show``, ``cost``) to an argparse subparsers object."""
    pricing = subparsers.add_parser("pricing", help="price catalog: import, show, cost")
    sub = pricing.add_subparsers(dest="pricing_command", required=True)

    imp = sub.add_parser("import", help="import a price file as new effective-dated versions")
    imp.add_argument("file", type=Path)
    imp.add_argument("--format", choices=("litellm", "llmgw"), default="litellm")
    imp.add_argument("--effective-from", help="ISO UTC instant the new versions apply from (default: now)")
    imp.add_argument("--dry-run", action="store_true", help="print the diff, write nothing")
    imp.add_argument("--overrides", type=Path, help="overrides file to append to (default: $LLMGW_DATA_DIR/prices.json)")
    imp.add_argument("--provider", action="append",
                     help="only this provider (repeatable; default: providers already in the catalog)")
    imp.add_argument("--only-known", action="store_true", help="only models already in the catalog")
    imp.set_defaults(func=cmd_import)

    show = sub.add_parser("show", help="the entry in force for a model, and its history")
    show.add_argument("model")
    show.add_argument("--provider")
    show.add_argument("--at", help="ISO UTC instant (default: now)")
    show.add_argument("--overrides", type=Path)
    show.set_defaults(func=cmd_show)

    cst = sub.add_parser("cost", help="exact cost of a usage")
    cst.add_argument("--model", required=True)
    cst.add_argument("--usage", required=True,
                     help='token counts, e.g. \'{"input": 1000, "output": 200, "cache_read": 5000}\'')
    cst.add_argument("--provider")
    cst.add_argument("--at", help="ISO UTC instant (default: now)")
    cst.add_argument("--service-tier")
    cst.add_argument("--batch", action="store_true")
    cst.add_argument("--web-search-calls", type=int, default=0)
    cst.add_argument("--overrides", type=Path)
    cst.set_defaults(func=cmd_cost)
    return pricing


def _catalog(args: argparse.Namespace) -> Catalog:
    path: Path | None = args.overrides
    if path is None:
        default = default_overrides_path()
        path = default if default.exists() else None
    return load_catalog(path)


def _fail(message: str, status: int = 1) -> int:
    print(f"llmgw pricing: {message}", file=sys.stderr)
    return status


def cmd_import(args: argparse.Namespace) -> int:
    target: Path = args.overrides or default_overrides_path()
    try:
        catalog = load_catalog(target if target.exists() else None)
        data = args.file.read_bytes()
        if args.format == "litellm":
            incoming = litellm.entries_from_litellm(litellm.parse(data))
        else:
            doc = orjson.loads(data)
            entries = doc.get("entries") if isinstance(doc, dict) else None
            if not isinstance(entries, list):
                return _fail(f"{args.file}: expected an llmgw price file with 'entries'")
            incoming = [e for e in entries if isinstance(e, dict)]
        effective = parse_instant_ms(args.effective_from) if args.effective_from else None
        now = _now_ms()
        providers = set(args.provider) if args.provider else catalog.providers()
        changes = plan_import(catalog, incoming, effective, now_ms=now, providers=providers,
                              only_known=args.only_known, source=f"{args.format} import of {args.file.name}")
        prices = to_write(changes)
        catalog.extended(prices)                       # the result must load before anything is written
    except (OSError, ValueError, CatalogError, orjson.JSONDecodeError) as exc:
        return _fail(str(exc))
    when = format_instant(effective) if effective is not None else (
        "as stated per entry" if args.format == "llmgw" else format_instant(now))
    for line in format_changes(changes, when):
        print(line)
    if args.dry_run:
        print("dry run: nothing written")
    elif prices:
        try:
            write_overrides(target, prices)
        except (OSError, CatalogError) as exc:
            return _fail(str(exc))
        print(f"written to {target}")
    return 0


def _describe(p: Price) -> list[str]:
    r = p.rates
    lines = [f"  mode {p.mode}, context window {p.context_window or '-'}, max output {p.max_output_tokens or '-'}",
             "  USD per 1M tokens: " + ", ".join(f"{k} {v}" for k, v in r.to_wire().items())]
    if p.long_context:
        lc = p.long_context
        lines.append(f"  prompt over {lc.above_prompt_tokens} tokens (whole request): "
                     + ", ".join(f"{k} {v}" for k, v in lc.rates.to_wire().items()))
    for t in p.service_tiers:
        what = f"x{dec_str(t.multiplier)}" if t.multiplier is not None else ", ".join(
            f"{k} {v}" for k, v in (t.rates.to_wire() if t.rates else {}).items())
        lines.append(f"  tier {t.name}: {what}")
    for name, fee in p.fees_usd_per_1k:
        lines.append(f"  {name}: ${dec_str(fee)} per 1k requests")
    if p.aliases or p.patterns:
        lines.append(f"  names: {', '.join([*p.aliases, *p.patterns])}")
    if p.note:
        lines.append(f"  note: {p.note}")
    return lines


def cmd_show(args: argparse.Namespace) -> int:
    try:
        at = parse_instant_ms(args.at) if args.at else _now_ms()
        catalog = _catalog(args)
        price = catalog.price_at(args.model, at, args.provider)
    except (UnknownModel, OSError, ValueError, CatalogError) as exc:
        return _fail(str(exc))
    print(f"{price.key}: in force at {format_instant(at)}: {price.version}")
    for line in _describe(price):
        print(line)
    print("history:")
    for p in catalog.versions(price.key):
        mark = "  <- in force" if p.version == price.version else ""
        print(f"  {format_instant(p.effective_from_ms)}  {p.version}  "
              f"input {dec_str(p.rates.input)}, output {dec_str(p.rates.output)}{mark}")
    return 0


def cmd_cost(args: argparse.Namespace) -> int:
    try:
        raw = orjson.loads(args.usage)
        if not isinstance(raw, dict):
            return _fail("--usage must be a JSON object of token counts")
        unknown = set(raw) - set(Tokens.__dataclass_fields__)
        if unknown or not all(isinstance(v, int) and not isinstance(v, bool) for v in raw.values()):
            return _fail(f"--usage takes integer counts of {sorted(Tokens.__dataclass_fields__)}; "
                         f"unknown: {sorted(unknown)}", 2)
        tokens = Tokens(**raw)
        at = parse_instant_ms(args.at) if args.at else _now_ms()
        price = _catalog(args).price_at(args.model, at, args.provider)
        result = cost(tokens, price, service_tier=args.service_tier, batch=args.batch,
                      web_search_calls=args.web_search_calls)
    except (UnknownModel, OSError, ValueError, CatalogError, orjson.JSONDecodeError) as exc:
        return _fail(str(exc))
    print(f"price version: {result.price_version}")
    print(f"cost: {format_usd_nano(result.nano_usd)} ({result.nano_usd} nano-USD; "
          f"{result.micro_usd} micro-USD rounded up)")
    return 0
