"""``llmgw sink``: run the Kafka -> ClickHouse sink (``analytics/consumer.py``) until stopped.

Kafka comes from ``--kafka-bootstrap`` / ``LLMGW_KAFKA_BOOTSTRAP`` and the
topic from ``LLMGW_TOPIC_PREFIX`` (``{prefix}.usage``); the store from
``--dsn``, else ``LLMGW_CLICKHOUSE_DSN``, else the embedded
``chdb://$LLMGW_DATA_DIR/clickhouse``. In production point it at a ClickHouse
server; with a ``chdb://`` store the sink process owns that directory and
nothing else may open it while it runs.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Mapping
from functools import partial
from typing import Any

from llmgw.analytics import consumer, store
from llmgw.ledger.topics import Topics
from llmgw.core.settings import Settings


def register(subparsers: Any, environ: Mapping[str, str] | None = None) -> None:
    s = subparsers.add_parser("sink", help="write usage events from Kafka into ClickHouse (exactly once)")
    s.add_argument("--dsn", help="ClickHouse DSN (default: $LLMGW_CLICKHOUSE_DSN, else the embedded store)")
    s.add_argument("--database", help=f"database (default: the DSN's, else {store.DEFAULT_DATABASE})")
    s.add_argument("--group", help="consumer group (default: <prefix>-analytics)")
    s.add_argument("--max-batch", type=_positive_int, default=consumer.DEFAULT_MAX_BATCH_EVENTS,
                   help=f"events per insert at most (default {consumer.DEFAULT_MAX_BATCH_EVENTS})")
    s.add_argument("--max-wait-s", type=float, default=consumer.DEFAULT_MAX_WAIT_S,
                   help=f"longest a consumed event waits for its insert (default {consumer.DEFAULT_MAX_WAIT_S})")
    s.add_argument("--session-timeout-ms", type=int, default=10_000, help=argparse.SUPPRESS)
    s.add_argument("--pause-after-insert-s", type=float, default=0.0, help=argparse.SUPPRESS)  # chaos tests
    s.set_defaults(func=partial(_sink, environ))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def settings_of(args: argparse.Namespace, environ: Mapping[str, str] | None) -> Settings:
    """Settings from the environment, with the top-level ``llmgw`` flags on top."""
    flags = {k: getattr(args, k, None) for k in ("config", "data_dir", "kafka_bootstrap")}
    return Settings.load(environ, **{k: v for k, v in flags.items() if v})


def _sink(environ: Mapping[str, str] | None, args: argparse.Namespace) -> int:
    settings = settings_of(args, environ)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if not settings.kafka_bootstrap:
        print("llmgw: the sink reads Kafka: set LLMGW_KAFKA_BOOTSTRAP or --kafka-bootstrap "
              "(embedded mode writes ClickHouse in-process, no sink needed)", file=sys.stderr)
        return 2
    topics = Topics(settings.topic_prefix)
    options = consumer.SinkOptions(
        bootstrap=settings.kafka_bootstrap, topic=topics.usage,
        group_id=args.group or consumer.group_id(settings.topic_prefix), max_batch_events=args.max_batch,
        max_wait_s=args.max_wait_s, session_timeout_ms=args.session_timeout_ms,
        pause_after_insert_s=args.pause_after_insert_s)
    try:
        return asyncio.run(_serve_with_audit(settings, args.dsn or settings.analytics_dsn, options, args.database))
    except store.StoreError as err:
        print(f"llmgw: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


async def _serve_with_audit(settings: Settings, dsn: str, options: consumer.SinkOptions,
                            database: str | None) -> int:
    """The usage sink, and beside it the audit trail from the config topic."""
    from llmgw.analytics.audit_landing import land_forever
    from llmgw.ledger.configlog import open_config_log

    config_log = open_config_log(settings.data_dir, settings.kafka_bootstrap, settings.topic_prefix)
    audit_task = asyncio.get_running_loop().create_task(land_forever(config_log, dsn, database, interval_s=10.0))
    try:
        return await consumer.serve(dsn, options, database=database)
    finally:
        audit_task.cancel()
        await asyncio.gather(audit_task, return_exceptions=True)


__all__ = ["register", "settings_of"]
