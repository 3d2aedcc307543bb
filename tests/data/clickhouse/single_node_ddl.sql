-- schema_migrations

CREATE TABLE IF NOT EXISTS llmgw.schema_migrations
(
    version    UInt32,
    name       String,
    checksum   String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY version
;
-- 001_usage_events
CREATE TABLE IF NOT EXISTS llmgw.usage_events
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
-- 002_rollups
CREATE TABLE IF NOT EXISTS llmgw.usage_by_minute
(
    minute                DateTime('UTC'),
    org                   LowCardinality(String),
    workspace             LowCardinality(String),
    user                  LowCardinality(String),
    key_id                LowCardinality(String),
    model                 LowCardinality(String),
    provider              LowCardinality(String),
    requests              UInt64,
    requests_ok           UInt64,
    requests_rejected     UInt64,
    input_tokens          UInt64,
    cache_write_5m_tokens UInt64,
    cache_write_1h_tokens UInt64,
    cache_read_tokens     UInt64,
    output_tokens         UInt64,
    reasoning_tokens      UInt64,
    cost_micro_usd        Int64,
    latency_ms_sum        UInt64,
    cost_usd              Decimal(18, 6) ALIAS toDecimal64(cost_micro_usd, 6) / 1000000
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (org, minute, workspace, user, key_id, model, provider)
SETTINGS non_replicated_deduplication_window = 10000;
-- 002_rollups
CREATE MATERIALIZED VIEW IF NOT EXISTS llmgw.usage_by_minute_mv TO llmgw.usage_by_minute AS
SELECT
    toStartOfMinute(toDateTime(ts_start)) AS minute,
    org, workspace, user, key_id, model, provider,
    countIf(kind = 'usage') AS requests,
    countIf(kind = 'usage' AND outcome = 'ok') AS requests_ok,
    countIf(kind = 'usage' AND startsWith(outcome, 'rejected_')) AS requests_rejected,
    sum(input_tokens) AS input_tokens,
    sum(cache_write_5m_tokens) AS cache_write_5m_tokens,
    sum(cache_write_1h_tokens) AS cache_write_1h_tokens,
    sum(cache_read_tokens) AS cache_read_tokens,
    sum(output_tokens) AS output_tokens,
    sum(reasoning_tokens) AS reasoning_tokens,
    sum(cost_micro_usd) AS cost_micro_usd,
    sum(toUInt64(latency_ms)) AS latency_ms_sum
FROM llmgw.usage_events
GROUP BY minute, org, workspace, user, key_id, model, provider;
-- 002_rollups
CREATE TABLE IF NOT EXISTS llmgw.usage_by_hour
(
    hour                  DateTime('UTC'),
    org                   LowCardinality(String),
    workspace             LowCardinality(String),
    user                  LowCardinality(String),
    key_id                LowCardinality(String),
    model                 LowCardinality(String),
    provider              LowCardinality(String),
    requests              UInt64,
    requests_ok           UInt64,
    requests_rejected     UInt64,
    input_tokens          UInt64,
    cache_write_5m_tokens UInt64,
    cache_write_1h_tokens UInt64,
    cache_read_tokens     UInt64,
    output_tokens         UInt64,
    reasoning_tokens      UInt64,
    cost_micro_usd        Int64,
    latency_ms_sum        UInt64,
    cost_usd              Decimal(18, 6) ALIAS toDecimal64(cost_micro_usd, 6) / 1000000
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (org, hour, workspace, user, key_id, model, provider)
SETTINGS non_replicated_deduplication_window = 10000;
-- 002_rollups
CREATE MATERIALIZED VIEW IF NOT EXISTS llmgw.usage_by_hour_mv TO llmgw.usage_by_hour AS
SELECT
    toStartOfHour(toDateTime(ts_start)) AS hour,
    org, workspace, user, key_id, model, provider,
    countIf(kind = 'usage') AS requests,
    countIf(kind = 'usage' AND outcome = 'ok') AS requests_ok,
    countIf(kind = 'usage' AND startsWith(outcome, 'rejected_')) AS requests_rejected,
    sum(input_tokens) AS input_tokens,
    sum(cache_write_5m_tokens) AS cache_write_5m_tokens,
    sum(cache_write_1h_tokens) AS cache_write_1h_tokens,
    sum(cache_read_tokens) AS cache_read_tokens,
    sum(output_tokens) AS output_tokens,
    sum(reasoning_tokens) AS reasoning_tokens,
    sum(cost_micro_usd) AS cost_micro_usd,
    sum(toUInt64(latency_ms)) AS latency_ms_sum
FROM llmgw.usage_events
GROUP BY hour, org, workspace, user, key_id, model, provider;
-- 002_rollups
CREATE TABLE IF NOT EXISTS llmgw.usage_by_day
(
    day                   Date,
    org                   LowCardinality(String),
    workspace             LowCardinality(String),
    user                  LowCardinality(String),
    key_id                LowCardinality(String),
    model                 LowCardinality(String),
    provider              LowCardinality(String),
    requests              UInt64,
    requests_ok           UInt64,
    requests_rejected     UInt64,
    input_tokens          UInt64,
    cache_write_5m_tokens UInt64,
    cache_write_1h_tokens UInt64,
    cache_read_tokens     UInt64,
    output_tokens         UInt64,
    reasoning_tokens      UInt64,
    cost_micro_usd        Int64,
    latency_ms_sum        UInt64,
    cost_usd              Decimal(18, 6) ALIAS toDecimal64(cost_micro_usd, 6) / 1000000
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (org, day, workspace, user, key_id, model, provider)
SETTINGS non_replicated_deduplication_window = 10000;
-- 002_rollups
CREATE MATERIALIZED VIEW IF NOT EXISTS llmgw.usage_by_day_mv TO llmgw.usage_by_day AS
SELECT
    toDate(ts_start) AS day,
    org, workspace, user, key_id, model, provider,
    countIf(kind = 'usage') AS requests,
    countIf(kind = 'usage' AND outcome = 'ok') AS requests_ok,
    countIf(kind = 'usage' AND startsWith(outcome, 'rejected_')) AS requests_rejected,
    sum(input_tokens) AS input_tokens,
    sum(cache_write_5m_tokens) AS cache_write_5m_tokens,
    sum(cache_write_1h_tokens) AS cache_write_1h_tokens,
    sum(cache_read_tokens) AS cache_read_tokens,
    sum(output_tokens) AS output_tokens,
    sum(reasoning_tokens) AS reasoning_tokens,
    sum(cost_micro_usd) AS cost_micro_usd,
    sum(toUInt64(latency_ms)) AS latency_ms_sum
FROM llmgw.usage_events
GROUP BY day, org, workspace, user, key_id, model, provider;
-- 003_audit_log
CREATE TABLE IF NOT EXISTS llmgw.audit_log
(
    ts          DateTime64(3, 'UTC'),
    actor       LowCardinality(String),
    type        LowCardinality(String),
    id          String,
    action      LowCardinality(String),
    before      String,
    after       String,
    changed     Array(String),
    reason      String,
    entry_key   String,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (type, id, ts, entry_key)
SETTINGS non_replicated_deduplication_window = 1000;
-- 004_provider_costs
CREATE TABLE IF NOT EXISTS llmgw.provider_costs
(
    provider       LowCardinality(String),
    day            Date,
    line_item      String,
    project_id     String,
    model          LowCardinality(String),
    cost_micro_usd Int64,
    currency       LowCardinality(String),
    source         String,
    imported_at    DateTime64(3, 'UTC'),
    cost_usd       Decimal(18, 6) ALIAS toDecimal64(cost_micro_usd, 6) / 1000000
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (provider, day, imported_at, line_item, project_id, model);
-- 005_call_bodies
CREATE TABLE IF NOT EXISTS llmgw.call_bodies
(
    event_id    String,
    ts          DateTime64(3, 'UTC'),
    org         LowCardinality(String),
    workspace   LowCardinality(String),
    api         LowCardinality(String),
    request     String,
    response    String,
    truncated   Bool
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (org, workspace, ts, event_id)
TTL toDateTime(ts) + INTERVAL 30 DAY;
-- 006_nano_usd_tier_web_search
ALTER TABLE llmgw.usage_events
    ADD COLUMN IF NOT EXISTS cost_nano_usd Int64 DEFAULT cost_micro_usd * 1000 AFTER cost_micro_usd;
-- 006_nano_usd_tier_web_search
ALTER TABLE llmgw.usage_events
    ADD COLUMN IF NOT EXISTS service_tier LowCardinality(String) DEFAULT '' AFTER schema_version;
-- 006_nano_usd_tier_web_search
ALTER TABLE llmgw.usage_events
    ADD COLUMN IF NOT EXISTS web_search_calls UInt32 DEFAULT 0 AFTER service_tier;
-- 006_nano_usd_tier_web_search
ALTER TABLE llmgw.usage_events
    MODIFY COLUMN cost_usd Decimal(38, 9) ALIAS toDecimal128(cost_nano_usd, 9) / 1000000000;
-- 006_nano_usd_tier_web_search
ALTER TABLE llmgw.usage_by_minute
    ADD COLUMN IF NOT EXISTS cost_nano_usd Int64 DEFAULT cost_micro_usd * 1000 AFTER cost_micro_usd;
-- 006_nano_usd_tier_web_search
ALTER TABLE llmgw.usage_by_minute
    ADD COLUMN IF NOT EXISTS web_search_calls UInt64 DEFAULT 0 AFTER cost_nano_usd;
-- 006_nano_usd_tier_web_search
ALTER TABLE llmgw.usage_by_minute
    MODIFY COLUMN cost_usd Decimal(38, 9) ALIAS toDecimal128(cost_nano_usd, 9) / 1000000000;
-- 006_nano_usd_tier_web_search
ALTER TABLE llmgw.usage_by_minute_mv MODIFY QUERY
SELECT
    toStartOfMinute(toDateTime(ts_start)) AS minute,
    org, workspace, user, key_id, model, provider,
    countIf(kind = 'usage') AS requests,
    countIf(kind = 'usage' AND outcome = 'ok') AS requests_ok,
    countIf(kind = 'usage' AND startsWith(outcome, 'rejected_')) AS requests_rejected,
    sum(input_tokens) AS input_tokens,
    sum(cache_write_5m_tokens) AS cache_write_5m_tokens,
    sum(cache_write_1h_tokens) AS cache_write_1h_tokens,
    sum(cache_read_tokens) AS cache_read_tokens,
    sum(output_tokens) AS output_tokens,
    sum(reasoning_tokens) AS reasoning_tokens,
    sum(cost_micro_usd) AS cost_micro_usd,
    sum(cost_nano_usd) AS cost_nano_usd,
    sum(toUInt64(web_search_calls)) AS web_search_calls,
    sum(toUInt64(latency_ms)) AS latency_ms_sum
FROM llmgw.usage_events
GROUP BY minute, org, workspace, user, key_id, model, provider;
-- 006_nano_usd_tier_web_search
ALTER TABLE llmgw.usage_by_hour
    ADD COLUMN IF NOT EXISTS cost_nano_usd Int64 DEFAULT cost_micro_usd * 1000 AFTER cost_micro_usd;
-- 006_nano_usd_tier_web_search
ALTER TABLE llmgw.usage_by_hour
    ADD COLUMN IF NOT EXISTS web_search_calls UInt64 DEFAULT 0 AFTER cost_nano_usd;
-- 006_nano_usd_tier_web_search
ALTER TABLE llmgw.usage_by_hour
    MODIFY COLUMN cost_usd Decimal(38, 9) ALIAS toDecimal128(cost_nano_usd, 9) / 1000000000;
-- 006_nano_usd_tier_web_search
ALTER TABLE llmgw.usage_by_hour_mv MODIFY QUERY
SELECT
    toStartOfHour(toDateTime(ts_start)) AS hour,
    org, workspace, user, key_id, model, provider,
    countIf(kind = 'usage') AS requests,
    countIf(kind = 'usage' AND outcome = 'ok') AS requests_ok,
    countIf(kind = 'usage' AND startsWith(outcome, 'rejected_')) AS requests_rejected,
    sum(input_tokens) AS input_tokens,
    sum(cache_write_5m_tokens) AS cache_write_5m_tokens,
    sum(cache_write_1h_tokens) AS cache_write_1h_tokens,
    sum(cache_read_tokens) AS cache_read_tokens,
    sum(output_tokens) AS output_tokens,
    sum(reasoning_tokens) AS reasoning_tokens,
    sum(cost_micro_usd) AS cost_micro_usd,
    sum(cost_nano_usd) AS cost_nano_usd,
    sum(toUInt64(web_search_calls)) AS web_search_calls,
    sum(toUInt64(latency_ms)) AS latency_ms_sum
FROM llmgw.usage_events
GROUP BY hour, org, workspace, user, key_id, model, provider;
-- 006_nano_usd_tier_web_search
ALTER TABLE llmgw.usage_by_day
    ADD COLUMN IF NOT EXISTS cost_nano_usd Int64 DEFAULT cost_micro_usd * 1000 AFTER cost_micro_usd;
-- 006_nano_usd_tier_web_search
ALTER TABLE llmgw.usage_by_day
    ADD COLUMN IF NOT EXISTS web_search_calls UInt64 DEFAULT 0 AFTER cost_nano_usd;
-- 006_nano_usd_tier_web_search
ALTER TABLE llmgw.usage_by_day
    MODIFY COLUMN cost_usd Decimal(38, 9) ALIAS toDecimal128(cost_nano_usd, 9) / 1000000000;
-- 006_nano_usd_tier_web_search
ALTER TABLE llmgw.usage_by_day_mv MODIFY QUERY
SELECT
    toDate(ts_start) AS day,
    org, workspace, user, key_id, model, provider,
    countIf(kind = 'usage') AS requests,
    countIf(kind = 'usage' AND outcome = 'ok') AS requests_ok,
    countIf(kind = 'usage' AND startsWith(outcome, 'rejected_')) AS requests_rejected,
    sum(input_tokens) AS input_tokens,
    sum(cache_write_5m_tokens) AS cache_write_5m_tokens,
    sum(cache_write_1h_tokens) AS cache_write_1h_tokens,
    sum(cache_read_tokens) AS cache_read_tokens,
    sum(output_tokens) AS output_tokens,
    sum(reasoning_tokens) AS reasoning_tokens,
    sum(cost_micro_usd) AS cost_micro_usd,
    sum(cost_nano_usd) AS cost_nano_usd,
    sum(toUInt64(web_search_calls)) AS web_search_calls,
    sum(toUInt64(latency_ms)) AS latency_ms_sum
FROM llmgw.usage_events
GROUP BY day, org, workspace, user, key_id, model, provider;
-- 007_usage_anomalous
ALTER TABLE llmgw.usage_events
    ADD COLUMN IF NOT EXISTS usage_anomalous Bool DEFAULT false AFTER web_search_calls;
