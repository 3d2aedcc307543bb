"""Malformed-input run: N hostile requests (tests/hostile_corpus.py) against a served ``llmgw serve``.

Run by hand (not part of the test suite), loopback only:

    python bench/hostile_input.py                    # 10,000 requests, 16 clients
    python bench/hostile_input.py --requests 2000 --concurrency 4

The fake provider runs in this process and counts every request it receives; the gateway is its own
process, so its RSS is read from /proc before the run (after a warm-up of valid calls), after it,
and after a second run of the same size (growth that continues is a leak; a one-off step is not).
Reported: statuses by class, 5xx count, upstream calls during the malformed run, answers not in the
client API's error shape, gateway RSS. Exit status 1 if any 5xx, upstream call or wrong shape.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.proxy_overhead import free_port, rss_mb, wait_http  # noqa: E402
from tests.fake_provider import FakeProvider  # noqa: E402
from tests.hostile_corpus import VALID, assert_error_shape, stream  # noqa: E402


async def run(url: str, key: str, n: int, concurrency: int, seed: int) -> dict[str, object]:
    todo = collections.deque(stream(n, seed))
    statuses: collections.Counter[int] = collections.Counter()
    wrong_shape: list[str] = []

    async def client(http: aiohttp.ClientSession) -> None:
        while todo:
            case = todo.popleft()
            headers = {"authorization": f"Bearer {key}", **case.headers}
            async with http.post(url + case.path, data=case.body, headers=headers) as r:
                body = await r.read()
            statuses[r.status] += 1
            try:
                assert_error_shape(case, r.status, body)
            except (AssertionError, ValueError, KeyError, TypeError):
                wrong_shape.append(f"{case.name}: {r.status} {body[:120]!r}")

    t0 = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    return {"requests": sum(statuses.values()), "seconds": round(time.monotonic() - t0, 1),
            "statuses": {str(s): c for s, c in sorted(statuses.items())}, "5xx": sum(c for s, c in statuses.items() if s >= 500),
            "wrong_shape": wrong_shape[:10], "wrong_shape_count": len(wrong_shape)}


async def valid_calls(url: str, key: str, n: int) -> int:
    ok = 0
    async with aiohttp.ClientSession() as http:
        for i in range(n):
            path = list(VALID)[i % len(VALID)]
            body, headers, _ = VALID[path]
            async with http.post(url + path, data=orjson.dumps(body),
                                 headers={"authorization": f"Bearer {key}", **headers}) as r:
                await r.read()
                ok += r.status == 200
    return ok


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seed", type=int, default=17)
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        async with FakeProvider() as fake:
            env = {**os.environ, "LLMGW_DATA_DIR": str(Path(tmp) / "gw"), "LLMGW_OPENAI_BASE_URL": fake.openai_base_url,
                   "LLMGW_OPENAI_API_KEY": fake.openai_key, "LLMGW_ANTHROPIC_BASE_URL": fake.anthropic_base_url,
                   "LLMGW_ANTHROPIC_API_KEY": fake.anthropic_key, "LLMGW_LOG_LEVEL": "WARNING",
                   "LLMGW_ANALYTICS": "0", "LLMGW_ADMIN_KEY": "llmgw-admin-bench-only-0123456789"}
            env.pop("LLMGW_KAFKA_BOOTSTRAP", None)
            key = subprocess.run([sys.executable, "-m", "llmgw.proxy.cli", "keys", "create", "--org", "bench",
                                  "--workspace", "w", "--user", "u"], env=env, capture_output=True, text=True,
                                 check=True, cwd=ROOT).stdout.strip()
            port = free_port()
            with open(Path(tmp) / "gw.log", "wb") as log:
                gw = subprocess.Popen([sys.executable, "-m", "llmgw.proxy.cli", "serve", "--port", str(port)], env=env,
                                      stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
                try:
                    url = f"http://127.0.0.1:{port}"
                    await wait_http(url + "/healthz")
                    warm = await valid_calls(url, key, 50)
                    rss_before, upstream_before = rss_mb(gw.pid), len(fake.requests)
                    first = await run(url, key, args.requests, args.concurrency, args.seed)
                    rss_after = rss_mb(gw.pid)
                    second = await run(url, key, args.requests, args.concurrency, args.seed + 1)
                    rss_after_second = rss_mb(gw.pid)
                    upstream_calls = len(fake.requests) - upstream_before
                    still = await valid_calls(url, key, 10)
                finally:
                    gw.terminate()
                    gw.wait(30)
    summary = {"commit": commit, "cpus": os.cpu_count(), "warm_valid_ok": warm, "run_1": first, "run_2": second,
               "upstream_calls_from_malformed": upstream_calls, "rss_mb_before": round(rss_before, 1),
               "rss_mb_after_run_1": round(rss_after, 1), "rss_mb_after_run_2": round(rss_after_second, 1),
               "valid_ok_after": still}
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    bad = first["5xx"] or second["5xx"] or upstream_calls or first["wrong_shape_count"] or second["wrong_shape_count"]
    return 1 if bad or still != 10 else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
