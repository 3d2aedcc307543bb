"""ClickHouse connections and versioned schema migrations.

DSNs (``LLMGW_CLICKHOUSE_DSN``):

- ``chdb:///abs/path`` or ``chdb://relative/path``: an embedded chDB engine in
  this process, data under that directory (``chdb://:memory:`` keeps nothing).
- ``clickhousedb://user:pass@host:8123/db``, ``http://...``, ``https://...``:
  a ClickHouse server over HTTP(S).

A database named in the DSN (``/db`` for a server, ``?database=db`` for chDB)
is the client's default database; otherwise ``DEFAULT_DATABASE``.

chDB hosts one engine, on one data path, per process. ``connect`` caches one
client per (target, database) for the whole process and refuses, with
``EngineConflict``, a second chDB path while the first is open.

A server DSN may name a cluster of ``remote_servers``:
``clickhousedb://host:8123/llmgw?cluster=NAME&layout=distributed`` (or
``layout=replicated``). The migrations then run ``ON CLUSTER`` with replicated
(and, for ``distributed``, sharded) tables: ``analytics/cluster.py``. The DSN
carries it so that every process that opens the store (sink, CLI, gateway)
sees the same layout.

A chDB path another process serves (the embedded gateway's analytics process,
``analytics/process.py``, publishes ``<path>.server.json``) is reached through
that process's ClickHouse HTTP interface (``analytics/chdb_http.py``) instead:
chDB locks its path to one process. A process that supervises the server of a
path (``serve_through``) never opens that path itself, even while the server
restarts: it gets a ``StoreError`` until the server is back.

Migrations are ``analytics/migrations/NNN_name.sql`` files applied in version
order. Each file holds ``;``-terminated statements written with
``IF NOT EXISTS`` and ``{db}`` for the database; the applied versions are
recorded in ``{db}.schema_migrations``, so ``migrate`` run twice is a no-op.
"""
from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, parse_qsl, unquote, urlencode, urlsplit

import clickhouse_connect
import orjson
import urllib3
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ProgrammingError

from llmgw.analytics.cluster import Cluster, ClusterError, create_database, render, storage_tables
from llmgw.analytics.cluster import migrations_table as migrations_table_on
from llmgw.core.files import atomic_write
from llmgw.ledger.local_gateway import pid_alive

DEFAULT_DATABASE = "llmgw"
_MEMORY = ":memory:"

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MIGRATION_FILE = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.sql$")
_HTTP_SCHEMES = {"clickhousedb": "http", "clickhouse": "http", "http": "http", "https": "https"}


class StoreError(RuntimeError):
    """Base of the analytics store errors."""


class EngineConflict(StoreError):
    """A second chDB data path was requested in a process that already runs one."""


class MigrationError(StoreError):
    """A migration file is malformed, or an applied one was edited afterwards."""


def check_identifier(name: str) -> str:
    """Database names are spliced into SQL, so they must be plain identifiers."""
    if not _IDENTIFIER.match(name):
        raise StoreError(f"invalid ClickHouse identifier {name!r}: use letters, digits and _")
    return name


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed DSN. ``location`` is the chDB data path or the server's DSN without its database."""

    kind: str                              # "chdb" or "http"
    location: str = field(repr=False)      # may hold a password
    database: str
    cluster: Cluster | None = None         # a server DSN's ?cluster=NAME&layout=...

    @classmethod
    def from_dsn(cls, dsn: str, default_database: str = DEFAULT_DATABASE) -> "Target":
        scheme, sep, rest = dsn.partition("://")
        if not sep:
            raise StoreError(f"not a DSN: {dsn!r} (expected chdb://PATH or clickhousedb://HOST...)")
        scheme = scheme.lower()
        if scheme == "chdb":
            path, _, query = rest.partition("?")
            if "cluster" in parse_qs(query):
                raise StoreError("a cluster needs a ClickHouse server: chDB runs one node in this process")
            database = parse_qs(query).get("database", [default_database])[0]
            path = unquote(path)
            if path in ("", "memory", _MEMORY):
                return cls("chdb", _MEMORY, check_identifier(database))
            return cls("chdb", os.path.realpath(os.path.abspath(path)), check_identifier(database))
        if scheme in _HTTP_SCHEMES:
            parts = urlsplit(dsn)
            database = unquote(parts.path.strip("/").split("/")[0]) or default_database
            params = parse_qsl(parts.query, keep_blank_values=True)
            options = {k: v for k, v in params if k in _CLUSTER_OPTIONS}
            if options:     # the cluster options are ours, not the client's: the rest stays as written
                parts = parts._replace(query=urlencode([(k, v) for k, v in params if k not in _CLUSTER_OPTIONS]))
            return cls("http", parts._replace(path="").geturl(), check_identifier(database), _cluster_of(options))
        raise StoreError(f"unsupported DSN scheme {scheme!r}: use chdb, clickhousedb, http or https")


_CLUSTER_OPTIONS = ("cluster", "layout")


def _cluster_of(options: dict[str, str]) -> Cluster | None:
    if not options.get("cluster"):
        if options.get("layout"):
            raise StoreError("layout= needs cluster=NAME (a cluster of the server's remote_servers)")
        return None
    try:
        return Cluster(options["cluster"], options.get("layout") or "distributed")
    except ClusterError as err:
        raise StoreError(str(err)) from err


_lock = threading.Lock()
_Key = tuple[str, str, str, str, Cluster | None]    # (kind, location, database, role, cluster)
_clients: dict[_Key, Client] = {}
_clusters: dict[int, Cluster] = {}         # id(client) -> the cluster its DSN named
_chdb_path: str | None = None
_served: set[str] = set()                      # chDB paths a child of this process serves
_served_urls: dict[_Key, str] = {}            # a served client's key -> the server it was made for


@dataclass(frozen=True, slots=True)
class Server:
    """A process serving a chDB path over ClickHouse's HTTP interface (``analytics/chdb_http.py``)."""

    url: str
    token: str = field(repr=False)
    pid: int

    @staticmethod
    def file(location: str) -> Path:
        return Path(location + ".server.json")

    def publish(self, location: str) -> None:
        """Write the file (mode 0600: the token grants the whole store) atomically."""
        with atomic_write(Server.file(location), binary=True) as f:     # 0600 by default
            f.write(orjson.dumps({"url": self.url, "token": self.token, "pid": self.pid}))

    @staticmethod
    def unpublish(location: str, pid: int) -> None:
        found = Server.find(location, alive_only=False)
        if found is not None and found.pid == pid:
            Server.file(location).unlink(missing_ok=True)

    @staticmethod
    def find(location: str, alive_only: bool = True) -> "Server | None":
        """The live server of ``location`` (never this process itself), or None."""
        try:
            raw = orjson.loads(Server.file(location).read_bytes())
            server = Server(str(raw["url"]), str(raw["token"]), int(raw["pid"]))
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        if alive_only and (server.pid == os.getpid() or not pid_alive(server.pid)):
            return None
        return server


def serve_through(dsn: str) -> str:
    """From now on this process reaches the chDB path of ``dsn`` only through its server; returns the path."""
    location = Target.from_dsn(dsn).location
    with _lock:
        _served.add(location)
    return location


def stop_serving_through(location: str) -> None:
    with _lock:
        _served.discard(location)
        dropped = _forget(lambda key: key[:2] == ("served", location))
    for client in dropped:
        client.close()


def _served_client(server: Server, db: str) -> Client:
    host, _, port = server.url.rpartition("://")[2].rpartition(":")
    # Its own pool: a proxy from the environment must never carry the loopback token.
    return clickhouse_connect.get_client(
        host=host, port=int(port), interface="http", access_token=server.token, compress=False,
        autogenerate_session_id=False, pool_mgr=urllib3.PoolManager(maxsize=8), database=db)


def connect(dsn: str, *, database: str | None = None, role: str = "default") -> Client:
    """The process-wide client for ``dsn``; ``database`` overrides the DSN's default database.

    The database is created if it does not exist. The client is shared: it is
    thread-safe for queries and inserts (chDB calls are serialized per client),
    but a streamed result must be consumed before the same client runs anything else.
    ``role`` asks for a separate client (for chDB, another handle on the same
    engine): readers that stream long results (``role="reader"``) then never
    hold up the writer's inserts.
    """
    target = Target.from_dsn(dsn)
    db = check_identifier(database) if database else target.database
    if target.kind == "chdb" and target.location != _MEMORY:
        server = Server.find(target.location)
        if server is not None or target.location in _served:
            return _connect_served(target.location, server, db, role)
    key = (target.kind, target.location, db, role, target.cluster)
    global _chdb_path
    with _lock:
        client = _clients.get(key)
        if client is not None:
            return client
        if target.kind == "chdb":
            if _chdb_path is not None and _chdb_path != target.location:
                raise EngineConflict(
                    f"chDB runs one engine per process and it is open at {_chdb_path!r}; "
                    f"refusing a second path {target.location!r}. Use one LLMGW_CLICKHOUSE_DSN per "
                    "process (in tests, the session-scoped chdb_dsn fixture) or close_all() first."
                )
            if target.location != _MEMORY:
                os.makedirs(target.location, exist_ok=True)
            try:
                client = clickhouse_connect.get_client(interface="chdb", path=target.location)
            except ProgrammingError as err:
                raise StoreError(
                    f"cannot open the chDB store at {target.location!r} (one process at a time: "
                    f"is the gateway running on it?): {err}"
                ) from err
        else:
            interface = _HTTP_SCHEMES[urlsplit(target.location).scheme.lower()]
            # No session id: one session cannot run two queries at once, and this client is shared.
            client = clickhouse_connect.get_client(
                dsn=target.location, interface=interface, autogenerate_session_id=False
            )
        _opened(client, db)
        _clients[key] = client
        if target.cluster is not None:
            _clusters[id(client)] = target.cluster
        if target.kind == "chdb":
            _chdb_path = target.location
        return client


def cluster_of(client: Client) -> Cluster | None:
    """The cluster named by the DSN ``client`` was opened with (``connect``), if any."""
    return _clusters.get(id(client))


def _connect_served(location: str, server: Server | None, db: str, role: str) -> Client:
    """The client on a chDB path another process serves (a new one when the server restarted)."""
    if server is None:
        raise StoreError(f"the analytics process serving {location!r} is not running (starting or "
                         "restarting); try again shortly")
    key = ("served", location, db, role, None)
    with _lock:
        client = _clients.get(key)
        if client is not None and _served_urls.get(key) == server.url + server.token:
            return client
        stale = _clients.pop(key, None)
    if stale is not None:
        stale.close()
    client = _opened(_served_client(server, db), db)
    with _lock:
        _clients[key] = client
        _served_urls[key] = server.url + server.token
    return client


def _opened(client: Client, db: str) -> Client:
    """A new client made ready for ``db`` (created if missing), or closed if that failed."""
    try:
        _ensure_database(client, db)
    except BaseException:
        client.close()
        raise
    client.database = db
    return client


def _ensure_database(client: Client, database: str) -> None:
    # EXISTS first: a read-only analyst may not create, even IF NOT EXISTS.
    if not int(client.command(f"EXISTS DATABASE {database}", use_database=False)):  # type: ignore[arg-type]
        client.command(f"CREATE DATABASE IF NOT EXISTS {database}", use_database=False)


def disconnect(dsn: str, *, database: str | None = None) -> None:
    """Close and forget the cached clients of one database, every role (a test that dropped it)."""
    target = Target.from_dsn(dsn)
    db = check_identifier(database) if database else target.database
    with _lock:
        dropped = _forget(lambda key: key[0] in (target.kind, "served") and key[1:3] == (target.location, db))
        _forget_engine_if_unused()
    for client in dropped:
        client.close()


def _forget(which: Callable[[_Key], bool]) -> list[Client]:
    """Drop the cached clients whose key ``which`` picks, with what is kept beside them (the cluster
    a DSN named, the server a served client was made for); the caller closes them. Under ``_lock``."""
    dropped = []
    for key in [k for k in _clients if which(k)]:
        client = _clients.pop(key)
        _clusters.pop(id(client), None)
        _served_urls.pop(key, None)
        dropped.append(client)
    return dropped


def close_all() -> None:
    """Close every cached client; afterwards another chDB path may be opened."""
    with _lock:
        clients = _forget(lambda key: True)
        _forget_engine_if_unused()
    for client in clients:
        client.close()


def _forget_engine_if_unused() -> None:
    global _chdb_path
    if not any(key[0] == "chdb" for key in _clients):
        _chdb_path = None


# ---- migrations ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()[:16]

    def statements(self, database: str) -> list[str]:
        """The file's statements for ``database``: split on ``;`` at a line end, comments dropped."""
        text = self.sql.replace("{db}", check_identifier(database))
        out = []
        for chunk in re.split(r";[ \t]*(?:\n|$)", text):
            code = "\n".join(line for line in chunk.splitlines() if not line.lstrip().startswith("--"))
            if code.strip():
                out.append(code.strip())
        return out


def load_migrations() -> list[Migration]:
    """The packaged migrations, in version order."""
    found = []
    for entry in resources.files("llmgw.analytics").joinpath("migrations").iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
        elif entry.name.endswith(".sql"):
            raise MigrationError(f"migration file {entry.name!r} must be named NNN_name.sql")
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {versions}")
    return found


def migrations_table(database: str, cluster: Cluster | None = None) -> str:
    """The DDL of ``{database}.schema_migrations``: replicated over the whole cluster when there is one."""
    db = check_identifier(database)
    return migrations_table_on(db, cluster)


def plan(database: str, migrations: list[Migration] | None = None,
         cluster: Cluster | None = None) -> list[tuple[Migration, list[str]]]:
    """Each migration with the statements ``migrate`` runs for it: as written for one node, or
    rendered for ``cluster`` (``analytics/cluster.py``).

    On a cluster the tables the migrations create are known from every migration in the list,
    so an ALTER in a later file finds the ``_local`` table an earlier file created.
    """
    db = check_identifier(database)
    todo = migrations if migrations is not None else load_migrations()
    if cluster is None:
        return [(m, m.statements(db)) for m in todo]
    storage = storage_tables([s for m in todo for s in m.statements(db)])
    try:
        return [(m, [out for s in m.statements(db) for out in render(s, db, cluster, storage)]) for m in todo]
    except ClusterError as err:
        raise MigrationError(str(err)) from err


def applied_migrations(client: Client, database: str) -> dict[int, str]:
    """version -> checksum of the migrations recorded in ``database``."""
    db = check_identifier(database)
    rows = client.query(f"SELECT version, checksum FROM {db}.schema_migrations FINAL").result_rows
    return {int(version): str(checksum) for version, checksum in rows}


def migrate(client: Client, database: str, migrations: list[Migration] | None = None,
            cluster: Cluster | None = None) -> list[int]:
    """Apply the migrations ``database`` lacks, in order; return the versions applied now.

    An applied migration whose file changed since is an error: write a new
    migration instead of editing one that has shipped.

    ``cluster`` defaults to the one named by the DSN ``client`` was opened with. On a cluster
    each statement runs ``ON CLUSTER`` and returns once every node applied it (it raises if
    one did not, and the version is not recorded: the next run applies it again, which the
    ``IF NOT EXISTS`` forms make safe). With nothing to apply, nothing runs ``ON CLUSTER``.
    """
    db = check_identifier(database)
    cluster = cluster or cluster_of(client)
    _ensure_database(client, db)
    if cluster is None:
        client.command(migrations_table(db))
    elif not int(client.command(f"EXISTS TABLE {db}.schema_migrations")):  # type: ignore[arg-type]
        # ON CLUSTER waits for every node: only run it when there is something to create, so a
        # node that is down holds up a migration, not every sink start.
        client.command(create_database(db, cluster))
        client.command(migrations_table(db, cluster))
    done = applied_migrations(client, db)
    applied = []
    for migration, statements in plan(db, migrations, cluster):
        recorded = done.get(migration.version)
        if recorded is not None:
            if recorded != migration.checksum:
                raise MigrationError(
                    f"migration {migration.version:03d}_{migration.name} changed after it was applied "
                    f"to {db} (checksum {recorded} -> {migration.checksum})"
                )
            continue
        for statement in statements:
            client.command(statement)
        client.insert(
            "schema_migrations",
            [[migration.version, migration.name, migration.checksum]],
            column_names=["version", "name", "checksum"],
            database=db,
        )
        applied.append(migration.version)
    return applied


__all__ = [
    "DEFAULT_DATABASE", "EngineConflict", "Migration", "MigrationError", "Server", "StoreError", "Target",
    "applied_migrations", "check_identifier", "close_all", "cluster_of", "connect", "disconnect",
    "load_migrations", "migrate", "migrations_table", "plan", "serve_through", "stop_serving_through",
]
