"""``llmgw routes explain MODEL``: where a call for MODEL would go, in what order, priced as what.

Read from the settings and config file alone (no running gateway): for each API family that has an
upstream, the route that matches (or the family's default), its upstreams in failover order with their
weights, and the catalog entry the call is priced by. Live health is in ``/metrics``
(``llmgw_upstream_up``).
"""
from __future__ import annotations

import argparse
import fnmatch
import time
from typing import Any

from llmgw.pricing import UnknownModel, load_catalog

from .context import prices_path
from .errors import NotFound
from .routing import RoutingTable
from llmgw.core.settings import Settings


def explain(settings: Settings, model: str) -> list[str]:
    table = RoutingTable.from_settings(settings)
    catalog = load_catalog(prices_path(settings))
    now = int(time.time() * 1000)
    blocks: list[tuple[bool, list[str]]] = []
    for family in sorted({u.family for u in table.upstreams.values()}):
        try:
            target = table.resolve(family, model)
        except NotFound:
            continue
        route = next((r for r in table.routes if table.upstreams[r.upstream].family == family
                      and fnmatch.fnmatchcase(model, r.pattern)), None)
        lines = [f"{family}: " + (f"route {route.pattern!r}" if route else "no route matches: the family's default")]
        if route is not None:            # the configured order; each call draws within one order by weight
            for i, m in enumerate(sorted(route.all_members, key=lambda m: (m.order, -m.weight)), 1):
                up = table.upstreams[m.upstream]
                share = f"  order {m.order}, weight {m.weight:g}" if len(route.all_members) > 1 else ""
                lines.append(f"  {i}. {up.name} ({up.kind}) {up.base_url}{share}")
        else:
            lines.append(f"  1. {target.upstream.name} ({target.upstream.kind}) {target.upstream.base_url}")
        try:
            price, estimated = catalog.resolve(target.price_model, now, provider=target.upstream.price_provider,
                                               policy=settings.unknown_model,  # type: ignore[arg-type]
                                               fallback_entry=settings.fallback_price or None)
            how = " (the unknown-model fallback: events flagged cost_estimated)" if estimated else ""
            lines.append(f"  priced as {price.key} [{price.version}]{how}")
            priced = True
        except UnknownModel:
            lines.append(f"  no price for {target.price_model!r}: calls are refused before any upstream call")
            priced = False
        blocks.append((priced or route is not None, lines))
    shown = [b for ok, b in blocks if ok] or [b for _, b in blocks]
    out = [f"model {model!r}", *(line for b in shown for line in b)]
    if not shown:
        out.append("no upstream serves it")
    if any(len(r.all_members) > 1 for r in table.routes):
        out.append("within one order, each call draws its upstream by weight; one whose circuit breaker is open "
                   "is tried last; a call moves on only before any response byte (connect error, 429, 5xx)")
    return out


def cmd_routes_explain(args: argparse.Namespace) -> int:
    flags = {k: getattr(args, k, None) for k in ("config", "data_dir")}
    settings = Settings.load(**{k: v for k, v in flags.items() if v is not None})
    print("\n".join(explain(settings, args.model)))
    return 0


def register(subparsers: Any) -> None:
    r = subparsers.add_parser("routes", help="how models are routed to upstreams").add_subparsers(
        dest="routes_command", required=True, metavar="COMMAND")
    e = r.add_parser("explain", help="where a call for MODEL goes, in failover order, and its price entry")
    e.add_argument("model")
    e.add_argument("--config", help="config file (default LLMGW_CONFIG)")
    e.set_defaults(func=cmd_routes_explain)
