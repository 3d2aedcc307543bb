-- Raw usage events: one row per model call or re-rating adjustment, exactly the
-- fields of ledger/events.py::UsageEvent. `{db}` is replaced by the database name.
--
-- Duplicates of an event_id (a re-delivered Kafka message, a replayed batch)
-- collapse at merge time (ReplacingMergeTree: every sorting-key column is a
-- function of the event, and the key ends with event_id). Until parts merge,
-- exact queries read `FROM usage_events FINAL`.
-- non_replicated_deduplication_window makes a re-sent insert with the same
-- insert_deduplication_token a no-op (plain MergeTree ignores tokens without it).
CREATE TABLE IF NOT EXISTS {db}.usage_events
(
    event_id              String,
    ts_start              DateTime64(3, 'UTC'),
    ts_end                DateTime64(3, 'UTC'),
    org                   LowCardinality(String),
    workspace             LowCardinality(String),
    user                  LowCardinality(String),
    key_id                LowCardinality(String),
    provider              LowCardinality(String),
    api                   LowCardinality(String),
    model_requested       LowCardinality(String),
    model_served          LowCardinality(String),
    input_tokens          UInt64,
    cache_write_5m_tokens UInt64,
    cache_write_1h_tokens UInt64,
    cache_read_tokens     UInt64,
    output_tokens         UInt64,
    reasoning_tokens      UInt64,
    cost_micro_usd        Int64,
    price_version         LowCardinality(String),
    outcome               LowCardinality(String),
    http_status           UInt16,
    latency_ms            UInt32,
    ttft_ms               Nullable(UInt32),
    project               LowCardinality(String),
    tags                  Array(String),
    tag_map               Map(String, String),
    session_id            String,
    request_id            String,
    gateway_id            LowCardinality(String),
    stream                Bool,
    usage_estimated       Bool,
    cost_estimated        Bool,
    error_type            LowCardinality(String),
    kind                  LowCardinality(String),
    adjusts_event_id      String,
    schema_version        UInt16,
    inserted_at           DateTime64(3, 'UTC') DEFAULT now64(3),
    -- conveniences, computed on read
    model                 LowCardinality(String) ALIAS if(model_served != '', model_served, model_requested),
    total_tokens          UInt64 ALIAS input_tokens + cache_write_5m_tokens + cache_write_1h_tokens + cache_read_tokens + output_tokens,
    cost_usd              Decimal(18, 6) ALIAS toDecimal64(cost_micro_usd, 6) / 1000000,
    INDEX event_id_bf event_id TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX session_id_bf session_id TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts_start)
ORDER BY (org, toDate(ts_start), workspace, user, key_id, event_id)
SETTINGS non_replicated_deduplication_window = 10000;
