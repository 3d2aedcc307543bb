-- Captured request and response bodies, for the workspaces that turned capture on (off by default:
-- `llmgw capture on --org O --workspace W`). Secrets are redacted before the gateway writes a row;
-- bodies are cut at the capture's max_bytes (`truncated`). Rows expire after 30 days.
-- Join to usage_events on event_id for the call's tokens and cost.
CREATE TABLE IF NOT EXISTS {db}.call_bodies
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
