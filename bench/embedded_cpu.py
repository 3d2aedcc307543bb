"""CPU per 1,000 calls of the embedded gateway, split by process, paired against another checkout.

    python bench/embedded_cpu.py --baseline /tmp/llmgw-old [--seconds 10] [--rounds 3]
    python bench/embedded_cpu.py --baseline . --env LLMGW_UPSTREAM_CLIENT=h1   # one checkout, two settings

Since the analytics insert moved to its own process (``analytics/process.py``), the gateway's
CPU alone no longer tells the whole cost: each row gives the gateway process's CPU-ms per 1,000
calls, its children's (the analytics process), their sum, and the RSS of each after the run.
Targets alternate cell by cell within one run (the machine is shared: only ratios of one run
mean anything). Every checkout runs its own code: its folders are linked under ``llmgw`` in a
temp dir put first on PYTHONPATH (an editable install would otherwise run for both).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import proxy_overhead as po  # noqa: E402

ROOT = po.ROOT
link_tree = po.link_tree


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def tree_cpu_ms(pid: int) -> tuple[float, float]:
    """(the process's CPU-ms, its live children's)."""
    kids = 0.0
    for kid in children(pid):
        try:
            kids += po.cpu_ms(kid)
        except FileNotFoundError:
            pass
    return po.cpu_ms(pid), kids


async def start(root: Path, tmp: Path, name: str, fake: str,
                extra: dict[str, str]) -> tuple[subprocess.Popen[bytes], str, str]:
    env = {**os.environ, "PYTHONPATH": str(link_tree(root, tmp / f"paths-{name}")), **extra}
    data = tmp / f"data-{name}"
    genv = {**env, "LLMGW_DATA_DIR": str(data), "LLMGW_OPENAI_BASE_URL": fake + "/openai/v1",
            "LLMGW_OPENAI_API_KEY": "sk-openai-upstream-test", "LLMGW_LOG_LEVEL": po.LOG_LEVEL}
    print(f"# {name}: llmgw.proxy.cli from {po.imported_from('llmgw.proxy.cli', genv, root)}", flush=True)
    key = subprocess.run([sys.executable, "-m", "llmgw.proxy.cli", "keys", "create", "--org", "bench",
                          "--workspace", "w", "--user", "u"], env=genv, capture_output=True, text=True,
                         check=True, cwd=root).stdout.strip().splitlines()[-1]
    port = po.free_port()
    gw = po.start([sys.executable, "-m", "llmgw.proxy.cli", "serve", "--port", str(port)], genv,
                  tmp / f"{name}.log", None, cwd=root)
    await po.wait_http(f"http://127.0.0.1:{port}/healthz")
    return gw, f"http://127.0.0.1:{port}/v1", key


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, help="another llmgw checkout")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--log-level", default="WARNING", help="the gateways' LLMGW_LOG_LEVEL (INFO: an access "
                                                         "line per call, the default of `llmgw serve`)")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="an environment variable for this checkout's gateway only (repeatable)")
    ap.add_argument("--baseline-env", action="append", default=[], metavar="NAME=VALUE",
                    help="an environment variable for the baseline's gateway only (repeatable)")
    args = ap.parse_args()
    po.LOG_LEVEL = args.log_level
    tmp = Path(tempfile.mkdtemp(prefix="llmgw-bench-cpu-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        fport = po.free_port()
        procs.append(po.start([sys.executable, "-m", "tests.fake_provider", "--port", str(fport)], dict(os.environ),
                              tmp / "fake.log"))
        fake = f"http://127.0.0.1:{fport}"
        await po.wait_http(fake + "/openai/v1/models")
        roots = {"this": (ROOT, args.env), "baseline": (Path(args.baseline).resolve(), args.baseline_env)}
        targets = {}
        for name, (root, pairs) in roots.items():
            extra = dict(pair.split("=", 1) for pair in pairs)
            gw, url, key = await start(root, tmp, name, fake, extra)
            procs.append(gw)
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    cwd=root).stdout.strip()
            label = "".join(f" {v}" for v in extra.values())
            targets[f"{name}@{commit}{label}"] = (gw, url, key)
        print(f"# {time.strftime('%Y-%m-%d %H:%M')} c={args.concurrency} {args.seconds}s/cell, "
              f"{args.rounds} rounds, log level {args.log_level}, cores {os.cpu_count()}, "
              f"load average {os.getloadavg()[0]:.1f} at the start\n")
        print("| target | kind | round | req/s | gateway CPU ms/1k | analytics process ms/1k | sum | errors |")
        print("|---|---|---|---|---|---|---|---|")
        for stream in (False, True):
            for rnd in range(args.rounds):
                for name, (gw, url, key) in targets.items():
                    await po.load(url, key, 8, 1.0, stream)                   # warm-up
                    g0, k0 = tree_cpu_ms(gw.pid)
                    r = await po.load(url, key, args.concurrency, args.seconds, stream)
                    await asyncio.sleep(1.5)                                   # its once-a-second insert
                    g1, k1 = tree_cpu_ms(gw.pid)
                    per = 1000 / max(r.calls, 1)
                    print(f"| {name} | {'stream' if stream else 'chat'} | {rnd} | {len(r.latencies) / r.elapsed:.0f} "
                          f"| {(g1 - g0) * per:.0f} | {(k1 - k0) * per:.0f} | {(g1 - g0 + k1 - k0) * per:.0f} "
                          f"| {r.errors} |", flush=True)
        for name, (gw, _, _) in targets.items():
            kids = " + ".join(f"{po.rss_mb(k):.0f}" for k in children(gw.pid)) or "none"
            print(f"# {name}: RSS gateway {po.rss_mb(gw.pid):.0f} MB, children {kids} MB")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    asyncio.run(main())
