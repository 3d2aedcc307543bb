"""The cost of one budget check (reserve + release) with 10,000 budgets and 10,000 keys loaded.

Run by hand (not part of the test suite):

    python bench/budget_check.py                 # 200,000 checks per case
    python bench/budget_check.py --checks 50000

Everything a proxy holds is built in memory as the config log would build it:
10,000 keys (100 workspaces x 100 users), one explicit daily budget per user,
a monthly budget per workspace, defaults for every user, workspace and org,
exceptions for 500 users on a project, and a spend snapshot with every one of
those keys spent. Cases: budgets only; budgets + rate limits (defaults for
every user and key, 1,000 explicit limits); the same with the cross-proxy
margin on (N = 3). Each check is one ``Policy.reserve`` (holds on every budget
that applies, a token charge on every rate limit) and one ``Policy.release``
(settled to a real token count), timed one by one with ``perf_counter_ns``.
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


def build_state(with_limits: bool) -> tuple[ConfigState, list[Principal]]:
    state = ConfigState()
    principals = []
    until = int(time.time() * 1000) + 30 * DAY_MS
    for w in range(100):
        ws = f"ws{w}"
        state.apply(Budget("workspace", ws, "month", 5_000_000_000, org="acme").record())
        for u in range(100):
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
    for kind, window, usd in (("user", "month", 300), ("workspace", "day", 2_000), ("org", "month", 100_000),
                              ("key", "week", 200)):
        state.apply(Budget(kind, "*", window, usd * 1_000_000, kind="default").record())
    if with_limits:
        for kind, metric, n in (("user", "rpm", 600), ("user", "tpm", 2_000_000), ("key", "rpd", 100_000),
                                ("workspace", "tpd", 500_000_000)):
            state.apply(RateLimit(kind, "*", metric, n).record())
    return state, principals


def spent_view(principals: list[Principal], now_ms: int) -> SpendView:
    view = SpendView()
    for p in principals:
        ev = UsageEvent("x", now_ms - 60_000, now_ms, p.org, p.workspace, p.user, p.key_id, "anthropic",
                        "messages", "m", "m", cost_micro_usd=1_000_000, tags=("project:big",))
        for k in keys_of(ev):
            view.folded[k] = view.folded.get(k, Totals()).plus(
                Totals(spend_nano_usd=1_000_000_000, requests=1, input_tokens=1000, output_tokens=1000))
    return view


def measure(policy: Policy, principals: list[Principal], checks: int) -> tuple[list[float], float]:
    """Wall time of each check (us), and the mean CPU time per check (us) over the run."""
    rng = random.Random(7)
    now_ms = int(time.time() * 1000)
    tags_choices = [(), ("project:big",), ("project:small",)]
    samples = []
    cpu0 = time.process_time()
    gc.disable()
    try:
        for _ in range(checks):
            p = principals[rng.randrange(len(principals))]
            tags = tags_choices[rng.randrange(3)]
            t0 = time.perf_counter_ns()
            r = policy.reserve(p, tags, 40_000, now_ms, tokens=12_000)
            policy.release(r, 3_000)
            samples.append((time.perf_counter_ns() - t0) / 1000)
    finally:
        gc.enable()
    return samples, (time.process_time() - cpu0) / checks * 1e6


def report(name: str, samples: list[float], cpu_us: float, holds: int) -> str:
    samples.sort()
    med = statistics.median(samples)
    p99 = samples[int(len(samples) * 0.99)]
    line = f"| {name} | {holds} | {med:.1f} | {p99:.1f} | {cpu_us:.1f} |"
    print(line, flush=True)
    return line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checks", type=int, default=200_000)
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    print(f"# commit {commit}, {platform.python_implementation()} {platform.python_version()}, "
          f"{platform.machine()}, {platform.processor() or '?'}; {args.checks:,} checks per case")
    now_ms = int(time.time() * 1000)
    print(f"# load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print("| case | holds per check | median us | p99 us | mean CPU us |\n|---|---|---|---|---|")
    for case, with_limits, n in (("budgets", False, 1), ("budgets + rate limits", True, 1),
                                 ("budgets + rate limits, N=3 margin", True, 3)):
        state, principals = build_state(with_limits)
        policy = Policy.from_config(spent_view(principals, now_ms), state, lambda org: "UTC")
        policy.proxies.set(n)
        if case == "budgets":
            budgets = len(state.of_type("budget"))
            keys = len(state.of_type("key"))
            print(f"# loaded: {budgets:,} budgets, {keys:,} keys, {len(policy.view.folded):,} spend keys")
        elif n == 1:
            print(f"# loaded: {len(state.of_type('ratelimit')):,} rate limits")
        measure(policy, principals, 5_000)              # warm up: buckets, caches
        holds = len(policy.holds_for(principals[0], ("project:big",), now_ms))
        report(case, *measure(policy, principals, args.checks), holds)


if __name__ == "__main__":
    main()
