"""The analytics schema on a ClickHouse cluster: the same migrations, rendered for replicas and shards.

The migrations in ``analytics/migrations/`` are written for one node (``ReplacingMergeTree``,
``non_replicated_deduplication_window``). On a cluster the DSN names the cluster and a layout
(``clickhousedb://...:8123/llmgw?cluster=NAME&layout=distributed``) and ``render`` turns each
single-node statement into its cluster form, so there is one schema, not two to keep in step:

- ``replicated``: one shard, every node a replica holding all rows. Each table keeps its name
  and becomes ``Replicated*MergeTree('/clickhouse/tables/NAME/{shard}/DB/TABLE', '{replica}')``
  with ``replicated_deduplication_window`` (the dedup log lives in Keeper, shared by the replicas).
- ``distributed``: several shards (each may have replicas). Each table's rows live in
  ``TABLE_local`` (replicated as above) and ``TABLE`` is a ``Distributed`` table over them,
  so every reader (queries, dashboard, README examples) keeps its SQL. The views read and fill
  the ``_local`` tables on each shard: a shard's rollups hold exactly its own events.

Every statement runs ``ON CLUSTER``, so it is applied on every node or the migration fails
(and is not recorded). ``schema_migrations`` is one replicated table over the whole cluster
(its Keeper path has no ``{shard}``), so any node answers which versions are applied.

Rows that must collapse together (copies of one event, one audit entry) are sent to the same
shard by a sharding key over their id: ``FINAL`` and the sink's deduplication are then exact
per shard, which makes them exact for the cluster.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

LAYOUTS = ("replicated", "distributed")
LOCAL_SUFFIX = "_local"

# Tables written through their Distributed table, and the shard each row goes to. A key over the
# row's id keeps every copy of one row on one shard (where ReplacingMergeTree and the insert
# deduplication can see both); it must never be rand(). Tables not listed (the rollups, filled by
# views on each shard) get a Distributed table without a key: writing to it is refused.
SHARDING_KEYS: dict[str, str] = {
    "usage_events": "cityHash64(event_id)",
    "audit_log": "cityHash64(entry_key)",
    "provider_costs": "cityHash64(provider, day)",
    "call_bodies": "cityHash64(event_id)",
}

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CREATE_TABLE = re.compile(r"^CREATE TABLE IF NOT EXISTS (\w+)\.(\w+)(\s)", re.S)
_CREATE_VIEW = re.compile(r"^CREATE MATERIALIZED VIEW IF NOT EXISTS (\w+)\.(\w+) TO ", re.S)
_ALTER = re.compile(r"^ALTER TABLE (\w+)\.(\w+)(\s)", re.S)
_ENGINE = re.compile(r"^ENGINE = (MergeTree|ReplacingMergeTree|SummingMergeTree)\s*$", re.M)
_DEDUP_WINDOW = re.compile(r"\bnon_replicated_deduplication_window\b")
_COLUMN_ALTER = re.compile(r"^\s*(ADD|MODIFY|DROP|RENAME|COMMENT) COLUMN\b")


class ClusterError(ValueError):
    """A cluster option is invalid, or a migration has a statement with no cluster form."""


@dataclass(frozen=True, slots=True)
class Cluster:
    """A ``remote_servers`` cluster name and how the analytics tables are laid out on it."""

    name: str
    layout: str = "distributed"

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ClusterError(f"invalid cluster name {self.name!r}: use letters, digits and _")
        if self.layout not in LAYOUTS:
            raise ClusterError(f"invalid cluster layout {self.layout!r}: use one of {', '.join(LAYOUTS)}")

    @property
    def sharded(self) -> bool:
        return self.layout == "distributed"

    def local(self, table: str) -> str:
        """Where ``table``'s rows are stored on each node."""
        return table + LOCAL_SUFFIX if self.sharded else table

    def zookeeper_path(self, database: str, table: str) -> str:
        """One replica set per (cluster, shard, database, table): ``{shard}`` is the node's macro."""
        return f"/clickhouse/tables/{self.name}/{{shard}}/{database}/{table}"

    def all_replicas(self, database: str, table: str) -> str:
        """A table function reading ``table``'s rows on every replica of every shard.

        The sink's known-id check reads this: an event stored on any replica is found, even on a
        replica the others have not fetched it from yet.
        """
        return f"clusterAllReplicas('{self.name}', {database}.{self.local(table)})"


def migrations_table(database: str, cluster: Cluster | None = None) -> str:
    """``schema_migrations``, on one node or on a cluster: there, one replica set over every node
    (no ``{shard}``). Replica names are ``{shard}-{replica}``: unique across the cluster even where
    the ``replica`` macro repeats on every shard."""
    if cluster is None:
        on, engine = "", "ReplacingMergeTree"
    else:
        on = f" ON CLUSTER {cluster.name}"
        engine = (f"ReplicatedReplacingMergeTree('/clickhouse/tables/{cluster.name}/{database}/schema_migrations', "
                  "'{shard}-{replica}')")
    return f"""
CREATE TABLE IF NOT EXISTS {database}.schema_migrations{on}
(
    version    UInt32,
    name       String,
    checksum   String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = {engine}
ORDER BY version
"""


def create_database(database: str, cluster: Cluster) -> str:
    return f"CREATE DATABASE IF NOT EXISTS {database} ON CLUSTER {cluster.name}"


def storage_tables(statements: list[str]) -> set[str]:
    """Names of the MergeTree tables the statements create (those that get ``_local`` and replicas)."""
    out = set()
    for statement in statements:
        match = _CREATE_TABLE.match(statement)
        if match and _ENGINE.search(statement):
            out.add(match[2])
    return out


def render(statement: str, database: str, cluster: Cluster, storage: set[str]) -> list[str]:
    """The cluster form of one single-node migration statement (one or two statements).

    ``storage`` names every table that is stored (not a view): references to them inside view
    queries are redirected to their ``_local`` tables. A statement of another form raises
    ``ClusterError``, so a new migration cannot silently miss its cluster form
    (tests/test_analytics_cluster.py renders every migration).
    """
    if match := _CREATE_TABLE.match(statement):
        if match[1] != database:
            raise ClusterError(f"statement for database {match[1]!r}, expected {database!r}")
        return _create_table(statement, match, database, cluster)
    if match := _CREATE_VIEW.match(statement):
        head = f"CREATE MATERIALIZED VIEW IF NOT EXISTS {match[1]}.{match[2]} ON CLUSTER {cluster.name} TO "
        return [head + _to_local(statement[match.end():], database, cluster, storage)]
    if match := _ALTER.match(statement):
        table, rest = match[2], statement[match.end():]
        if table in storage:
            if not _COLUMN_ALTER.match(rest):
                raise ClusterError(f"no cluster form for ALTER TABLE {table} {rest.split()[0]}: {statement[:80]!r}")
            out = [f"ALTER TABLE {database}.{cluster.local(table)} ON CLUSTER {cluster.name}{match[3]}{rest}"]
            if cluster.sharded:       # the Distributed table's columns follow the local table's
                out.append(f"ALTER TABLE {database}.{table} ON CLUSTER {cluster.name}{match[3]}{rest}")
            return out
        return [f"ALTER TABLE {database}.{table} ON CLUSTER {cluster.name}{match[3]}"
                + _to_local(rest, database, cluster, storage)]
    raise ClusterError(f"no cluster form for statement: {statement[:80]!r}")


def _create_table(statement: str, match: re.Match[str], database: str, cluster: Cluster) -> list[str]:
    table = match[2]
    engine = _ENGINE.search(statement)
    if engine is None:
        raise ClusterError(f"table {table}: only MergeTree, ReplacingMergeTree and SummingMergeTree "
                           "have a cluster form")
    local = cluster.local(table)
    replicated = (f"ENGINE = Replicated{engine[1]}('{cluster.zookeeper_path(database, local)}', '{{replica}}')")
    body = statement[match.end():engine.start()] + replicated + statement[engine.end():]
    body = _DEDUP_WINDOW.sub("replicated_deduplication_window", body)
    out = [f"CREATE TABLE IF NOT EXISTS {database}.{local} ON CLUSTER {cluster.name}{match[3]}{body}"]
    if cluster.sharded:
        key = SHARDING_KEYS.get(table)
        args = f"{cluster.name}, {database}, {local}" + (f", {key}" if key else "")
        out.append(f"CREATE TABLE IF NOT EXISTS {database}.{table} ON CLUSTER {cluster.name} "
                   f"AS {database}.{local}\nENGINE = Distributed({args})")
    return out


def _to_local(sql: str, database: str, cluster: Cluster, storage: set[str]) -> str:
    """``database.T`` -> ``database.T_local`` for every stored table T (views read and fill shards)."""
    if not cluster.sharded or not storage:
        return sql
    names = "|".join(sorted(map(re.escape, storage), key=len, reverse=True))
    return re.sub(rf"\b{re.escape(database)}\.({names})\b", lambda m: f"{database}.{cluster.local(m[1])}", sql)


__all__ = ["Cluster", "ClusterError", "LAYOUTS", "LOCAL_SUFFIX", "SHARDING_KEYS", "create_database",
           "migrations_table", "render", "storage_tables"]
