-- Usage events schema v2 (ledger/events.py): the cost to the nano-USD, the tier the provider
-- served, and the web-search calls it billed.
--
-- cost_nano_usd is the charge (1 USD = 10^9). Rows written before it get cost_micro_usd x 1000,
-- which is exactly what those events charged. On newer rows cost_micro_usd is the nanos rounded
-- UP to the micro (what a v1 reader sees): summing it over-counts sub-micro calls, so money is
-- summed from cost_nano_usd, here and in the rollups. cost_usd (ALIAS) now reads the nanos.
--
-- service_tier is '' when the call named none and the provider said none (standard rates).
-- The rollups gain cost_nano_usd and web_search_calls; their views are changed in place
-- (MODIFY QUERY: no insert is missed while the migration runs). Splitting by tier reads
-- usage_events: the rollups' keys do not include it.

ALTER TABLE {db}.usage_events
    ADD COLUMN IF NOT EXISTS cost_nano_usd Int64 DEFAULT cost_micro_usd * 1000 AFTER cost_micro_usd;

ALTER TABLE {db}.usage_events
    ADD COLUMN IF NOT EXISTS service_tier LowCardinality(String) DEFAULT '' AFTER schema_version;

ALTER TABLE {db}.usage_events
    ADD COLUMN IF NOT EXISTS web_search_calls UInt32 DEFAULT 0 AFTER service_tier;

ALTER TABLE {db}.usage_events
    MODIFY COLUMN cost_usd Decimal(38, 9) ALIAS toDecimal128(cost_nano_usd, 9) / 1000000000;

ALTER TABLE {db}.usage_by_minute
    ADD COLUMN IF NOT EXISTS cost_nano_usd Int64 DEFAULT cost_micro_usd * 1000 AFTER cost_micro_usd;

ALTER TABLE {db}.usage_by_minute
    ADD COLUMN IF NOT EXISTS web_search_calls UInt64 DEFAULT 0 AFTER cost_nano_usd;

ALTER TABLE {db}.usage_by_minute
    MODIFY COLUMN cost_usd Decimal(38, 9) ALIAS toDecimal128(cost_nano_usd, 9) / 1000000000;

ALTER TABLE {db}.usage_by_minute_mv MODIFY QUERY
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
FROM {db}.usage_events
GROUP BY minute, org, workspace, user, key_id, model, provider;

ALTER TABLE {db}.usage_by_hour
    ADD COLUMN IF NOT EXISTS cost_nano_usd Int64 DEFAULT cost_micro_usd * 1000 AFTER cost_micro_usd;

ALTER TABLE {db}.usage_by_hour
    ADD COLUMN IF NOT EXISTS web_search_calls UInt64 DEFAULT 0 AFTER cost_nano_usd;

ALTER TABLE {db}.usage_by_hour
    MODIFY COLUMN cost_usd Decimal(38, 9) ALIAS toDecimal128(cost_nano_usd, 9) / 1000000000;

ALTER TABLE {db}.usage_by_hour_mv MODIFY QUERY
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
FROM {db}.usage_events
GROUP BY hour, org, workspace, user, key_id, model, provider;

ALTER TABLE {db}.usage_by_day
    ADD COLUMN IF NOT EXISTS cost_nano_usd Int64 DEFAULT cost_micro_usd * 1000 AFTER cost_micro_usd;

ALTER TABLE {db}.usage_by_day
    ADD COLUMN IF NOT EXISTS web_search_calls UInt64 DEFAULT 0 AFTER cost_nano_usd;

ALTER TABLE {db}.usage_by_day
    MODIFY COLUMN cost_usd Decimal(38, 9) ALIAS toDecimal128(cost_nano_usd, 9) / 1000000000;

ALTER TABLE {db}.usage_by_day_mv MODIFY QUERY
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
FROM {db}.usage_events
GROUP BY day, org, workspace, user, key_id, model, provider;
