"""Soak: mixed streaming traffic through two `llmgw serve` replicas, a kill -9 in the middle.

Run by hand (not part of the test suite), loopback only, bounded:

    python bench/soak.py --minutes 3                    # embedded ledger, one data dir per replica
    python bench/soak.py --minutes 30 --rate 10         # the full soak
    python bench/soak.py --minutes 10 --kafka           # Kafka mode: a local broker (deploy/kafka/kafka.sh),
                                                        # `llmgw ledger worker`, and a broker restart too

What it starts: the fake provider (`python -m tests.fake_provider`, streams paced at --chunks deltas x
--chunk-delay-s), two replicas (`python -m proxy.cli serve`), and an open-loop load generator in this
process: Poisson arrivals at --rate calls/s, a mix of Anthropic Messages streams, Chat Completions
streams and non-streams, Responses streams and embeddings. The generator balances round-robin over the
replicas it sees as up, like a load balancer: a refused connection (the replica is down) goes to the
other replica; a call cut mid-way is not retried (a model call is not idempotent).

At --kill-at (fraction of the run) replica 1 gets SIGKILL and is restarted --restart-after-s later,
on the same data dir. With --kafka the broker is restarted at --broker-restart-at.

Reported per minute: calls started, errors (not acknowledged), p50/p99 of call latency (ms), RSS of
each replica (MB). At the end: every acknowledged call (the client got the whole answer) must have
exactly one usage event (matched on its `x-llmgw-session` id) across the replicas' ledgers.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from llmgw.ledger.embedded import log_events  # noqa: E402
from llmgw.core.events import UsageEvent  # noqa: E402
from llmgw.ledger.started import usage_event_of  # noqa: E402

MIX = [  # (weight, kind, path, body, terminal marker that proves the whole answer arrived)
    (40, "messages-stream", "/v1/messages",
     {"model": "claude-sonnet-4-5", "max_tokens": 512, "stream": True}, b"event: message_stop"),
    (20, "chat-stream", "/v1/chat/completions", {"model": "gpt-4o-mini", "stream": True}, b"data: [DONE]"),
    (15, "responses-stream", "/v1/responses", {"model": "gpt-5-mini", "stream": True}, b"response.completed"),
    (15, "chat", "/v1/chat/completions", {"model": "gpt-4o-mini"}, b'"choices"'),
    (10, "embeddings", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "soak"}, b'"embedding"'),
]


@dataclass
class Call:
    n: int
    kind: str
    started: float
    replica: int = -1
    status: int = 0
    acked: bool = False
    latency_s: float = 0.0
    error: str = ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


class Replica:
    def __init__(self, i: int, env: dict[str, str], work: Path) -> None:
        self.i, self.port = i, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = work / f"replica-{i}"
        self.env = {**env, "LLMGW_DATA_DIR": str(self.data), "LLMGW_GATEWAY_ID": f"soak-{i}"}
        self.log = work / f"replica-{i}.log"
        self.proc: subprocess.Popen | None = None
        self.up = False
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "llmgw.proxy.cli", "serve", "--port", str(self.port)],
                                         env=self.env, cwd=ROOT, stdout=log, stderr=log)

    def kill9(self) -> None:
        assert self.proc is not None          # the load balancer finds out by itself (refused connections)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)

    def events(self) -> list[UsageEvent]:
        return log_events(self.data / "ledger" / "events.log")


async def wait_ready(http: aiohttp.ClientSession, url: str, path: str = "/readyz", timeout_s: float = 60,
                     method: str = "GET") -> None:
    """Until GET url+path answers 200 (or, for another method, answers at all)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            async with http.request(method, url + path) as r:
                if r.status == 200 or method != "GET":
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{url}{path} not ready after {timeout_s}s")


def llmgw(env: dict[str, str], *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "llmgw.proxy.cli", *args], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    if out.returncode:
        raise RuntimeError(f"llmgw {' '.join(args)}: {out.stderr}")
    return out.stdout.strip()


class Load:
    def __init__(self, replicas: list[Replica], keys: list[str], seed: int) -> None:
        self.replicas, self.keys = replicas, keys
        self.rng = random.Random(seed)
        self.calls: list[Call] = []
        self.rr = itertools.count()
        self.failovers = 0
        self.tasks: set[asyncio.Task[None]] = set()

    def pick(self) -> tuple[str, str, dict, bytes]:
        r = self.rng.uniform(0, sum(w for w, *_ in MIX))
        for w, kind, path, body, marker in MIX:
            if r < w:
                return kind, path, body, marker
            r -= w
        return MIX[-1][1:]  # type: ignore[return-value]

    async def one(self, http: aiohttp.ClientSession, n: int, t0: float) -> None:
        kind, path, base, marker = self.pick()
        call = Call(n, kind, time.monotonic() - t0)
        self.calls.append(call)
        key = self.keys[n % len(self.keys)]
        body = {**base}
        if "embeddings" not in kind:
            msg = [{"role": "user", "content": f"soak call {n}: " + "lorem ipsum " * self.rng.randint(5, 200)}]
            body["messages" if "responses" not in kind else "input"] = msg
        headers = {"x-llmgw-session": f"soak-{n}", "x-api-key": key, "authorization": f"Bearer {key}",
                   "anthropic-version": "2023-06-01"}
        t = time.monotonic()
        for attempt in range(len(self.replicas)):
            up = [r for r in self.replicas if r.up] or self.replicas
            rep = up[next(self.rr) % len(up)]
            call.replica = rep.i
            try:
                async with http.post(rep.url + path, json=body, headers=headers) as resp:
                    call.status = resp.status
                    data = await resp.read()
                call.acked = resp.status == 200 and marker in data
                if not call.acked:
                    call.error = f"http {resp.status}" if resp.status != 200 else "incomplete answer"
                break
            except aiohttp.ClientConnectorError:          # nothing was sent: a load balancer tries the next
                rep.up = False
                self.failovers += 1
                call.error = "connection refused"
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:   # cut mid-way: not retried
                call.error = type(exc).__name__
                break
        call.latency_s = time.monotonic() - t

    async def run(self, http: aiohttp.ClientSession, seconds: float, rate: float, t0: float) -> None:
        n = 0
        while (now := time.monotonic() - t0) < seconds:
            task = asyncio.create_task(self.one(http, n, t0))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            n += 1
            await asyncio.sleep(self.rng.expovariate(rate))
        if self.tasks:
            await asyncio.wait(self.tasks)


async def watch(replicas: list[Replica], http: aiohttp.ClientSession, rss: dict[int, dict[int, float]],
                t0: float, stop: asyncio.Event) -> None:
    """Health checks (like a load balancer's) and RSS samples, every second."""
    while not stop.is_set():
        minute = int((time.monotonic() - t0) // 60)
        for r in replicas:
            if r.proc is not None and r.proc.poll() is None:
                rss[r.i][minute] = max(rss[r.i].get(minute, 0.0), rss_mb(r.proc.pid))
                if not r.up:
                    try:
                        async with http.get(r.url + "/readyz", timeout=aiohttp.ClientTimeout(total=1)) as resp:
                            r.up = resp.status == 200
                    except (aiohttp.ClientError, asyncio.TimeoutError):
                        pass
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass


async def chaos(args: argparse.Namespace, replicas: list[Replica], kafka_dir: Path | None, http: aiohttp.ClientSession,
                t0: float, notes: list[str]) -> None:
    seconds = args.minutes * 60
    steps = [(args.kill_at * seconds, "kill")]
    if kafka_dir is not None:
        steps.append((args.broker_restart_at * seconds, "broker"))
    for at, what in sorted(steps):
        await asyncio.sleep(max(0.0, at - (time.monotonic() - t0)))
        if what == "kill":
            r = replicas[0]
            notes.append(f"{time.monotonic() - t0:6.1f}s  kill -9 replica {r.i} (pid {r.proc.pid if r.proc else '?'})")
            r.kill9()
            await asyncio.sleep(args.restart_after_s)
            r.start()
            await wait_ready(http, r.url, "/healthz")
            notes.append(f"{time.monotonic() - t0:6.1f}s  replica {r.i} restarted, live")
        else:
            sh = str(ROOT / "deploy" / "kafka" / "kafka.sh")
            notes.append(f"{time.monotonic() - t0:6.1f}s  broker stop")
            await asyncio.to_thread(subprocess.run, [sh, "stop", str(kafka_dir)], check=True, capture_output=True)
            await asyncio.sleep(args.restart_after_s)
            await asyncio.to_thread(subprocess.run, [sh, "start", str(kafka_dir)], check=True, capture_output=True)
            notes.append(f"{time.monotonic() - t0:6.1f}s  broker started again")


async def kafka_events(bootstrap: str, prefix: str) -> list[UsageEvent]:
    from aiokafka import AIOKafkaConsumer
    consumer = AIOKafkaConsumer(f"{prefix}.usage", bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    out: list[UsageEvent] = []
    try:
        while batch := await consumer.getmany(timeout_ms=3000):
            out.extend(ev for recs in batch.values() for rec in recs if (ev := usage_event_of(rec.value)))
    finally:
        await consumer.stop()
    return out


def report(args: argparse.Namespace, load: Load, events: list[UsageEvent], rss: dict[int, dict[int, float]],
           notes: list[str], replicas: list[Replica]) -> dict:
    per: dict[int, list[Call]] = defaultdict(list)
    for c in load.calls:
        per[int(c.started // 60)].append(c)
    rows = []
    for m in sorted(per):
        cs = per[m]
        lat = [c.latency_s * 1000 for c in cs if c.acked]
        rows.append({"minute": m + 1, "calls": len(cs), "errors": sum(not c.acked for c in cs),
                     "p50_ms": round(pct(lat, 0.5), 1), "p99_ms": round(pct(lat, 0.99), 1),
                     **{f"rss_mb_r{r.i}": round(rss[r.i].get(m, 0.0), 1) for r in replicas}})
    # distinct event ids: Kafka may hold a re-sent copy of an event (same id), which the fold skips
    per_session = Counter(session for session, _ in {(e.session_id, e.event_id) for e in events})
    acked = [c for c in load.calls if c.acked]
    missing = [c.n for c in acked if per_session[f"soak-{c.n}"] == 0]
    dupes = [c.n for c in acked if per_session[f"soak-{c.n}"] > 1]
    failed = [c for c in load.calls if not c.acked]
    summary = {
        "minutes": args.minutes, "rate": args.rate, "mode": "kafka" if args.kafka else "embedded",
        "calls": len(load.calls), "acknowledged": len(acked), "not_acknowledged": len(failed),
        "errors_by_kind": dict(Counter(c.error for c in failed)), "failovers": load.failovers,
        "acked_with_exactly_one_event": len(acked) - len(missing) - len(dupes),
        "acked_missing_event": missing, "acked_duplicate_event": dupes,
        "unacked_with_event": sum(per_session[f"soak-{c.n}"] > 0 for c in failed),
        "events_total": len(events), "chaos": notes, "per_minute": rows,
    }
    print(f"\nsoak: {args.minutes} min at {args.rate}/s, {summary['mode']} ledger, 2 replicas")
    for line in notes:
        print("  " + line)
    head = ["minute", "calls", "errors", "p50_ms", "p99_ms"] + [f"rss_mb_r{r.i}" for r in replicas]
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(str(row[h]) for h in head) + " |")
    print(f"\ncalls {summary['calls']}, acknowledged {summary['acknowledged']}, not acknowledged "
          f"{summary['not_acknowledged']} {summary['errors_by_kind']}, failovers {load.failovers}")
    print(f"acknowledged calls with exactly one event: {summary['acked_with_exactly_one_event']} of "
          f"{len(acked)} (missing {len(missing)}, duplicated {len(dupes)}); not-acknowledged calls that "
          f"still have an event: {summary['unacked_with_event']} of {len(failed)}")
    return summary


async def main(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="llmgw-soak-"))
    procs: list[subprocess.Popen] = []
    fake_port = free_port()
    fake = subprocess.Popen([sys.executable, "-m", "tests.fake_provider", "--port", str(fake_port), "--chunks",
                             str(args.chunks), "--chunk-delay-s", str(args.chunk_delay_s)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=open(work / "fake.log", "w"))
    procs.append(fake)
    base = f"http://127.0.0.1:{fake_port}"
    env = {**os.environ, "LLMGW_OPENAI_BASE_URL": base + "/openai/v1", "LLMGW_OPENAI_API_KEY": "sk-openai-upstream-test",
           "LLMGW_ANTHROPIC_BASE_URL": base + "/anthropic", "LLMGW_ANTHROPIC_API_KEY": "sk-ant-upstream-test",
           "LLMGW_ANALYTICS": "1" if args.analytics else "0", "LLMGW_ADMIN_KEY": "llmgw-admin-soak-0123456789",
           "LLMGW_LOG_LEVEL": "INFO", "PYTHONPATH": str(ROOT)}
    env.pop("LLMGW_KAFKA_BOOTSTRAP", None)
    kafka_dir = None
    if args.kafka:
        kafka_dir = work / "kafka"
        sh = str(ROOT / "deploy" / "kafka" / "kafka.sh")
        bootstrap = subprocess.run([sh, "start", str(kafka_dir)], check=True, capture_output=True, text=True).stdout.strip()
        env["LLMGW_KAFKA_BOOTSTRAP"] = bootstrap
        env["LLMGW_TOPIC_PREFIX"] = prefix = f"soak{os.getpid()}"
        worker_log = open(work / "worker.log", "w")
        procs.append(subprocess.Popen([sys.executable, "-m", "llmgw.proxy.cli", "ledger", "worker"], env={
            **env, "LLMGW_DATA_DIR": str(work / "worker")}, cwd=ROOT, stdout=worker_log, stderr=worker_log))
    replicas = [Replica(i, env, work) for i in (1, 2)]
    keys_env = {**env, "LLMGW_DATA_DIR": str(replicas[0].data)}
    for attempt in range(60):   # Kafka mode: the worker creates the topics the config log lives on
        try:
            keys = [llmgw(keys_env, "keys", "create", "--org", "soak", "--workspace", f"ws{u % 2}", "--user", f"u{u}")
                    for u in range(5)]
            break
        except RuntimeError:
            if not args.kafka or attempt == 59:
                raise
            time.sleep(1)
    for u in range(5):
        llmgw(keys_env, "budgets", "set", f"user:u{u}", "day", "100000")
    if not args.kafka:      # embedded mode: each replica has its own ledger; both need the same config log
        for r in replicas[1:]:
            r.data.mkdir(parents=True, exist_ok=True)
            (r.data / "config.jsonl").write_bytes((replicas[0].data / "config.jsonl").read_bytes())
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120),
                                         connector=aiohttp.TCPConnector(limit=0)) as http:
            await wait_ready(http, base + "/_fake/default_reply", "", method="OPTIONS")
            for r in replicas:
                r.start()
            for r in replicas:
                await wait_ready(http, r.url, timeout_s=120)
                r.up = True
            load = Load(replicas, keys, args.seed)
            rss: dict[int, dict[int, float]] = {r.i: {} for r in replicas}
            notes: list[str] = []
            stop = asyncio.Event()
            t0 = time.monotonic()
            watcher = asyncio.create_task(watch(replicas, http, rss, t0, stop))
            chaos_task = asyncio.create_task(chaos(args, replicas, kafka_dir, http, t0, notes))
            await load.run(http, args.minutes * 60, args.rate, t0)
            await chaos_task
            stop.set()
            await watcher
        for r in replicas:
            r.stop()
        if args.kafka:
            await asyncio.sleep(5)
            events = await kafka_events(env["LLMGW_KAFKA_BOOTSTRAP"], prefix)
        else:
            events = [e for r in replicas for e in r.events()]
        summary = report(args, load, events, rss, notes, replicas)
        summary["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                           text=True).stdout.strip()
        summary["machine"] = f"{os.cpu_count()} cores, {os.uname().sysname} {os.uname().release}"
        summary["workdir"] = str(work)
        if args.json:
            Path(args.json).write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
        return 0 if not summary["acked_missing_event"] and not summary["acked_duplicate_event"] else 1
    finally:
        for r in replicas:
            if r.proc is not None and r.proc.poll() is None:
                r.proc.kill()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(30)
        if kafka_dir is not None:
            subprocess.run([str(ROOT / "deploy" / "kafka" / "kafka.sh"), "stop", str(kafka_dir)], capture_output=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=10.0, help="calls per second (Poisson arrivals)")
    p.add_argument("--chunks", type=int, default=20, help="text deltas per streamed answer")
    p.add_argument("--chunk-delay-s", type=float, default=0.05, help="pause between deltas (20 x 0.05 = ~1 s)")
    p.add_argument("--kill-at", type=float, default=0.5, help="fraction of the run when replica 1 gets kill -9")
    p.add_argument("--restart-after-s", type=float, default=5.0)
    p.add_argument("--kafka", action="store_true", help="Kafka ledger: local broker, ledger worker, broker restart")
    p.add_argument("--broker-restart-at", type=float, default=0.7)
    p.add_argument("--analytics", action="store_true", help="embedded mode: also write chDB analytics in-process")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--json", help="write the summary here too")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
