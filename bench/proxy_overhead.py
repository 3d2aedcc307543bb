"""Proxy overhead: the same load straight to the fake provider, through llmgw, and through LiteLLM.

Run by hand (not part of the test suite), loopback only:

    python bench/proxy_overhead.py                       # llmgw vs direct
    python bench/proxy_overhead.py --litellm /tmp/litellm-venv/bin/litellm   # also LiteLLM's proxy
    python bench/proxy_overhead.py --seconds 10 --concurrency 1,64,512
    python bench/proxy_overhead.py --concurrency '' --paced 64,512   # only model-paced streams
    python bench/proxy_overhead.py --baseline /tmp/llmgw-old      # also llmgw from another checkout
                                   # (each llmgw runs its own checkout through a link tree; the
                                   # file each one imports is printed first)
    python bench/proxy_overhead.py --portkey --litellm /tmp/litellm-venv/bin/litellm --kafka --workers 2
                                   # the peers side by side, and llmgw in Kafka mode with 1 and 2 workers

Portkey's open-source gateway (npm ``@portkey-ai/gateway`` 1.15.2) is installed by the bench into
``--portkey-dir`` on first use and run with node. As shipped it answers every streamed request 500:
its ResponseService appends its own headers (``x-portkey-trace-id``...) to the upstream fetch
Response, whose headers are immutable (``TypeError: immutable``). The bench applies a one-line fix
to ``build/start-server.js`` before starting it (``PORTKEY_FIX``): the response is copied into a new
``Response`` (same body stream, status and headers, now mutable) before its headers are updated.

``--kafka`` runs llmgw in Kafka mode too (a local broker from deploy/kafka/kafka.sh, one
``llmgw ledger worker``); ``--workers N[,M]`` adds llmgw in Kafka mode with N processes on one port
(``serve --workers``), since the embedded ledger has a single writer. The CPU and memory of a
multi-process target are summed over its process tree. At the end a summary table (each cell
``llmgw / peers...``, ready for the README) and the resident memory of each target at rest.

Two kinds of load. *Saturating*: the fake answers at once and every client sends its next call as
soon as one ends, so the numbers measure throughput and, once the target's core is full, queueing.
*Paced*: the fake behaves like a model (first token after --ttft-ms, then --chunks deltas
--chunk-ms apart), so 64 concurrent streams are 64 streams open at once, as behind real agents;
this is where added latency, added time to first token and the added gap between chunks are read.
The paced clients start spread over one stream's length (``--lockstep``: all at once, a burst of
64 deltas in the same millisecond every 25 ms), and the calls of the ramp are not counted.

LiteLLM installs with ``python -m venv /tmp/litellm-venv && /tmp/litellm-venv/bin/pip install 'litellm[proxy]'``.
Every target runs in its own process; the load generator is one asyncio process with keep-alive.
All targets share the machine's 2 cores with the load generator and the fake, so read ratios
measured in one run, not absolute numbers. Added latency is the target's p50/p99 minus the direct
call's in the same run. CPU is the target process's user+sys CPU-ms per 1,000 calls. ``tcp-hop``
(bench/tcp_hop.py) only copies TCP bytes through one more process: what it adds is the floor for
any proxy on this machine, so a gateway's own cost is its added latency minus the hop's.
``aiohttp-relay`` (bench/aiohttp_relay.py) is the floor under llmgw's design: an aiohttp server
forwarding through a pooled aiohttp client and streaming the reply back, with nothing of llmgw's
(no auth, budget, metering or event), so the gap between it and llmgw is llmgw's own work.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ms(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) * 1000 / ticks


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def tree(pid: int) -> list[int]:
    """``pid`` and every process under it (a ``serve --workers`` supervisor and its workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                pass
    return out


def tree_cpu_ms(pid: int) -> float:
    total = 0.0
    for p in tree(pid):
        try:
            total += cpu_ms(p)
        except OSError:
            pass
    return total


async def settle(pid: int | None, timeout_s: float = 15.0) -> None:
    """Until the target's process tree is idle (under 5% of a core over 0.5 s): some targets keep
    working after their load ends (LiteLLM's background tasks, a once-a-second analytics insert),
    and that work would otherwise land in the next target's cell."""
    if not pid:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before = tree_cpu_ms(pid)
        await asyncio.sleep(0.5)
        if tree_cpu_ms(pid) - before < 25:
            return


def tree_rss_mb(pid: int) -> float:
    total = 0.0
    for p in tree(pid):
        try:
            total += rss_mb(p)
        except OSError:
            pass
    return total


async def wait_http(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(url) as r:
                    if r.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} never came up")


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    ttfb: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)        # between two reads of one response body
    errors: int = 0
    elapsed: float = 0.0
    calls: int = 0                                         # counted or not: the CPU is per call

    def pct(self, xs: list[float], q: float) -> float:
        if not xs:
            return float("nan")
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


async def load(url: str, key: str, concurrency: int, seconds: float, stream: bool,
               spread_s: float = 0.0, warm_s: float = 0.0, extra: dict[str, str] | None = None) -> Result:
    """``concurrency`` clients, each sending its next call when the last one ends.

    ``spread_s``: client i starts ``i * spread_s / concurrency`` late. With model-paced streams and
    no spread, every client starts in the same millisecond and stays in step for the whole run, so
    all 64 streams deliver a delta in the same millisecond 40 times a second; agents do not
    synchronize like that, and the tail would measure that burst, not the proxy. Calls that start
    within ``warm_s`` of the beginning (new connections, the ramp) are not counted.
    """
    body = orjson.dumps({"model": "gpt-4o-mini", "stream": stream,
                         "messages": [{"role": "user", "content": "Say hello in five words."}]})
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json", **(extra or {})}
    res = Result()
    begin = time.monotonic()
    stop = begin + warm_s + seconds
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:
        async def worker(i: int) -> None:
            await asyncio.sleep(i * spread_s / concurrency)
            while time.monotonic() < stop:
                t0 = time.monotonic()
                counted = t0 >= begin + warm_s
                try:
                    async with http.post(url + "/chat/completions", data=body, headers=headers) as r:
                        first = last = None
                        gaps = []
                        async for _ in r.content.iter_any():
                            now = time.monotonic()
                            if first is None:
                                first = now
                            else:
                                gaps.append(now - last)
                            last = now
                        res.calls += 1
                        if r.status != 200:
                            res.errors += 1
                            continue
                    if counted:
                        res.latencies.append(time.monotonic() - t0)
                        res.ttfb.append((first or time.monotonic()) - t0)
                        res.gaps.extend(gaps)
                except aiohttp.ClientError:
                    res.errors += 1
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        res.elapsed = time.monotonic() - begin - warm_s
    return res


async def open_streams(url: str, key: str, n: int, pid: int, extra: dict[str, str] | None = None) -> float:
    """RSS growth of the target per 1,000 concurrently open streams."""
    body = orjson.dumps({"model": "gpt-4o-mini", "stream": True, "max_tokens": 64,
                         "messages": [{"role": "user", "content": "slow"}]})
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json", **(extra or {})}
    before = tree_rss_mb(pid)
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as http:
        opened = asyncio.Event()
        count = 0
        peak = before

        async def one() -> None:
            nonlocal count, peak
            async with http.post(url + "/chat/completions", data=body, headers=headers) as r:
                await r.content.readany()
                count += 1
                if count == n:
                    peak = tree_rss_mb(pid)
                    opened.set()
                await opened.wait()
                async for _ in r.content.iter_any():
                    pass

        await asyncio.gather(*(one() for _ in range(n)))
    return (peak - before) * 1000 / n


def start(cmd: list[str], env: dict[str, str], log: Path, cpus: set[int] | None = None,
          cwd: Path = ROOT) -> subprocess.Popen:
    """``cpus``: the cores the process (and every thread it starts) may run on."""
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    return subprocess.Popen(cmd, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=cwd,
                            preexec_fn=pin)


PACKAGES = ("core", "pricing", "ledger", "analytics", "proxy")


def link_tree(root: Path, into: Path) -> Path:
    """``into/llmgw/<pkg>`` -> ``root/<pkg>``: with ``into`` first on PYTHONPATH, ``import llmgw`` loads
    the checkout at ``root``. Without it the editable install decides, and it points at one checkout
    (or at none on a machine where that path does not exist) whichever side of a pairing runs."""
    pkg = into / "llmgw"
    pkg.mkdir(parents=True, exist_ok=True)
    for name in PACKAGES:
        link = pkg / name
        if not link.is_symlink():
            link.symlink_to(root / name)
    return into


def checkout_env(root: Path, env: dict[str, str], tmp: Path) -> tuple[dict[str, str], str]:
    """The environment and CLI module that run the llmgw code of the checkout at ``root``: its folders
    linked under ``llmgw`` in a directory of ``tmp``, that directory alone on PYTHONPATH. A checkout
    from before the ``llmgw`` namespace (no ``core/``) runs its own top-level ``proxy`` package."""
    if not (root / "core").is_dir():
        return {**env, "PYTHONPATH": str(root)}, "proxy.cli"
    paths = link_tree(root, tmp / ("paths-" + str(root).strip("/").replace("/", "+")))
    return {**env, "PYTHONPATH": str(paths)}, "llmgw.proxy.cli"


def imported_from(cli: str, env: dict[str, str], root: Path) -> str:
    """The real path of the CLI module a process started with ``env`` imports: the check that each side
    of a pairing runs its own checkout."""
    return subprocess.run([sys.executable, "-c", f"import os, {cli} as m; print(os.path.realpath(m.__file__))"],
                          env=env, capture_output=True, text=True, check=True, cwd=root).stdout.strip()


# The gateways' LLMGW_LOG_LEVEL (--log-level): WARNING leaves the access line (one per call, INFO) out.
LOG_LEVEL = "WARNING"


async def start_llmgw(root: Path, data: Path, fake: str, env: dict[str, str], log: Path,
                      cpus: set[int] | None, workers: int = 1) -> tuple[subprocess.Popen, str, str]:
    """A gateway on its embedded default, run from the checkout at ``root`` (``checkout_env``), with one
    key: (process, base URL, key). Prints which file its CLI module is imported from."""
    cenv, cli = checkout_env(root, env, data.parent)
    genv = {**cenv, "LLMGW_DATA_DIR": str(data), "LLMGW_OPENAI_BASE_URL": fake + "/openai/v1",
            "LLMGW_OPENAI_API_KEY": "sk-openai-upstream-test", "LLMGW_LOG_LEVEL": LOG_LEVEL}
    print(f"# {data.name}: {cli} from {imported_from(cli, genv, root)}", flush=True)
    key = subprocess.run([sys.executable, "-m", cli, "keys", "create", "--org", "bench",
                          "--workspace", "w", "--user", "u"], env=genv, capture_output=True, text=True,
                         check=True, cwd=root).stdout.strip().splitlines()[-1]
    port = free_port()
    gw = start([sys.executable, "-m", cli, "serve", "--port", str(port)]
               + (["--workers", str(workers)] if workers != 1 else []), genv, log, cpus, cwd=root)
    await wait_http(f"http://127.0.0.1:{port}/healthz")
    return gw, f"http://127.0.0.1:{port}/v1", key


PORTKEY_VERSION = "1.15.2"
# Portkey 1.15.2's streaming fix (module docstring): the one place its ResponseService updates the
# headers of the response it returns, which for a stream is the upstream fetch Response itself.
PORTKEY_FIX = ("this.updateHeaders(i,n.cacheStatus,o)",
               "i=new Response(i.body,i),this.updateHeaders(i,n.cacheStatus,o)")


def portkey_server(cache: Path) -> Path:
    """Portkey's gateway installed into ``cache`` (npm, once) with the streaming fix applied."""
    server = cache / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    if not server.exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(cache),
                        f"@portkey-ai/gateway@{PORTKEY_VERSION}"], check=True, stdout=subprocess.DEVNULL)
    text = server.read_text()
    if PORTKEY_FIX[1] not in text:
        if text.count(PORTKEY_FIX[0]) != 1:
            raise RuntimeError(f"{server}: the line the streaming fix replaces is not there once; "
                               f"is it @portkey-ai/gateway {PORTKEY_VERSION}?")
        server.with_suffix(".js.orig").write_text(text)
        server.write_text(text.replace(PORTKEY_FIX[0], PORTKEY_FIX[1]))
    return server


def start_kafka(tmp: Path, env: dict[str, str]) -> tuple[str, Path]:
    """A local broker (deploy/kafka/kafka.sh): its bootstrap address and state directory."""
    sh = ROOT / "deploy" / "kafka" / "kafka.sh"
    subprocess.run([str(sh), "fetch"], env=env, check=True, stdout=subprocess.DEVNULL)
    out = subprocess.run([str(sh), "start", str(tmp / "kafka")], env=env, check=True, capture_output=True,
                         text=True).stdout.strip().splitlines()
    return out[-1].strip(), tmp / "kafka"


def litellm_config(path: Path, fake_openai: str) -> None:
    path.write_text(
        "model_list:\n"
        "  - model_name: gpt-4o-mini\n"
        "    litellm_params:\n"
        "      model: openai/gpt-4o-mini\n"
        f"      api_base: {fake_openai}\n"
        "      api_key: sk-openai-upstream-test\n"
        "general_settings:\n"
        "  master_key: sk-bench-master\n"
        "litellm_settings:\n"
        "  drop_params: true\n")


Target = tuple[str, str, "int | None", "dict[str, str] | None"]      # url, key, pid, extra headers
Row = tuple[str, bool, int, float, float, float, float]       # target, stream, c, +p50, +p99, req/s, CPU/1k


async def table(targets: dict[str, Target], levels: list[int], seconds: float,
                gaps: bool, kinds: tuple[bool, ...] = (False, True), spread_s: float = 0.0,
                warm_s: float = 0.0, rounds: int = 1, rows: list[Row] | None = None) -> None:
    """One markdown table; every row's added numbers are against the direct row of its round.

    ``rounds``: the cell again, each target after the other, as often: a p99 over ~800 calls is
    the 8th slowest, so the spread between rounds is part of the result. The direct call goes first
    in every cell; the targets rotate behind it from cell to cell (the order favoured the first),
    and each one's leftover work ends before the next starts (``settle``).
    """
    gap_head = " gap p99 | +gap p99 |" if gaps else ""
    print(f"| target | kind | conc | req/s | p50 ms | p99 ms | +p50 | +p99 | ttfb p50 | +ttfb |{gap_head} CPU ms/1k | errors |")
    print("|---" * (12 + 2 * gaps) + "|")
    first = [n for n in targets if n == "direct"]      # the base of each cell's added numbers
    others = [n for n in targets if n != "direct"]
    for cell, (stream, c, _) in enumerate(itertools.product(kinds, levels, range(rounds))):
        base: Result | None = None
        turn = cell % len(others) if others else 0       # the others take turns going first: whoever
        for name in first + others[turn:] + others[:turn]:   # runs right after another target is penalised
            url, k, pid, extra = targets[name]
            if not warm_s:
                await load(url, k, min(c, 8), 1.0, stream, extra=extra)            # warm-up
            c0 = tree_cpu_ms(pid) if pid else 0.0
            r = await load(url, k, c, seconds, stream, spread_s, warm_s, extra)
            cpu = (tree_cpu_ms(pid) - c0) * 1000 / max(r.calls, 1) if pid else float("nan")
            await settle(pid)
            if name == "direct":
                base = r
            p50, p99 = r.pct(r.latencies, .5), r.pct(r.latencies, .99)
            t50, g99 = r.pct(r.ttfb, .5), r.pct(r.gaps, .99)
            add = (p50 - base.pct(base.latencies, .5), p99 - base.pct(base.latencies, .99),
                   t50 - base.pct(base.ttfb, .5), g99 - base.pct(base.gaps, .99)
                   ) if base and name != "direct" else (0, 0, 0, 0)
            gap_cells = f" {g99:.2f} | {add[3]:+.2f} |" if gaps else ""
            if rows is not None and name != "direct":
                rows.append((name, stream, c, add[0], add[1], len(r.latencies) / r.elapsed, cpu))
            print(f"| {name} | {'stream' if stream else 'chat'} | {c} | {len(r.latencies) / r.elapsed:.0f} "
                  f"| {p50:.2f} | {p99:.2f} | {add[0]:+.2f} | {add[1]:+.2f} | {t50:.2f} | {add[2]:+.2f} "
                  f"|{gap_cells} {cpu:.0f} | {r.errors} |", flush=True)


def summary(rows: list[Row], names: list[str], head: str) -> None:
    """The same-run table of the README: one row per kind and concurrency, each cell the targets'
    figures in ``names`` order, separated by `` / ``."""
    print(f"\n## Same-run comparison, {head}\n\nCells: {' / '.join(names)}.\n")
    print("| kind | c | +p50 ms | +p99 ms | req/s | CPU ms per 1k calls |\n|---|---|---|---|---|---|")
    seen = dict.fromkeys((stream, c) for _, stream, c, *_ in rows)
    for stream, c in seen:
        cell = {x[0]: x[3:] for x in rows if x[1] == stream and x[2] == c}
        cols = []
        for i, fmt in enumerate(("{:.2f}", "{:.1f}", "{:.0f}", "{:.0f}")):
            cols.append(" / ".join(fmt.format(cell[n][i]) if n in cell else "-" for n in names))
        print(f"| {'chat SSE' if stream else 'chat'} | {c} | " + " | ".join(cols) + " |")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--concurrency", default="1,64,512")
    ap.add_argument("--litellm", default="", help="path to the litellm CLI (its own venv)")
    ap.add_argument("--portkey", action="store_true",
                    help=f"also Portkey's open-source gateway {PORTKEY_VERSION} (node; npm-installed on first use)")
    ap.add_argument("--portkey-dir", default=str(Path.home() / ".cache" / "llmgw-bench" / f"portkey-{PORTKEY_VERSION}"))
    ap.add_argument("--kafka", action="store_true", help="also llmgw in Kafka mode (local broker, one ledger worker)")
    ap.add_argument("--workers", default="", help="also llmgw in Kafka mode with these process counts, e.g. 2,4")
    ap.add_argument("--baseline", default="", help="another llmgw checkout (e.g. a git worktree of an older "
                                                    "commit), run beside this one as target llmgw@<commit>")
    ap.add_argument("--log-level", default="WARNING",
                    help="the gateways' LLMGW_LOG_LEVEL; INFO (the default of `llmgw serve`) adds an access "
                         "line per call to stderr, which the bench sends to a file")
    ap.add_argument("--streams", type=int, default=1000, help="open streams for the RSS measurement")
    ap.add_argument("--paced", default="64", help="concurrency levels of model-paced streams ('' for none)")
    ap.add_argument("--paced-seconds", type=float, default=15)
    ap.add_argument("--ttft-ms", type=float, default=200)
    ap.add_argument("--chunks", type=int, default=40)
    ap.add_argument("--chunk-ms", type=float, default=25)
    ap.add_argument("--lockstep", action="store_true",
                    help="paced clients all start at once and stay in step (a burst every delta), "
                         "instead of spread over one stream's length")
    ap.add_argument("--rounds", type=int, default=1, help="paced cells run this many times each")
    ap.add_argument("--pin", action="store_true",
                    help="targets on the last core, the load generator and the fake on the others: "
                         "as if the load came from another machine")
    args = ap.parse_args()
    global LOG_LEVEL
    LOG_LEVEL = args.log_level
    levels = [int(x) for x in args.concurrency.split(",") if x]
    paced = [int(x) for x in args.paced.split(",") if x]
    tmp = Path(tempfile.mkdtemp(prefix="llmgw-bench-"))
    cores = os.cpu_count() or 1
    target_cpus = {cores - 1} if args.pin and cores > 1 else None
    if target_cpus:
        os.sched_setaffinity(0, set(range(cores - 1)))          # this load generator, and the fake below
    env = dict(os.environ)
    procs: list[subprocess.Popen] = []
    kafka_dirs: list[tuple[Path, dict[str, str]]] = []
    rows: list[Row] = []
    try:
        fport = free_port()
        procs.append(start([sys.executable, "-m", "tests.fake_provider", "--port", str(fport)], env, tmp / "fake.log"))
        fake = f"http://127.0.0.1:{fport}"
        await wait_http(fake + "/openai/v1/models")
        gw, gw_url, key = await start_llmgw(ROOT, tmp / "gw", fake, env, tmp / "gw.log", target_cpus)
        procs.append(gw)
        hport = free_port()
        hop = start([sys.executable, str(ROOT / "bench" / "tcp_hop.py"), "--port", str(hport),
                     "--to", f"127.0.0.1:{fport}"], env, tmp / "hop.log", target_cpus)
        procs.append(hop)
        await wait_http(f"http://127.0.0.1:{hport}/openai/v1/models")
        rport = free_port()
        bare = start([sys.executable, str(ROOT / "bench" / "aiohttp_relay.py"), "--port", str(rport),
                      "--to", fake], env, tmp / "relay.log", target_cpus)
        procs.append(bare)
        await wait_http(f"http://127.0.0.1:{rport}/openai/v1/models")
        targets: dict[str, Target] = {
            "direct": (fake + "/openai/v1", "sk-openai-upstream-test", None, None),
            "tcp-hop": (f"http://127.0.0.1:{hport}/openai/v1", "sk-openai-upstream-test", hop.pid, None),
            "aiohttp-relay": (f"http://127.0.0.1:{rport}/openai/v1", "sk-openai-upstream-test", bare.pid, None),
            "llmgw": (gw_url, key, gw.pid, None)}
        workers = [int(x) for x in args.workers.split(",") if x]
        if args.kafka or workers:
            kenv = {**env, "LLMGW_KAFKA_CACHE": env.get("LLMGW_KAFKA_CACHE", str(ROOT / "deploy" / "kafka" / ".cache"))}
            bootstrap, kafka_dir = start_kafka(tmp, kenv)
            kafka_dirs.append((kafka_dir, kenv))
            kafka_env = {**env, "LLMGW_KAFKA_BOOTSTRAP": bootstrap, "LLMGW_TOPIC_PREFIX": f"bench{os.getpid()}",
                         "LLMGW_ANALYTICS": "0"}
            lenv, lcli = checkout_env(ROOT, kafka_env, tmp)
            lw = start([sys.executable, "-m", lcli, "ledger", "worker"],
                       {**lenv, "LLMGW_DATA_DIR": str(tmp / "ledger")},
                       tmp / "ledger.log")
            procs.append(lw)
            for n in ([1] if args.kafka else []) + workers:
                kp, k_url, k_key = await start_llmgw(ROOT, tmp / f"gw-kafka-{n}", fake, kafka_env,
                                                     tmp / f"gw-kafka-{n}.log", target_cpus, workers=n)
                procs.append(kp)
                targets[f"llmgw kafka x{n}"] = (k_url, k_key, kp.pid, None)
        if args.baseline:
            base_root = Path(args.baseline).resolve()
            old, old_url, old_key = await start_llmgw(base_root, tmp / "gw-base", fake, env, tmp / "gw-base.log",
                                                      target_cpus)
            procs.append(old)
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    cwd=base_root).stdout.strip()
            targets[f"llmgw@{commit}"] = (old_url, old_key, old.pid, None)
        if args.litellm:
            lport = free_port()
            litellm_config(tmp / "litellm.yaml", fake + "/openai/v1")
            lp = start([args.litellm, "--config", str(tmp / "litellm.yaml"), "--port", str(lport),
                        "--num_workers", "1"], env, tmp / "litellm.log", target_cpus)
            procs.append(lp)
            await wait_http(f"http://127.0.0.1:{lport}/health/liveliness", timeout_s=180)
            targets["litellm"] = (f"http://127.0.0.1:{lport}/v1", "sk-bench-master", lp.pid, None)
        if args.portkey:
            pport = free_port()
            pk = start(["node", str(portkey_server(Path(args.portkey_dir))), f"--port={pport}", "--headless"],
                       {**env, "NODE_ENV": "production"}, tmp / "portkey.log", target_cpus)
            procs.append(pk)
            await wait_http(f"http://127.0.0.1:{pport}/", timeout_s=60)
            targets["portkey"] = (f"http://127.0.0.1:{pport}/v1", "sk-openai-upstream-test", pk.pid,
                                  {"x-portkey-provider": "openai", "x-portkey-custom-host": fake + "/openai/v1"})
        at_rest = {name: tree_rss_mb(pid) for name, (_, _, pid, _) in targets.items() if pid}
        commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True,
                                cwd=ROOT).stdout.strip()
        load0 = os.getloadavg()
        print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} commit {commit} "
              f"cores {cores} seconds/cell {args.seconds}, load average {load0[0]:.1f} at the start"
              + (f", targets pinned to core {cores - 1}, load and fake to the others" if target_cpus else ""))
        if levels:
            print("\n## Saturating: an instant 5-word reply, each client sends again at once\n")
            await table(targets, levels, args.seconds, gaps=False, rows=rows)
        if paced:
            reply = {"delay_s": args.ttft_ms / 1000, "chunks": args.chunks, "chunk_delay_s": args.chunk_ms / 1000}
            async with aiohttp.ClientSession() as http:
                await http.post(fake + "/_fake/default_reply", json=reply)
            stream_s = (args.ttft_ms + args.chunks * args.chunk_ms) / 1000
            spread_s = 0.0 if args.lockstep else stream_s
            print(f"\n## Paced like a model: first token after {args.ttft_ms} ms, then {args.chunks} deltas "
                  f"{args.chunk_ms} ms apart; "
                  + ("clients in lockstep" if args.lockstep else f"client starts spread over {spread_s:.1f} s")
                  + f"; calls in the first {spread_s + stream_s:.1f} s not counted\n")
            await table(targets, paced, args.paced_seconds, gaps=True, kinds=(True,), spread_s=spread_s,
                        warm_s=spread_s + stream_s, rounds=args.rounds)
        async with aiohttp.ClientSession() as http:    # slow streams, so they stay open together
            await http.post(fake + "/_fake/default_reply", json={"chunks": 100, "chunk_delay_s": 0.05})
        names = [n for n in targets if n not in ("direct", "tcp-hop")]
        if rows:
            summary(rows, names, f"{time.strftime('%Y-%m-%d', time.gmtime())} (llmgw at commit {commit}, load "
                                 f"{load0[0]:.1f}-{os.getloadavg()[0]:.1f}, {cores} cores; "
                                 + (f"targets on core {cores - 1}, load generator, fake, broker and ledger worker "
                                    "on the others)" if target_cpus else "load generator, fake and targets share them)"))
        print("\n## Memory\n\n| target | RSS at rest MB | RSS per 1,000 open streams MB |\n|---|---|---|")
        for name, (url, k, pid, extra) in targets.items():
            if pid:
                per_k = await open_streams(url, k, args.streams, pid, extra) if args.streams else float("nan")
                print(f"| {name} | {at_rest[name]:.0f} | +{per_k:.1f} |", flush=True)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        for kafka_dir, kenv in kafka_dirs:
            subprocess.run([str(ROOT / "deploy" / "kafka" / "kafka.sh"), "stop", str(kafka_dir)], env=kenv,
                           check=False, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    asyncio.run(main())
