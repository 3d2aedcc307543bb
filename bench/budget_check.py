"""The cost of one budget check (reserve) and one release with 100,000 budgets and 100,000 keys loaded.

Run by hand (not part of the test suite):

    python bench/budget_check.py                         # 100,000 keys, 200,000 checks per case
    python bench/budget_check.py --keys 10000,100000     # both sizes: the cost should not grow
    python bench/budget_check.py --checks 50000

Everything a proxy holds is built in memory as the config log would build it:
``--keys`` keys (one user each, 100 users per workspace), one explicit daily
budget per user, a monthly budget per workspace, defaults for every user,
workspace, org and key, exceptions for 5% of users on a project, and a spend
snapshot with every one of those keys spent (100,000 keys: 106,004 budgets,
~1.2 million spend keys). Cases: budgets only; budgets + rate limits (defaults
for every user, key and workspace, explicit limits for 10% of users); the same
with the cross-proxy margin on (N = 3). Each check is one ``Policy.reserve``
(holds on every budget that applies, a token charge on every rate limit) and
one ``Policy.release`` (settled to a real token count), each timed on its own
with ``perf_counter_ns``, on a random key with random tags.

Steady state: every (key, tags) pair is checked once before timing, so each
caller's budgets are resolved (``Policy._plan``), as they are for a key in use.
The ``first check`` row is the other side: the first check of each caller
after a config change (every plan dropped), on 20,000 random callers.
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import subprocess
import time
from pathlib import Path

from llmgw.core.config import ConfigState
from llmgw.core.events import UsageEvent
from llmgw.ledger.fold import Totals, keys_of
from llmgw.ledger.spend import SpendView
from llmgw.proxy import keys as K
from llmgw.core.budgets import Budget
from llmgw.proxy.policy import Policy
from llmgw.proxy.ratelimit import RateLimit
from llmgw.core.principal import Principal

ROOT = Path(__file__).resolve().parents[1]
DAY_MS = 86_400_000
MONTH_MS = 31 * DAY_MS


def build_state(with_limits: bool, keys: int) -> tuple[ConfigState, list[Principal]]:
    state = ConfigState()
    principals = []
    until = int(time.time() * 1000) + 30 * DAY_MS
    for w in range(max(1, keys // 100)):
        ws = f"ws{w}"
        state.apply(Budget("workspace", ws, "month", 5_000_000_000, org="acme").record())
        for u in range(min(100, keys)):
            user = f"u{w}-{u}"
            _, rec = K.mint("acme", ws, user)
            state.apply(rec)
            d = rec.data or {}
            principals.append(Principal(d["key_id"], "acme", ws, user))
            state.apply(Budget("user", user, "day", 50_000_000, org="acme").record())
            if u < 5:
                state.apply(Budget("user", user, "day", 200_000_000, org="acme", tag="project:big",
                                   kind="exception", until_ms=until).record())
            if with_limits and u < 10:
                state.apply(RateLimit("user", user, "tpm", 400_000, org="acme").record())
    for kind, window, usd in (("user", "month", 300), ("workspace", "day", 2_000),
                              ("org", "month", max(100_000, 10 * keys)), ("key", "week", 200)):
        state.apply(Budget(kind, "*", window, usd * 1_000_000, kind="default").record())
    if with_limits:
        for kind, metric, n in (("user", "rpm", 600), ("user", "tpm", 2_000_000), ("key", "rpd", 100_000),
                                ("workspace", "tpd", 500_000_000)):
            state.apply(RateLimit(kind, "*", metric, n).record())
    return state, principals


def spent_view(principals: list[Principal], now_ms: int) -> SpendView:
    view = SpendView()
    one = Totals(spend_nano_usd=1_000_000_000, requests=1, input_tokens=1000, output_tokens=1000)
    for p in principals:
        ev = UsageEvent("x", now_ms - 60_000, now_ms, p.org, p.workspace, p.user, p.key_id, "anthropic",
                        "messages", "m", "m", cost_micro_usd=1_000_000, tags=("project:big",))
        for k in keys_of(ev):
            t = view.folded.get(k)
            view.folded[k] = one if t is None else t.plus(one)
    return view


TAGS = [(), ("project:big",), ("project:small",)]


def warm(policy: Policy, principals: list[Principal], now_ms: int) -> None:
    """Every caller with every tag set checked once: each one's budgets resolved, its buckets made."""
    for p in principals:
        for tags in TAGS:
            policy.release(policy.reserve(p, tags, 40_000, now_ms, tokens=12_000), 3_000)


def measure(policy: Policy, principals: list[Principal], checks: int) -> tuple[list[float], list[float], float]:
    """Wall time of each reserve and each release (us), and the mean CPU time per check (us)."""
    rng = random.Random(7)
    now_ms = int(time.time() * 1000)
    reserve, release = [], []
    clock = time.perf_counter_ns
    cpu0 = time.process_time()
    gc.disable()
    try:
        for _ in range(checks):
            p = principals[rng.randrange(len(principals))]
            tags = TAGS[rng.randrange(3)]
            t0 = clock()
            r = policy.reserve(p, tags, 40_000, now_ms, tokens=12_000)
            t1 = clock()
            policy.release(r, 3_000)
            t2 = clock()
            reserve.append((t1 - t0) / 1000)
            release.append((t2 - t1) / 1000)
    finally:
        gc.enable()
    return reserve, release, (time.process_time() - cpu0) / checks * 1e6


def first_checks(policy: Policy, state: ConfigState, principals: list[Principal], n: int) -> list[float]:
    """Reserve times of each caller's first check after a config change (its plan resolved then)."""
    policy.reload(state)
    rng = random.Random(11)
    now_ms = int(time.time() * 1000)
    out = []
    gc.disable()
    try:
        for p in rng.sample(principals, min(n, len(principals))):
            t0 = time.perf_counter_ns()
            r = policy.reserve(p, TAGS[rng.randrange(3)], 40_000, now_ms, tokens=12_000)
            out.append((time.perf_counter_ns() - t0) / 1000)
            policy.release(r, 3_000)
    finally:
        gc.enable()
    return out


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * q))]


def report(name: str, holds: int, reserve: list[float], release: list[float], cpu_us: float | None) -> None:
    rel = f"{pct(release, .5):.1f} | {pct(release, .99):.1f}" if release else "- | -"
    cpu = f"{cpu_us:.1f}" if cpu_us is not None else "-"
    print(f"| {name} | {holds} | {pct(reserve, .5):.1f} | {pct(reserve, .99):.1f} | {max(reserve):,.0f} | {rel} "
          f"| {cpu} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checks", type=int, default=200_000)
    ap.add_argument("--keys", default="100000", help="keys (and users) to load; a comma list runs each size")
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit}, "
          f"{platform.python_implementation()} {platform.python_version()}, {platform.machine()}; "
          f"{args.checks:,} checks per case; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    # the slowest check: a stall a percentile hides (the rate limiter's whole sweep held the loop ~160 ms)
    print("| case | holds per check | reserve p50 us | reserve p99 us | reserve max us | release p50 us "
          "| release p99 us | mean CPU us per check |\n|---|---|---|---|---|---|---|---|")
    for keys in (int(k) for k in args.keys.split(",")):
        for with_limits in (False, True):
            now_ms = int(time.time() * 1000)
            state, principals = build_state(with_limits, keys)
            policy = Policy.from_config(spent_view(principals, now_ms), state, lambda org: "UTC")
            budgets, limits = len(state.of_type("budget")), len(state.of_type("ratelimit"))
            what = f"{keys:,} keys, {budgets:,} budgets" + (f", {limits:,} rate limits" if limits else "")
            print(f"| *{what}, {len(policy.view.folded):,} spend keys* | | | | | | | |", flush=True)
            warm(policy, principals, now_ms)
            holds = len(policy.holds_for(principals[0], ("project:big",), now_ms))
            cases = [("budgets + rate limits", 1), ("budgets + rate limits, N=3 margin", 3)] if with_limits \
                else [("budgets", 1)]
            for case, n in cases:
                policy.proxies.set(n)
                report(case, holds, *measure(policy, principals, args.checks))
            if not with_limits:
                report("budgets, first check after a config change", holds,
                       first_checks(policy, state, principals, 20_000), [], None)
            del policy, state, principals
            gc.collect()


if __name__ == "__main__":
    main()
