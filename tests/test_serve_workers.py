"""`llmgw serve --workers N` as an operator meets it: real processes, a real broker, one port.

Which worker a connection reaches is the kernel's choice (SO_REUSEPORT), so the
tests read the truth from /proc (who listens on the port) and from Kafka (the
gateway_id on each usage event and each presence heartbeat).
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from llmgw.core.events import UsageEvent
from llmgw.ledger.started import usage_event_of
from llmgw.ledger.topics import partitions_of
from llmgw.core.settings import Settings
from llmgw.proxy.workers import plan
from tests.fixtures.kafka import unique_topic
from tests.test_cli_serve import free_port, llmgw

CALLS = 40


# -- refusals and the plan: no broker needed ------------------------------------------------
def test_embedded_ledger_refuses_workers_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LLMGW_KAFKA_BOOTSTRAP"}
    env["LLMGW_DATA_DIR"] = str(tmp_path)
    for argv, extra in ((["--workers", "2"], {}), ([], {"LLMGW_WORKERS": "2"})):
        out = llmgw("serve", "--port", str(free_port()), *argv, env={**env, **extra})
        assert out.returncode == 2
        assert out.stdout == ""
        [line] = out.stderr.splitlines()
        assert "embedded ledger" in line and "single writer" in line and "LLMGW_KAFKA_BOOTSTRAP" in line
    assert not (tmp_path / "ledger").exists(), "nothing may start before the refusal"


def test_each_worker_gets_its_own_id_and_spool_but_shares_the_data_files(tmp_path):
    (tmp_path / "prices.json").write_text("{}")
    explicit = Settings.load({}, kafka_bootstrap="k:9092", data_dir=str(tmp_path), gateway_id="edge", workers=3)
    workers = plan(explicit)
    assert [w.env_overrides["LLMGW_GATEWAY_ID"] for w in workers] == ["edge/w0", "edge/w1", "edge/w2"]
    assert [w.data_dir for w in workers] == [str(tmp_path), str(tmp_path / "worker-1"), str(tmp_path / "worker-2")]
    assert workers[1].env_overrides["LLMGW_PRICES"] == str((tmp_path / "prices.json").resolve())
    assert workers[1].env_overrides["LLMGW_CLICKHOUSE_DSN"] == explicit.analytics_dsn
    assert all(w.argv[-4:] == ("--workers", "1", "--worker-index", str(w.index)) for w in workers)
    default = plan(Settings.load({}, kafka_bootstrap="k:9092", data_dir=str(tmp_path), workers=2))
    assert all("LLMGW_GATEWAY_ID" not in w.env_overrides for w in default), "each worker computes host:pid"
    with pytest.raises(ValueError, match="fixed --port"):
        plan(Settings.load({}, kafka_bootstrap="k:9092", port=0, workers=2))
    with pytest.raises(ValueError, match="1 or more"):
        plan(Settings.load({}, kafka_bootstrap="k:9092", workers=0))


# -- real workers on Kafka ------------------------------------------------------------------
@pytest.fixture
def kafka_env(kafka_bootstrap, fake_provider, tmp_path):
    e = dict(os.environ)
    e.update(LLMGW_DATA_DIR=str(tmp_path / "data"), LLMGW_KAFKA_BOOTSTRAP=kafka_bootstrap,
             LLMGW_TOPIC_PREFIX=unique_topic("workers"), LLMGW_OPENAI_BASE_URL=fake_provider.openai_base_url,
             LLMGW_OPENAI_API_KEY=fake_provider.openai_key, LLMGW_ANALYTICS="0", LLMGW_SHUTDOWN_TIMEOUT_S="5")
    for var in ("LLMGW_CONFIG", "LLMGW_GATEWAY_ID", "LLMGW_WORKERS"):
        e.pop(var, None)
    return e


def children_of(pid: int) -> set[int]:
    kids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.add(int(entry.name))
    return kids


def listening_on(port: int, pids: set[int]) -> set[int]:
    """The pids among ``pids`` that hold a listening TCP socket on ``port`` (read from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{f[9]}]")
    found = set()
    for pid in pids:
        try:
            fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        if inodes & set(fds):
            found.add(pid)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def supervisors():
    """Supervisors a test started; whatever is left of them (and their workers) is killed by pid at
    teardown, which runs even when a timeout abandons the test's coroutine."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        for pid in children_of(proc.pid):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def start_workers(env: dict[str, str], n: int, stderr: Path,
                        supervisors: list[subprocess.Popen]) -> tuple[subprocess.Popen, int, set[int]]:
    """`llmgw serve --workers n`; returns once n child processes all listen on the one port.
    stderr goes to a file: N workers' JSON lines could fill a pipe nobody reads and stall them."""
    port = free_port()
    with stderr.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "llmgw.proxy.cli", "serve", "--port", str(port), "--workers",
                                 str(n)], env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    supervisors.append(proc)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"llmgw serve exited {proc.returncode}: {stderr.read_text()}"
        kids = children_of(proc.pid)
        if len(kids) == n and listening_on(port, kids) == kids:
            return proc, port, kids
        await asyncio.sleep(0.2)
    raise AssertionError(f"{n} workers did not all listen on {port}: {stderr.read_text()}")


async def read_topic(bootstrap: str, topic: str) -> list[ConsumerRecord]:
    """Every record of ``topic``, from its beginning to its end now, partition by partition.

    A plain group-less consumer: ``ledger.topics.PartitionReader`` hung in ``stop()`` here after
    reading a topic with empty partitions (aiokafka 0.14.0)."""
    tps = [TopicPartition(topic, p) for p in await partitions_of(bootstrap, topic)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        records: list[ConsumerRecord] = []
        async with asyncio.timeout(30):
            while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    records += batch
        return records
    finally:
        await consumer.stop()


async def heartbeats(bootstrap: str, prefix: str, want: set[str]) -> set[str]:
    """Gateway ids with a heartbeat on the presence topic, once they include ``want`` (or after 20 s)."""
    deadline = time.monotonic() + 20
    while True:
        heard = {r.key.decode() for r in await read_topic(bootstrap, f"{prefix}.proxies") if r.value is not None}
        if heard >= want or time.monotonic() > deadline:
            return heard
        await asyncio.sleep(0.5)


async def usage_events(bootstrap: str, prefix: str, want: int) -> list[UsageEvent]:
    """The usage events on the topic, once there are ``want`` of them (or after 20 s)."""
    deadline = time.monotonic() + 20
    while True:
        events = [e for r in await read_topic(bootstrap, f"{prefix}.usage") if (e := usage_event_of(r.value))]
        if len(events) >= want or time.monotonic() > deadline:
            return events
        await asyncio.sleep(0.2)


async def chat_calls(port: int, key: str, n: int) -> None:
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
    try:
        replies = await asyncio.gather(*(client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"call {i}"}]) for i in range(n)))
    finally:
        await client.close()
    assert all(r.choices[0].message.content for r in replies)


def mint_key(env: dict[str, str]) -> str:
    out = llmgw("keys", "create", "--org", "acme", "--workspace", "backend", "--user", "alice", env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.kafka
async def test_two_workers_serve_one_port_as_two_proxies_and_stop_on_sigterm(kafka_env, kafka_bootstrap,
                                                                             tmp_path, supervisors):
    prefix = kafka_env["LLMGW_TOPIC_PREFIX"]
    key = mint_key(kafka_env)
    proc, port, kids = await start_workers(kafka_env, 2, tmp_path / "stderr.log", supervisors)
    assert proc.stdout.readline().rstrip("\n") == (
        f"llmgw serving on http://127.0.0.1:{port} (Kafka at {kafka_bootstrap}, 2 workers)")
    await chat_calls(port, key, CALLS)
    events = await usage_events(kafka_bootstrap, prefix, CALLS)
    host = socket.gethostname()
    ids = {f"{host}:{pid}" for pid in kids}
    assert len(events) == CALLS and {e.gateway_id for e in events} == ids, "each worker is its own proxy"
    assert await heartbeats(kafka_bootstrap, prefix, ids) == ids
    log = (tmp_path / "stderr.log").read_text()
    assert log.count("live gateway proxies: 2 (was 1)") == 2, "each worker counts two live proxies"

    proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(proc.wait, 60)
    assert code == 0, (tmp_path / "stderr.log").read_text()
    assert not any(alive(pid) for pid in kids), "a worker outlived the supervisor"
    assert proc.stdout.read() == "", "one line for all workers"
    last = {r.key.decode(): r.value for r in await read_topic(kafka_bootstrap, f"{prefix}.proxies")}
    assert all(last[f"{host}:{pid}"] is None for pid in kids), "each worker left presence on its way out"


@pytest.mark.kafka
async def test_a_worker_that_dies_takes_the_gateway_down_for_a_restart(kafka_env, kafka_bootstrap, tmp_path,
                                                                       supervisors):
    env = {**kafka_env, "LLMGW_GATEWAY_ID": "edge"}
    key = mint_key(env)
    proc, port, kids = await start_workers(env, 2, tmp_path / "stderr.log", supervisors)
    await chat_calls(port, key, CALLS)
    events = await usage_events(kafka_bootstrap, env["LLMGW_TOPIC_PREFIX"], CALLS)
    assert {e.gateway_id for e in events} == {"edge/w0", "edge/w1"}
    victim, survivor = sorted(kids)
    os.kill(victim, signal.SIGKILL)
    code = await asyncio.to_thread(proc.wait, 60)
    assert code == 1
    assert not alive(survivor), "the supervisor left a worker running"
    assert '"event":"worker_died"' in (tmp_path / "stderr.log").read_text()
