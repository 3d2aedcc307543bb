"""Connections, migrations, and what chDB's engine really does with deduplication tokens."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

import llmgw.analytics.cli
import llmgw.analytics.cluster
from llmgw import analytics
import llmgw.analytics.embedded
import llmgw.analytics.queries
import llmgw.analytics.sink
import llmgw.analytics.store
from llmgw.analytics import store
from llmgw.analytics.store import EngineConflict, Migration, MigrationError, StoreError, Target
from tests.fixtures.chdb import AnalyticsDB


def test_dsn_forms() -> None:
    assert Target.from_dsn("chdb:///var/lib/x") == Target("chdb", "/var/lib/x", "llmgw")
    relative = Target.from_dsn("chdb://./llmgw-data/clickhouse?database=prod")
    assert relative.location == str(Path("llmgw-data/clickhouse").resolve()) and relative.database == "prod"
    assert Target.from_dsn("chdb://:memory:").location == ":memory:"
    server = Target.from_dsn("clickhousedb://u:p%40ss@ch.internal:8123/analytics")
    assert (server.kind, server.location, server.database) == (
        "http", "clickhousedb://u:p%40ss@ch.internal:8123", "analytics")
    assert Target.from_dsn("https://ch.example:8443").database == "llmgw"
    assert "p%40ss" not in repr(server)            # no password in logs
    for bad in ("localhost:8123", "postgres://x/y", "chdb:///x?database=a-b"):
        with pytest.raises(StoreError):
            Target.from_dsn(bad)


def test_connect_caches_one_client_per_database(chdb_dsn: str) -> None:
    db = f"t_{uuid.uuid4().hex[:12]}"
    try:
        client = store.connect(chdb_dsn, database=db)
        assert store.connect(chdb_dsn, database=db) is client
        assert client.database == db
        assert client.command(f"EXISTS DATABASE {db}") == 1   # created on connect
    finally:
        store.connect(chdb_dsn).command(f"DROP DATABASE IF EXISTS {db}")
        store.disconnect(chdb_dsn, database=db)


def test_a_second_chdb_path_is_refused(chdb_dsn: str, tmp_path: Path) -> None:
    store.connect(chdb_dsn)
    with pytest.raises(EngineConflict, match="one engine per process"):
        store.connect(f"chdb://{tmp_path / 'other'}")


def test_migrations_are_ordered_and_idempotent(analytics_db: AnalyticsDB) -> None:
    client, db = analytics_db.client, analytics_db.database
    versions = [m.version for m in store.load_migrations()]
    assert versions == sorted(versions) and versions[:2] == [1, 2]
    assert store.applied_migrations(client, db).keys() == set(versions)
    tables = {r[0] for r in client.query(f"SHOW TABLES FROM {db}").result_rows}
    assert {"usage_events", "usage_by_minute", "usage_by_hour", "usage_by_day",
            "usage_by_minute_mv", "usage_by_hour_mv", "usage_by_day_mv", "schema_migrations"} <= tables

    assert analytics_db.sink.ensure_schema() == []          # re-run: nothing to do
    assert store.migrate(client, db) == []
    rows = client.query(f"SELECT count() FROM {db}.schema_migrations").result_rows
    assert rows == [(len(versions),)]                        # recorded once


def test_an_applied_migration_must_not_change(analytics_db: AnalyticsDB) -> None:
    client, db = analytics_db.client, analytics_db.database
    first = store.load_migrations()[0]
    edited = Migration(first.version, first.name, first.sql + "\n-- edited\n")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        store.migrate(client, db, [edited])


def test_a_new_migration_is_applied_once(analytics_db: AnalyticsDB) -> None:
    client, db = analytics_db.client, analytics_db.database
    extra = Migration(900, "extra", "CREATE TABLE IF NOT EXISTS {db}.extra (x UInt8)\n"
                                    "ENGINE = MergeTree ORDER BY x;\n-- a comment\n")
    assert extra.statements(db) == [f"CREATE TABLE IF NOT EXISTS {db}.extra (x UInt8)\nENGINE = MergeTree ORDER BY x"]
    assert store.migrate(client, db, [*store.load_migrations(), extra]) == [900]
    assert store.migrate(client, db, [*store.load_migrations(), extra]) == []


# ---- engine facts the design relies on (README "What chDB does") -------------------------


def _token_table(client, db: str, name: str, window: int | None) -> None:  # type: ignore[no-untyped-def]
    setting = f" SETTINGS non_replicated_deduplication_window = {window}" if window else ""
    client.command(f"CREATE TABLE {db}.{name} (id String, v Int64) ENGINE = MergeTree ORDER BY id{setting}")


def _insert(client, db: str, table: str, token: str, rows, **settings) -> None:  # type: ignore[no-untyped-def]
    client.insert(table, rows, column_names=["id", "v"], database=db,
                  settings={"insert_deduplication_token": token, **settings})


def _total(client, db: str, table: str) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    return tuple(client.query(f"SELECT count(), sum(v) FROM {db}.{table}").result_rows[0])


def test_chdb_token_dedup_needs_the_table_window(analytics_db: AnalyticsDB) -> None:
    client, db = analytics_db.client, analytics_db.database
    _token_table(client, db, "no_window", None)
    _token_table(client, db, "with_window", 100)
    for table in ("no_window", "with_window"):
        for _ in range(2):
            _insert(client, db, table, "tok-1", [["a", 1], ["b", 2]])
    assert _total(client, db, "no_window") == (4, 6)      # token ignored
    assert _total(client, db, "with_window") == (2, 3)    # re-send dropped


def test_chdb_views_drop_a_resent_block_only_when_asked(analytics_db: AnalyticsDB) -> None:
    client, db = analytics_db.client, analytics_db.database
    _token_table(client, db, "src", 100)
    _token_table(client, db, "dst", 100)
    client.command(f"CREATE MATERIALIZED VIEW {db}.mv TO {db}.dst AS SELECT id, v FROM {db}.src")
    for _ in range(2):
        _insert(client, db, "src", "tok-off", [["a", 1]], deduplicate_blocks_in_dependent_materialized_views=0)
    assert _total(client, db, "src") == (1, 1) and _total(client, db, "dst") == (2, 2)
    for _ in range(2):
        _insert(client, db, "src", "tok-on", [["b", 10]], deduplicate_blocks_in_dependent_materialized_views=1)
    assert _total(client, db, "src") == (2, 11) and _total(client, db, "dst") == (3, 12)


def test_chdb_a_reused_token_drops_different_rows(analytics_db: AnalyticsDB) -> None:
    """Why the sink puts the event ids in every token: ClickHouse trusts the token, not the rows."""
    client, db = analytics_db.client, analytics_db.database
    _token_table(client, db, "t", 100)
    _insert(client, db, "t", "same", [["a", 1]])
    _insert(client, db, "t", "same", [["b", 2]])
    assert _total(client, db, "t") == (1, 1)


def test_chdb_dedup_log_survives_a_restart(tmp_path: Path) -> None:
    """Each run is a new process, so a new engine on its own path."""
    script = textwrap.dedent(f"""
        import clickhouse_connect
        c = clickhouse_connect.get_client(interface="chdb", path={str(tmp_path / "ch")!r})
        c.command("CREATE DATABASE IF NOT EXISTS d")
        c.command("CREATE TABLE IF NOT EXISTS d.t (id String) ENGINE = MergeTree ORDER BY id "
                  "SETTINGS non_replicated_deduplication_window = 100")
        c.insert("t", [["a"], ["b"]], column_names=["id"], database="d",
                 settings={{"insert_deduplication_token": "kafka:usage:0:0-1"}})
        print(c.query("SELECT count() FROM d.t").result_rows[0][0])
    """)
    counts = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                             timeout=120).stdout.strip() for _ in range(2)]
    assert counts == ["2", "2"]


def test_a_dropped_served_client_leaves_nothing_behind() -> None:
    """What is kept beside a served client (the server it was made for) goes with it: a location
    served again later starts clean, and a long-lived process does not collect stale entries."""
    class Closing:
        closed = False

        def close(self) -> None:
            self.closed = True

    a, b = Closing(), Closing()
    keys = [("served", "/data/a", "llmgw", "default", None), ("served", "/data/b", "llmgw", "reader", None)]
    with store._lock:
        for key, client in zip(keys, (a, b)):
            store._clients[key] = client          # type: ignore[assignment]
            store._served_urls[key] = "http://127.0.0.1:1" + "token"
    try:
        store.stop_serving_through("/data/a")
        assert a.closed and not b.closed
        assert keys[0] not in store._clients and keys[0] not in store._served_urls
        assert store._served_urls[keys[1]]
    finally:
        with store._lock:
            for key in keys:
                store._clients.pop(key, None)
                store._served_urls.pop(key, None)


def test_public_names() -> None:
    for module in (analytics.store, analytics.sink, analytics.queries, analytics.cli, analytics.embedded,
                   analytics.cluster):
        public = {name for name, value in vars(module).items()
                  if not name.startswith("_") and getattr(value, "__module__", module.__name__) == module.__name__
                  and (callable(value) or name.isupper())}
        assert public <= set(module.__all__), (module.__name__, public - set(module.__all__))
        assert all(hasattr(module, name) for name in module.__all__), module.__name__
