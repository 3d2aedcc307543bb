-- The audit log: every configuration change (keys, budgets, admins, orgs, ...) with who made it,
-- when, the record before and after (JSON, secrets' hashes redacted) and the reason given.
-- Rows come from proxy.admin.audit_entries (the config log's history) through analytics/audit.py.
-- entry_key is a hash of (id, ts, actor, after): landing the same history twice changes nothing
-- (the writer skips known keys; ReplacingMergeTree collapses what slips past); read it FINAL.
CREATE TABLE IF NOT EXISTS {db}.audit_log
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
