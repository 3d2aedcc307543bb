"""The dashboard's HTML: server-rendered tables and inline SVG charts, no third-party code.

Everything is rendered here from ``analytics.dashboard`` values; every string
that came from data goes through ``html.escape``. The page works without
JavaScript; ``static/dashboard.js`` only refreshes it and shows local times.
Money is shown in dollars and cents (``dollars``), the exact micro-USD amount
(``queries.format_usd``) in each figure's tooltip; chart axes step by round amounts.
"""
from __future__ import annotations

from collections.abc import Sequence
from html import escape

from llmgw.analytics.dashboard import BREAKDOWNS, AlertView, BudgetUse, Spend, utc_text
from llmgw.analytics.queries import format_usd

PALETTE = ("#4f7cff", "#f28b30", "#2bb673", "#e5484d", "#9b6cf0", "#13a8b8", "#d6a300", "#8a8f98")
_TITLES = {"org": "organization", "workspace": "workspace", "user": "user", "model": "model"}


def usd(micro: int) -> str:
    """Exact: "$1.234567" (tooltips, bar titles)."""
    return f"${format_usd(micro)}"


def dollars(micro: int) -> str:
    """Readable money, rounded half away from zero to the cent: 1234567891 -> "$1,234.57"."""
    sign = "-" if micro < 0 else ""
    cents = (abs(micro) + 5_000) // 10_000
    return f"{sign}${cents // 100:,}.{cents % 100:02d}"


def money(micro: int) -> str:
    """A money figure for a table or card: dollars and cents, the exact amount on hover. Spend too small to
    round to a cent reads "<$0.01", not "$0.00", so a busy row of cheap calls does not look free."""
    shown = "<$0.01" if 0 < micro < 5_000 else dollars(micro)
    return f'<span class="money" title="{_e(usd(micro))} exactly">{_e(shown)}</span>'


def axis_step(peak: int) -> int:
    """The step between a chart's two gridlines above zero: the least 1, 2 or 5 x 10^n micro-USD with two steps
    reaching ``peak``, so the axis reads $0.05 / $0.10, not $0.037650 / $0.075300."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if 2 * m * step >= peak:
                return m * step
        step *= 10


def _tick(micro: int) -> str:
    if micro == 0 or micro % 10_000 == 0:
        return dollars(micro)
    return "$" + format_usd(micro).rstrip("0")             # below a cent: "$0.0005"


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _time(ms: int, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """A UTC time the page script may re-show in the viewer's zone."""
    if not ms:
        return "-"
    shown = "date" if "%d" in fmt else "seconds" if "%S" in fmt else "time"
    return f'<time data-ms="{ms}" data-show="{shown}">{_e(utc_text(ms, fmt))} UTC</time>'


# ---- charts ------------------------------------------------------------------------------------


def stacked_bars(labels: Sequence[str], series: dict[str, list[int]], colors: dict[str, str], *,
                 width: int = 1120, height: int = 220, tick_every: int = 10, title: str = "") -> str:
    """Vertical bars, one per label, stacked by series; values are micro-USD (never negative here)."""
    left, bottom, top = 70, 24, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    totals = [sum(max(values[i], 0) for values in series.values()) for i in range(len(labels))]
    peak = 2 * axis_step(max(totals, default=0) or 1)      # the top gridline, a round amount
    step = plot_w / max(len(labels), 1)
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'role="img" aria-label="{_e(title)}">']
    for frac in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - frac)
        parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" class="axis" text-anchor="end">'
                     f'{_e(_tick(int(peak * frac)))}</text>')
    for i, label in enumerate(labels):
        x, base = left + i * step, float(top + plot_h)
        for name, values in series.items():
            value = max(values[i], 0)
            if not value:
                continue
            h = plot_h * value / peak
            base -= h
            parts.append(f'<rect x="{x + 1:.1f}" y="{base:.1f}" width="{max(step - 2, 1):.1f}" height="{h:.1f}" '
                         f'fill="{colors[name]}"><title>{_e(label)} {_e(name)}: {_e(usd(value))}</title></rect>')
        if i % tick_every == 0:
            parts.append(f'<text x="{x + step / 2:.1f}" y="{height - 6}" class="axis" text-anchor="middle">'
                         f'{_e(label[11:16] if len(label) >= 16 else label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def meter(permille: int, *, width: int = 140, height: int = 12) -> str:
    """A horizontal gauge: green below 75 %, amber below 90 %, red from 90 %."""
    filled = width * min(max(permille, 0), 1000) / 1000
    color = "#2bb673" if permille < 750 else "#d6a300" if permille < 900 else "#e5484d"
    return (f'<svg class="meter" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="{permille / 10:.1f}% used"><rect width="{width}" height="{height}" rx="3" class="track"/>'
            f'<rect width="{filled:.1f}" height="{height}" rx="3" fill="{color}"/></svg>')


def hbar(value: int, peak: int, *, width: int = 120, height: int = 10, color: str = PALETTE[0]) -> str:
    w = width * max(value, 0) / peak if peak > 0 else 0
    return (f'<svg class="hbar" viewBox="0 0 {width} {height}" width="{width}" height="{height}" aria-hidden="true">'
            f'<rect width="{w:.1f}" height="{height}" rx="2" fill="{color}"/></svg>')


# ---- sections ----------------------------------------------------------------------------------


def _kpis(spend: Spend, budgets: Sequence[BudgetUse]) -> str:
    today, calls_today = spend.cost_today, spend.requests_today
    hot = sum(1 for b in budgets if b.used_permille >= 900)
    cards = [("Last 60 minutes", money(spend.cost_last_hour), f"{spend.requests_last_hour} calls", "kpi-hour"),
             ("Today (UTC)", money(today), f"{calls_today} calls", "kpi-today"),
             ("Budgets at 90 % or more", _e(hot), f"of {len(budgets)} in force", "kpi-budgets"),
             ("Refusals, last 24 h", _e(len(spend.refusals)), "budget, rate and policy", "kpi-refusals")]
    return '<section class="kpis">' + "".join(
        f'<div class="kpi" id="{i}"><div class="kpi-label">{_e(t)}</div><div class="kpi-value">{v}</div>'
        f'<div class="kpi-sub">{_e(s)}</div></div>' for t, v, s, i in cards) + "</section>"


def _minute_chart(spend: Spend, most: int = len(PALETTE) - 1) -> str:
    ranked = sorted(spend.per_minute, key=lambda o: (-sum(spend.per_minute[o].values()), o))
    series = {org: [spend.per_minute[org].get(m, 0) for m in spend.minutes] for org in ranked[:most]}
    if len(ranked) > most:                     # the long tail shares one colour
        rest = ranked[most:]
        series[f"{len(rest)} more"] = [sum(spend.per_minute[o].get(m, 0) for o in rest) for m in spend.minutes]
    orgs = list(series)
    colors = {org: PALETTE[i % len(PALETTE)] for i, org in enumerate(orgs)}
    legend = "".join(f'<span class="key"><svg width="10" height="10" aria-hidden="true"><rect width="10" height="10" '
                     f'fill="{colors[o]}"/></svg>{_e(o)}</span>' for o in orgs)
    body = (stacked_bars(spend.minutes, series, colors, title="spend per minute by organization")
            if orgs else '<p class="empty">No calls in the last 60 minutes.</p>')
    return (f'<section class="card wide" id="per-minute"><h2>Spend per minute, last 60 minutes (UTC), '
            f'by organization</h2><div class="legend">{legend}</div>{body}</section>')


def _hour_chart(spend: Spend) -> str:
    hours = [f"{h:02d}:00" for h in range(24)]
    values = [spend.per_hour.get(h, 0) for h in hours]
    body = (stacked_bars(hours, {"spend": values}, {"spend": PALETTE[1]}, height=160, tick_every=3,
                         title="spend per hour today")
            if any(values) else '<p class="empty">No spend today yet.</p>')
    return f'<section class="card wide" id="per-hour"><h2>Spend per hour today (UTC)</h2>{body}</section>'


def _breakdown(spend: Spend, name: str, color: str) -> str:
    rows = spend.today.get(name, [])
    peak = max((r.cost_micro_usd for r in rows), default=0)
    hour = spend.last_hour.get(name, {})
    body = "".join(
        f'<tr><td class="name">{_e(r.dims.get(name, "") or "(none)")}</td><td>{hbar(r.cost_micro_usd, peak, color=color)}</td>'
        f'<td class="num">{money(r.cost_micro_usd)}</td><td class="num">{r.requests}</td>'
        f'<td class="num">{money(hour.get(r.dims.get(name, ""), 0))}</td></tr>' for r in rows)
    table = (f'<table><thead><tr><th>{_e(_TITLES[name])}</th><th></th><th class="num">today</th>'
             f'<th class="num">calls</th><th class="num">last 60 min</th></tr></thead><tbody>{body}</tbody></table>'
             if rows else '<p class="empty">Nothing yet today.</p>')
    return f'<section class="card" id="by-{name}"><h2>Today by {_e(_TITLES[name])}</h2>{table}</section>'


def _budgets(budgets: Sequence[BudgetUse]) -> str:
    body = "".join(
        f'<tr><td class="name">{_e(b.scope)}</td><td>{_e(b.window)}</td><td>{meter(b.used_permille)}</td>'
        f'<td class="num">{b.used_permille / 10:.1f}%</td><td class="num">{money(b.spent_micro_usd)}</td>'
        f'<td class="num">{money(b.limit_micro_usd)}</td><td>{_e(b.kind)}</td><td>{_time(b.resets_ms)}</td></tr>'
        for b in budgets)
    table = ('<table><thead><tr><th>scope</th><th>window</th><th>used</th><th class="num"></th>'
             '<th class="num">spent</th><th class="num">limit</th><th>kind</th><th>resets</th></tr></thead>'
             f"<tbody>{body}</tbody></table>" if budgets else '<p class="empty">No budgets in force.</p>')
    return f'<section class="card wide" id="budgets"><h2>Budgets in force</h2>{table}</section>'


def _alerts(alerts: Sequence[AlertView], evaluated_here: bool) -> str:
    if alerts:
        body = "".join(f'<tr><td>{_time(a.fired_ms)}</td><td>{_e(a.label)}</td><td class="name">{_e(a.scope)}</td>'
                       f'<td>{_e(a.message)}</td></tr>' for a in alerts)
        table = (f"<table><thead><tr><th>fired</th><th></th><th>scope</th><th>message</th></tr></thead>"
                 f"<tbody>{body}</tbody></table>")
    else:
        table = ('<p class="empty">No alerts fired.</p>' if evaluated_here else
                 '<p class="empty">Alerts are evaluated by the ledger worker in this deployment.</p>')
    return f'<section class="card" id="alerts"><h2>Alerts</h2>{table}</section>'


def _refusals(spend: Spend) -> str:
    body = "".join(
        f'<tr><td>{_time(r.ts_ms, "%H:%M:%S")}</td><td>{_e(r.outcome.removeprefix("rejected_"))}</td>'
        f'<td class="name">{_e(r.org)}/{_e(r.workspace)}/{_e(r.user)}</td><td>{_e(r.key_id)}</td>'
        f'<td>{_e(r.model)}</td><td class="num">{r.http_status}</td></tr>' for r in spend.refusals)
    table = ("<table><thead><tr><th>time</th><th>why</th><th>who</th><th>key</th><th>model</th>"
             f'<th class="num">status</th></tr></thead><tbody>{body}</tbody></table>'
             if spend.refusals else '<p class="empty">No refusals in the last 24 hours.</p>')
    return f'<section class="card" id="refusals"><h2>Recent refusals</h2>{table}</section>'


def _sessions(spend: Spend) -> str:
    body = "".join(
        f'<tr><td class="name mono">{_e(s.session_id)}</td><td>{_e(s.org)}/{_e(s.user)}</td>'
        f'<td class="num">{s.calls}</td><td class="num">{money(s.cost_micro_usd)}</td>'
        f'<td>{_time(s.first_ms, "%H:%M")}–{_time(s.last_ms, "%H:%M")}</td><td>{_e(", ".join(s.models))}</td></tr>'
        for s in spend.sessions)
    table = ('<table><thead><tr><th>session</th><th>who</th><th class="num">calls</th><th class="num">spend</th>'
             f"<th>active</th><th>models</th></tr></thead><tbody>{body}</tbody></table>"
             if spend.sessions else '<p class="empty">No agent sessions today.</p>')
    return f'<section class="card wide" id="sessions"><h2>Top sessions today</h2>{table}</section>'


def _page(title: str, body: str) -> str:
    return ('<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{_e(title)}</title><link rel="icon" href="/dashboard/static/favicon.svg" type="image/svg+xml">'
            '<link rel="stylesheet" href="/dashboard/static/dashboard.css">'
            '<script src="/dashboard/static/dashboard.js" defer></script></head>'
            f"<body>{body}</body></html>")


def render_dashboard(spend: Spend, budgets: Sequence[BudgetUse], alerts: Sequence[AlertView], *,
                     admin: str, role: str, alerts_here: bool) -> str:
    header = (f'<header><h1>llmgw <span>spend</span></h1><div class="asof">as of {_time(spend.now_ms, "%Y-%m-%d %H:%M:%S")}'
              f'</div><div class="who"><a href="/dashboard/finance">finance view</a> · {_e(admin)} · {_e(role)}'
              '<form method="post" action="/dashboard/logout"><button type="submit">Sign out</button></form></div>'
              "</header>")
    colors = dict(zip(BREAKDOWNS, PALETTE))
    main = (_kpis(spend, budgets) + '<div class="grid">' + _minute_chart(spend) + _hour_chart(spend)
            + "".join(_breakdown(spend, name, colors[name]) for name in BREAKDOWNS)
            + _budgets(budgets) + _alerts(alerts, alerts_here) + _refusals(spend) + _sessions(spend) + "</div>")
    return _page("llmgw spend dashboard", f'{header}<main data-refresh-s="60">{main}</main>')


def render_login(error: str = "") -> str:
    message = f'<p class="error" role="alert">{_e(error)}</p>' if error else ""
    form = ('<main class="login"><h1>llmgw <span>spend</span></h1>'
            '<form method="post" action="/dashboard/login" autocomplete="off">'
            '<label for="key">Admin key</label>'
            '<input id="key" name="key" type="password" required autocomplete="off" spellcheck="false">'
            f'{message}<button type="submit">Sign in</button>'
            '<p class="hint">An owner, finance, viewer or workspace admin credential. '
            "The key is checked once and never stored in the browser: the session is a signed cookie.</p>"
            "</form></main>")
    return _page("llmgw dashboard: sign in", form)


def render_error(message: str) -> str:
    body = (f'<main class="login"><h1>llmgw <span>spend</span></h1><p class="error" role="alert">{_e(message)}</p>'
            '<p class="hint">The page retries on its own; spend is still enforced by the gateway.</p></main>')
    return _page("llmgw dashboard: unavailable", body)


__all__ = ["PALETTE", "axis_step", "dollars", "hbar", "meter", "money", "render_dashboard", "render_error",
           "render_login", "stacked_bars", "usd"]
