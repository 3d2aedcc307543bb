"""The analytics schema on a ClickHouse cluster, as far as the embedded engine allows.

chDB runs one node with no Keeper, so it cannot execute ``ON CLUSTER`` or create a
``Replicated*MergeTree``. What is checked here instead:

- the single-node DDL is byte for byte what it was before the cluster path existed;
- every migration renders for both layouts (engines, ``{shard}``/``{replica}``, ``ON CLUSTER``,
  Distributed tables and their sharding keys), and chDB's parser accepts every rendered statement;
- the settings the cluster sink sends are settings the engine knows;
- in a child process, chDB with a ``remote_servers`` cluster of one local shard runs the rendered
  distributed layout with only replication taken out (``ON CLUSTER`` and ``Replicated``
  stripped): the Distributed tables, their ALTERs and the views over ``_local`` tables are real,
  and the sink writes through them exactly once.

A real server (or a 2-shard cluster) is in tests/test_analytics_cluster_server.py.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from llmgw.analytics import cluster as cluster_mod
from llmgw.analytics import sink as sink_mod
from llmgw.analytics import store
from llmgw.analytics.cluster import Cluster, ClusterError, SHARDING_KEYS
from llmgw.analytics.store import MigrationError, StoreError, Target

GOLDEN = Path(__file__).parent / "data" / "clickhouse" / "single_node_ddl.sql"
DISTRIBUTED = Cluster("llmgw_cluster", "distributed")
REPLICATED = Cluster("llmgw_cluster", "replicated")
STORED = {"usage_events", "usage_by_minute", "usage_by_hour", "usage_by_day", "audit_log", "provider_costs",
          "call_bodies"}
VIEWS = {"usage_by_minute_mv", "usage_by_hour_mv", "usage_by_day_mv"}


GOLDEN_UPTO = 7     # the migrations that existed when the golden file was written


def _single_node_ddl(database: str) -> str:
    """What ``migrate`` sends to one node for migrations 1-7, in the layout of the golden file."""
    out = ["-- schema_migrations\n" + store.migrations_table(database) + ";\n"]
    for migration, statements in store.plan(database):
        if migration.version <= GOLDEN_UPTO:
            out += [f"-- {migration.version:03d}_{migration.name}\n{s};\n" for s in statements]
    return "".join(out)


def test_single_node_ddl_is_unchanged() -> None:
    """The golden file was written from main before the cluster path existed; later migrations
    run on one node exactly as their files are written."""
    assert _single_node_ddl("llmgw") == GOLDEN.read_text()
    assert all(statements == migration.statements("llmgw") for migration, statements in store.plan("llmgw"))
    assert all(" ON CLUSTER " not in s and "Replicated" not in s and "Distributed" not in s
               for _, statements in store.plan("llmgw") for s in statements)


def test_cluster_options_come_from_the_dsn() -> None:
    t = Target.from_dsn("clickhousedb://u:pw@ch1:8123/analytics?cluster=llmgw_cluster&layout=replicated")
    assert (t.kind, t.database, t.cluster) == ("http", "analytics", REPLICATED)
    assert t.location == "clickhousedb://u:pw@ch1:8123"        # not sent to the server as settings
    t = Target.from_dsn("https://ch1:8443/llmgw?cluster=llmgw_cluster&connect_timeout=5")
    assert t.cluster == DISTRIBUTED                              # distributed is the default layout
    assert t.location == "https://ch1:8443?connect_timeout=5"   # the client's own options stay
    assert Target.from_dsn("clickhousedb://ch1:8123/llmgw").cluster is None
    for bad, why in (("clickhousedb://ch1/llmgw?cluster=a-b", "invalid cluster name"),
                     ("clickhousedb://ch1/llmgw?cluster=c&layout=sharded", "invalid cluster layout"),
                     ("clickhousedb://ch1/llmgw?layout=replicated", "needs cluster=NAME"),
                     ("chdb:///tmp/x?cluster=c", "needs a ClickHouse server")):
        with pytest.raises(StoreError, match=why):
            Target.from_dsn(bad)


def _plan(cluster: Cluster, database: str = "llmgw") -> list[str]:
    return [s for _, statements in store.plan(database, cluster=cluster) for s in statements]


def _creates(statements: list[str]) -> dict[str, str]:
    return {m[1]: s for s in statements if (m := re.match(r"CREATE TABLE IF NOT EXISTS llmgw\.(\w+)\s", s))}


@pytest.mark.parametrize("layout", [REPLICATED, DISTRIBUTED], ids=["replicated", "distributed"])
def test_every_statement_runs_on_the_cluster(layout: Cluster) -> None:
    statements = [store.migrations_table("llmgw", layout), *_plan(layout)]
    for statement in statements:
        head = statement.strip().split("\n")[0]
        assert re.search(r"^(CREATE TABLE IF NOT EXISTS|CREATE MATERIALIZED VIEW IF NOT EXISTS|ALTER TABLE) "
                         r"llmgw\.\w+ ON CLUSTER llmgw_cluster( |$)", head), head
        assert "non_replicated_deduplication_window" not in statement


@pytest.mark.parametrize("layout", [REPLICATED, DISTRIBUTED], ids=["replicated", "distributed"])
def test_stored_tables_are_replicated_per_shard(layout: Cluster) -> None:
    creates = _creates(_plan(layout))
    single_node = _creates([s for _, statements in store.plan("llmgw") for s in statements])
    paths = set()
    for table in STORED:
        local = layout.local(table)
        statement = creates[local]
        engine = re.search(r"ENGINE = Replicated(\w+)\('([^']+)', '\{replica\}'\)", statement)
        assert engine, statement
        single = re.search(r"ENGINE = (\w+)", single_node[table])
        assert single and engine[1] == single[1]                  # same engine family, replicated
        assert engine[2] == f"/clickhouse/tables/llmgw_cluster/{{shard}}/llmgw/{local}"
        paths.add(engine[2])
        window = re.search(r"\breplicated_deduplication_window = (\d+)", statement)
        single_window = re.search(r"non_replicated_deduplication_window = (\d+)", single_node[table])
        assert (window[1] if window else None) == (single_window[1] if single_window else None)
        # the rest of the table (columns, keys, TTL) is the single-node text
        assert statement.split("ENGINE = ")[0].split("\n", 1)[1] == single_node[table].split("ENGINE = ")[0].split("\n", 1)[1]
    assert len(paths) == len(STORED)                               # one replica set per table
    ddl = store.migrations_table("llmgw", layout)
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/llmgw_cluster/llmgw/schema_migrations', " \
           "'{shard}-{replica}')" in ddl                           # one bookkeeping table for all shards


def test_distributed_tables_keep_the_names_readers_use() -> None:
    statements = _plan(DISTRIBUTED)
    creates = _creates(statements)
    for table in STORED:
        distributed = re.search(rf"AS llmgw\.{table}_local\nENGINE = Distributed\(llmgw_cluster, llmgw, "
                                rf"{table}_local(?:, (.+))?\)$", creates[table])
        assert distributed, creates[table]
        assert distributed[1] == SHARDING_KEYS.get(table)
        assert statements.index(creates[table]) > statements.index(creates[f"{table}_local"])
    assert SHARDING_KEYS["usage_events"] == "cityHash64(event_id)"  # every copy of an event on one shard
    assert not any("rand()" in key for key in SHARDING_KEYS.values())
    assert set(SHARDING_KEYS) <= STORED


def test_views_read_and_fill_the_shards_own_tables() -> None:
    for layout in (DISTRIBUTED, REPLICATED):
        views = [s for s in _plan(layout) if re.search(r"(MATERIALIZED VIEW IF NOT EXISTS|ALTER TABLE) llmgw\.\w+_mv ", s)]
        assert len(views) >= 6                                   # 3 created in 002, their queries changed in 006
        for view in views:
            sources = re.findall(r"\b(?:FROM|TO) llmgw\.(\w+)", view)
            assert sources and all(s == layout.local(s.removesuffix("_local")) for s in sources), sources
            assert sources[-1] == layout.local("usage_events")


def test_column_changes_reach_the_local_and_the_distributed_table() -> None:
    alters = [s for s in _plan(DISTRIBUTED) if s.startswith("ALTER TABLE llmgw.usage_events")]
    local = [s for s in alters if s.startswith("ALTER TABLE llmgw.usage_events_local ")]
    distributed = [s for s in alters if s.startswith("ALTER TABLE llmgw.usage_events ")]
    assert len(local) == len(distributed) >= 5                    # 006: 4, 007: 1
    for a, b in zip(local, distributed):
        assert alters.index(a) < alters.index(b)                  # the shards first
        assert a.split("\n", 1)[1] == b.split("\n", 1)[1]
    replicated = [s for s in _plan(REPLICATED) if s.startswith("ALTER TABLE llmgw.usage_events ")]
    assert len(replicated) == len(local)


def test_a_statement_with_no_cluster_form_is_refused() -> None:
    for sql in ("CREATE TABLE IF NOT EXISTS {db}.x (a UInt8) ENGINE = Memory;",
                "ALTER TABLE {db}.usage_events DELETE WHERE 1;",
                "DROP TABLE {db}.usage_events;"):
        extra = store.Migration(900, "extra", sql)
        with pytest.raises(MigrationError, match="no cluster form|cluster form"):
            store.plan("llmgw", [*store.load_migrations(), extra], DISTRIBUTED)
        assert store.plan("llmgw", [extra]) == [(extra, extra.statements("llmgw"))]   # one node: as written
    with pytest.raises(ClusterError):
        Cluster("c", "sharded")


def _parse(client: Client, sql: str) -> str:
    return str(client.query("SELECT formatQuery({q:String})", parameters={"q": sql}).result_rows[0][0])


@pytest.mark.parametrize("layout", [REPLICATED, DISTRIBUTED], ids=["replicated", "distributed"])
def test_chdb_parses_every_cluster_statement(chdb_dsn: str, layout: Cluster) -> None:
    client = store.connect(chdb_dsn)
    statements = [store.migrations_table("llmgw", layout), cluster_mod.create_database("llmgw", layout),
                  *_plan(layout)]
    for statement in statements:
        formatted = _parse(client, statement)                    # raises on a syntax error
        assert "ON CLUSTER llmgw_cluster" in formatted
        engine = re.search(r"ENGINE = (\w+)", statement)
        if engine:
            assert f"ENGINE = {engine[1]}" in formatted
    with pytest.raises(Exception, match="SYNTAX_ERROR|Syntax error"):
        _parse(client, "CREATE TABLE llmgw.x ON CLUSTER c (a UInt8) ENGINE = ReplicatedMergeTree(")
    known = sink_mod.known_ids_query(layout.all_replicas("llmgw", "usage_events"))
    assert f"clusterAllReplicas('llmgw_cluster', llmgw.{layout.local('usage_events')})" in _parse(client, known)


def test_the_cluster_sink_settings_are_known_to_the_engine(chdb_dsn: str) -> None:
    client = store.connect(chdb_dsn)
    sent = set(sink_mod._DISTRIBUTED_INSERT_SETTINGS) | {"insert_deduplication_token"}
    known = {r[0] for r in client.query("SELECT name FROM system.settings WHERE name IN {n:Array(String)}",
                                        parameters={"n": sorted(sent)}).result_rows}
    assert known == sent
    assert sink_mod._DISTRIBUTED_INSERT_SETTINGS["distributed_foreground_insert"] == 1
    merge_tree = {r[0] for r in client.query("SELECT name FROM system.merge_tree_settings").result_rows}
    assert "replicated_deduplication_window" in merge_tree
    engines = {r[0] for r in client.query("SELECT name FROM system.table_engines").result_rows}
    assert {"ReplicatedReplacingMergeTree", "ReplicatedSummingMergeTree", "ReplicatedMergeTree",
            "Distributed"} <= engines


# ---- the distributed layout run by chDB itself, replication taken out ---------------------------

_CHILD = textwrap.dedent('''
    import json, re, sys
    import clickhouse_connect
    from llmgw.analytics import queries, store
    from llmgw.analytics.cluster import Cluster
    from llmgw.analytics.sink import Sink
    from tests.fixtures.chdb import usage_event

    path, config = sys.argv[1], sys.argv[2]
    client = clickhouse_connect.get_client(interface="chdb", path=path, chdb_options={"config-file": config})
    cluster = Cluster("llmgw_cluster", "distributed")

    def one_node(statement):
        """The rendered statement without replication: chDB has no Keeper."""
        statement = statement.replace(" ON CLUSTER llmgw_cluster", "")
        statement = re.sub(r"Replicated(\\w*MergeTree)\\('[^']*', '[^']*'\\)", r"\\1", statement)
        return statement.replace("replicated_deduplication_window", "non_replicated_deduplication_window")

    class OneNode:
        """The real engine; each statement loses only what needs Keeper before it runs."""
        def __init__(self):
            self.sent = []
        def command(self, sql, *args, **kwargs):
            self.sent.append(sql)
            return client.command(one_node(sql), *args, **kwargs)
        def query(self, *args, **kwargs):
            return client.query(*args, **kwargs)
        def insert(self, *args, **kwargs):
            return client.insert(*args, **kwargs)

    node = OneNode()
    out = {"applied": store.migrate(node, "llmgw", cluster=cluster), "first_run": node.sent}
    node.sent = []
    out["again"] = store.migrate(node, "llmgw", cluster=cluster)
    out["second_run"] = node.sent
    out["recorded"] = sorted(store.applied_migrations(client, "llmgw"))
    out.update({"clusters": client.query("SELECT cluster, shard_num, is_local FROM system.clusters").result_rows,
           "engines": dict(client.query("SELECT name, engine FROM system.tables WHERE database = 'llmgw'").result_rows)})

    def totals():
        raw = client.query("SELECT count(), sum(cost_nano_usd) FROM llmgw.usage_events").result_rows[0]
        day = client.query("SELECT sum(requests), sum(cost_nano_usd) FROM llmgw.usage_by_day").result_rows[0]
        [row] = queries.spend(client, "llmgw", [], 0, 2**62)
        return [int(raw[0]), int(raw[1]), int(day[0]), int(day[1]), row.requests, row.cost_nano_usd]

    batch = [usage_event(i) for i in range(6)]
    resend = Sink(client, "llmgw", cluster=cluster, skip_known=False)
    out["first"] = resend.insert(batch[:4], dedup_token="kafka:usage:0:0-3")
    out["resent"] = resend.insert(batch[:4], dedup_token="kafka:usage:0:0-3")   # same cut: the token drops it
    out["after_resend"] = totals()
    known = Sink(client, "llmgw", cluster=cluster)
    out["recut"] = known.insert(batch[2:], dedup_token="kafka:usage:0:2-5")     # new cut: known ids drop 2
    out["after_recut"] = totals()
    out["expected"] = [6, sum(e.cost_nano_usd for e in batch)]
    print(json.dumps(out, default=str))
''')

CHILD_CLUSTER = DISTRIBUTED

_CONFIG = """<clickhouse>
  <tcp_port>9000</tcp_port>
  <remote_servers>
    <llmgw_cluster>
      <shard><internal_replication>true</internal_replication>
        <replica><host>127.0.0.1</host><port>9000</port></replica></shard>
    </llmgw_cluster>
  </remote_servers>
  <macros><shard>01</shard><replica>r1</replica></macros>
</clickhouse>
"""


def test_the_distributed_layout_runs_and_the_sink_counts_once_through_it(tmp_path: Path) -> None:
    """chDB with one local shard (no port is opened: the shard is this process, ``is_local``)."""
    config = tmp_path / "cluster.xml"
    config.write_text(_CONFIG)
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "ch"), str(config)],
                          capture_output=True, text=True, timeout=300, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["clusters"] == [["llmgw_cluster", 1, 1]]
    versions = [m.version for m in store.load_migrations()]
    assert out["applied"] == out["recorded"] == versions and out["again"] == []
    local = "CREATE DATABASE IF NOT EXISTS llmgw"               # connect's own, on the node it talks to
    ddl = [s for s in out["first_run"] if not s.startswith("EXISTS ") and s != local]
    expected = [cluster_mod.create_database("llmgw", CHILD_CLUSTER), store.migrations_table("llmgw", CHILD_CLUSTER),
                *_plan(CHILD_CLUSTER, "llmgw")]
    assert ddl == expected                                   # migrate sent exactly the rendered plan, in order
    assert all(" ON CLUSTER llmgw_cluster" in s for s in ddl)
    assert not any("ON CLUSTER" in s for s in out["second_run"])   # nothing pending: no node is waited for
    engines = out["engines"]
    for table in STORED:
        assert engines[table] == "Distributed" and engines[f"{table}_local"].endswith("MergeTree")
    assert (out["first"], out["resent"], out["recut"]) == (4, 4, 2)   # the resent 4 were dropped by the token
    assert out["after_resend"][0] == out["after_resend"][2] == out["after_resend"][4] == 4
    assert out["after_resend"][1] == out["after_resend"][3] == out["after_resend"][5]
    count, nanos = out["expected"]
    assert out["after_recut"] == [count, nanos, count, nanos, count, nanos]
