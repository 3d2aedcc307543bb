"""Instructions per proxied call in the gateway process, counted by callgrind: a CPU figure the load of
a shared machine cannot move.

    python bench/instructions.py --baseline /tmp/llmgw-old            # chat and stream, 400 calls each
    python bench/instructions.py --baseline . --kinds stream --calls 1000 --concurrency 16
    python bench/instructions.py --baseline /tmp/old --analytics        # analytics on, as `llmgw serve`

Why: on this 2-core machine, shared with other work, two cells of the same code in
``bench/embedded_cpu.py`` differ by 10-20%, so a 10% change cannot be seen there in one run. Under
callgrind the gateway runs ~50x slower, but the user-space instructions it executes for N calls repeat
to ~0.1%. Instrumentation is switched on (``callgrind_control -i on``) only around the N calls, after
a warm-up, so start-up and imports are not counted.

What it does not count: the kernel's work (the socket and fsync syscalls: ~11% of the gateway's CPU
by /proc at c=64), time spent waiting, and other processes (the analytics process, the fake
provider). With ``--analytics`` a checkout that inserts into chDB in process (before the analytics
process) has that insert counted and the newer one does not: the default runs both gateways with
analytics off (``LLMGW_ANALYTICS=0``), the call path alone. The fake provider answers at once; each
target runs from its own checkout through a link tree, as in ``bench/proxy_overhead.py``.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
import proxy_overhead as po  # noqa: E402

ROOT = po.ROOT


async def calls(url: str, key: str, n: int, concurrency: int, stream: bool) -> int:
    """``n`` chat completions from ``concurrency`` clients; returns how many were not 200."""
    body = orjson.dumps({"model": "gpt-4o-mini", "stream": stream,
                         "messages": [{"role": "user", "content": "Say hello in five words."}]})
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    left, errors = [n], [0]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        async def client() -> None:
            while left[0] > 0:
                left[0] -= 1
                async with http.post(url + "/chat/completions", data=body, headers=headers) as r:
                    await r.read()
                    errors[0] += r.status != 200
        await asyncio.gather(*(client() for _ in range(concurrency)))
    return errors[0]


async def count(root: Path, fake: str, tmp: Path, stream: bool, n: int, concurrency: int,
                analytics: bool) -> tuple[float, int]:
    """(instructions per call, errors) of the gateway of the checkout at ``root``."""
    env = {**os.environ, "PYTHONPATH": str(po.link_tree(root, tmp / "paths")), "PYTHONHASHSEED": "0"}
    genv = {**env, "LLMGW_DATA_DIR": str(tmp / "data"), "LLMGW_OPENAI_BASE_URL": fake + "/openai/v1",
            "LLMGW_OPENAI_API_KEY": "sk-openai-upstream-test", "LLMGW_LOG_LEVEL": "WARNING",
            "LLMGW_ANALYTICS": "1" if analytics else "0"}
    key = subprocess.run([sys.executable, "-m", "llmgw.proxy.cli", "keys", "create", "--org", "bench",
                          "--workspace", "w", "--user", "u"], env=genv, capture_output=True, text=True,
                         check=True, cwd=root).stdout.strip().splitlines()[-1]
    port, out = po.free_port(), tmp / "callgrind.out"
    gw = po.start(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                   sys.executable, "-m", "llmgw.proxy.cli", "serve", "--port", str(port)],
                  genv, tmp / "gateway.log", None, cwd=root)
    try:
        await po.wait_http(f"http://127.0.0.1:{port}/healthz", timeout_s=300)
        url = f"http://127.0.0.1:{port}/v1"
        await calls(url, key, 150, concurrency, stream)             # warm-up: caches, pools, plans
        await asyncio.sleep(15 if analytics else 1)                  # the analytics start-up is over
        subprocess.run(["callgrind_control", "-i", "on", str(gw.pid)], capture_output=True, check=True)
        errors = await calls(url, key, n, concurrency, stream)
        await asyncio.sleep(0.5)                                      # the calls' events are written
        subprocess.run(["callgrind_control", "-i", "off", str(gw.pid)], capture_output=True, check=True)
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(timeout=300)
    totals = [line for line in out.read_text().splitlines() if line.startswith(("summary:", "totals:"))]
    return int(totals[-1].split()[1]) / n, errors


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, help="another llmgw checkout")
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--kinds", default="chat,stream")
    ap.add_argument("--analytics", action="store_true", help="analytics on in both gateways (see above)")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    roots = {"this": ROOT, "baseline": Path(args.baseline).resolve()}
    commits = {name: subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    cwd=root).stdout.strip() for name, root in roots.items()}
    tmp = Path(tempfile.mkdtemp(prefix="llmgw-bench-instr-"))
    fport = po.free_port()
    fake_proc = po.start([sys.executable, "-m", "tests.fake_provider", "--port", str(fport)], dict(os.environ),
                         tmp / "fake.log")
    try:
        fake = f"http://127.0.0.1:{fport}"
        await po.wait_http(fake + "/openai/v1/models")
        print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {args.calls} calls per cell at "
              f"c={args.concurrency}, analytics {'on' if args.analytics else 'off'}, callgrind\n")
        print("| kind | this@{} | baseline@{} | this / baseline | errors |".format(commits["this"],
                                                                              commits["baseline"]))
        print("|---|---|---|---|---|")
        for kind in args.kinds.split(","):
            got = {}
            for name, root in roots.items():
                cell = tmp / f"{name}-{kind}"
                cell.mkdir()
                got[name] = await count(root, fake, cell, kind == "stream", args.calls, args.concurrency,
                                        args.analytics)
            (mine, e1), (base, e2) = got["this"], got["baseline"]
            print(f"| {kind} | {mine:,.0f} | {base:,.0f} | {mine / base:.3f} | {e1} / {e2} |", flush=True)
    finally:
        fake_proc.send_signal(signal.SIGTERM)
        fake_proc.wait(timeout=30)


if __name__ == "__main__":
    asyncio.run(main())
