-- Rollups per minute, hour and day per (org, workspace, user, key_id, model, provider),
-- filled by materialized views on every insert into usage_events, so dashboards
-- never scan raw rows. SummingMergeTree adds rows with the same key at merge
-- time: always read them with sum(...) GROUP BY, never a bare SELECT.
--
-- A re-sent insert (same insert_deduplication_token) is dropped in the
-- rollups too: the views derive their own token from the source block's, and
-- each target table has non_replicated_deduplication_window set. analytics/sink.py
-- also skips events already present in usage_events before inserting, so an
-- event re-delivered in a different batch is not summed twice (see README).
-- `model` is model_served, or model_requested when nothing was served (refusals).

CREATE TABLE IF NOT EXISTS {db}.usage_by_minute
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

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.usage_by_minute_mv TO {db}.usage_by_minute AS
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
FROM {db}.usage_events
GROUP BY minute, org, workspace, user, key_id, model, provider;

CREATE TABLE IF NOT EXISTS {db}.usage_by_hour
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

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.usage_by_hour_mv TO {db}.usage_by_hour AS
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
FROM {db}.usage_events
GROUP BY hour, org, workspace, user, key_id, model, provider;

CREATE TABLE IF NOT EXISTS {db}.usage_by_day
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

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.usage_by_day_mv TO {db}.usage_by_day AS
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
FROM {db}.usage_events
GROUP BY day, org, workspace, user, key_id, model, provider;
