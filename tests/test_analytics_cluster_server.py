"""The cluster path against real ClickHouse servers: two shards and an embedded Keeper, on loopback.

Runs wherever a ``clickhouse`` (or ``clickhouse-server``) binary of version 24.3 or later is on
PATH; it starts both nodes as child processes and stops them by their PIDs. Where there is none it
is skipped, saying why: no package registry reachable from the project's machines ships a usable
server (PyPI has chDB, a library with no server, and ``clickhousectl``, which downloads the server
at run time; Debian bookworm's ``clickhouse-server`` is 18.16.1 from 2018, without DateTime64,
Map, Bool, insert_deduplication_token or clickhouse-keeper). tests/test_analytics_cluster.py
covers what the embedded engine can.
"""
from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from llmgw.analytics import queries, store
from llmgw.analytics.sink import Sink
from tests.fixtures.chdb import usage_event

MIN_VERSION = (24, 3)
CLUSTER = "llmgw_cluster"


def _server_command() -> tuple[list[str], str]:
    """The command that runs a server, or ([], why not)."""
    for name, prefix in (("clickhouse", ["server"]), ("clickhouse-server", [])):
        path = shutil.which(name)
        if not path:
            continue
        done = subprocess.run([path, *prefix, "--version"], capture_output=True, text=True, timeout=60)
        found = re.search(r"version (\d+)\.(\d+)", done.stdout + done.stderr)
        if not found:
            return [], f"{path} --version printed no version"
        version = (int(found[1]), int(found[2]))
        if version < MIN_VERSION:
            return [], (f"{path} is ClickHouse {version[0]}.{version[1]}; the migrations need "
                        f"{MIN_VERSION[0]}.{MIN_VERSION[1]} or later")
        return [path, *prefix], ""
    return [], ("no ClickHouse server binary on PATH (PyPI ships none: chDB is a library, clickhousectl "
                "downloads one at run time; Debian bookworm's clickhouse-server is 18.16.1)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Node:
    shard: int
    http_port: int
    tcp_port: int
    process: subprocess.Popen[bytes]

    @property
    def dsn(self) -> str:
        return f"clickhousedb://default@127.0.0.1:{self.http_port}/llmgw?cluster={CLUSTER}&layout=distributed"


def _config(root: Path, shard: int, ports: dict[str, int], keeper: bool) -> Path:
    home = root / f"node{shard}"
    home.mkdir(parents=True)
    (home / "users.xml").write_text("""<clickhouse>
  <profiles><default><distributed_product_mode>global</distributed_product_mode></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip></networks>
    <profile>default</profile><quota>default</quota><access_management>1</access_management></default></users>
  <quotas><default/></quotas>
</clickhouse>
""")
    keeper_xml = f"""
  <keeper_server>
    <tcp_port>{ports['keeper']}</tcp_port><server_id>1</server_id>
    <log_storage_path>{home}/coordination/log</log_storage_path>
    <snapshot_storage_path>{home}/coordination/snapshots</snapshot_storage_path>
    <raft_configuration><server><id>1</id><hostname>127.0.0.1</hostname><port>{ports['raft']}</port></server></raft_configuration>
  </keeper_server>""" if keeper else ""
    shards = "".join(
        f"<shard><internal_replication>true</internal_replication><replica><host>127.0.0.1</host>"
        f"<port>{ports[f'tcp{n}']}</port></replica></shard>" for n in (1, 2))
    config = home / "config.xml"
    config.write_text(f"""<clickhouse>
  <logger><level>warning</level><log>{home}/server.log</log><errorlog>{home}/server.err.log</errorlog></logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>{ports[f'http{shard}']}</http_port>
  <tcp_port>{ports[f'tcp{shard}']}</tcp_port>
  <interserver_http_port>{ports[f'inter{shard}']}</interserver_http_port>
  <interserver_http_host>127.0.0.1</interserver_http_host>
  <path>{home}/data/</path><tmp_path>{home}/tmp/</tmp_path><user_files_path>{home}/user_files/</user_files_path>
  <user_directories><users_xml><path>{home}/users.xml</path></users_xml></user_directories>
  <mark_cache_size>268435456</mark_cache_size>{keeper_xml}
  <zookeeper><node><host>127.0.0.1</host><port>{ports['keeper']}</port></node></zookeeper>
  <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>
  <remote_servers><{CLUSTER}>{shards}</{CLUSTER}></remote_servers>
  <macros><shard>0{shard}</shard><replica>node{shard}</replica></macros>
</clickhouse>
""")
    return config


def _wait_ready(node: Node, deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while True:
        if node.process.poll() is not None:
            raise RuntimeError(f"ClickHouse shard {node.shard} exited with {node.process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}/ping", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > end:
            raise RuntimeError(f"ClickHouse shard {node.shard} not ready after {deadline_s:.0f}s")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def two_shards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Node]]:
    command, why = _server_command()
    if not command:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("clickhouse-cluster")
    ports = {name: _free_port() for name in ("keeper", "raft", "http1", "http2", "tcp1", "tcp2", "inter1", "inter2")}
    nodes: list[Node] = []
    try:
        for shard in (1, 2):
            config = _config(root, shard, ports, keeper=shard == 1)
            process = subprocess.Popen([*command, "--config-file", str(config)], cwd=config.parent,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            nodes.append(Node(shard, ports[f"http{shard}"], ports[f"tcp{shard}"], process))
        for node in nodes:
            _wait_ready(node, 120)
        yield nodes
    finally:
        store.close_all()
        for node in nodes:
            node.process.terminate()
        for node in nodes:
            try:
                node.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait(timeout=30)


def test_migrations_and_the_sink_on_two_shards(two_shards: list[Node]) -> None:
    first, second = two_shards
    client = store.connect(first.dsn)
    sink = Sink(client, "llmgw")
    assert sink.cluster is not None and sink.cluster.sharded
    versions = [m.version for m in store.load_migrations()]
    assert sink.ensure_schema() == versions
    assert sink.ensure_schema() == []
    # the bookkeeping is replicated: the other shard's node knows every version too
    other = store.connect(second.dsn)
    for _ in range(60):
        if store.applied_migrations(other, "llmgw").keys() == set(versions):
            break
        time.sleep(0.5)
    assert store.applied_migrations(other, "llmgw").keys() == set(versions)
    assert store.migrate(other, "llmgw") == []
    engines = dict(other.query("SELECT name, engine FROM system.tables WHERE database = 'llmgw'").result_rows)
    assert engines["usage_events"] == "Distributed"
    assert engines["usage_events_local"] == "ReplicatedReplacingMergeTree"
    assert engines["schema_migrations"] == "ReplicatedReplacingMergeTree"

    batch = [usage_event(i) for i in range(200)]
    resend = Sink(client, "llmgw", skip_known=False)
    assert resend.insert(batch[:150], dedup_token="kafka:usage:0:0-149") == 150
    resend.insert(batch[:150], dedup_token="kafka:usage:0:0-149")     # same cut: each shard drops its part
    assert sink.insert(batch[100:], dedup_token="kafka:usage:0:100-199") == 50   # new cut: 50 known
    per_shard = dict(client.query("SELECT shardNum(), count() FROM llmgw.usage_events GROUP BY 1").result_rows)
    assert set(per_shard) == {1, 2} and sum(per_shard.values()) == 200
    nanos = sum(e.cost_nano_usd for e in batch)
    for reader in (client, other):
        [row] = queries.spend(reader, "llmgw", [], 0, 2**62)
        assert (row.requests, row.cost_nano_usd) == (200, nanos)
        day = reader.query("SELECT sum(requests), sum(cost_nano_usd) FROM llmgw.usage_by_day").result_rows[0]
        assert (int(day[0]), int(day[1])) == (200, nanos)
