-- What the providers billed, imported from their own cost reports (analytics/reconcile.py):
-- one row per (import, provider, UTC day, line item, project/workspace, model), the amount in
-- micro-USD. Imports only append. For each (provider, day) the latest import that covers the
-- day is the truth (a provider revises recent days), so readers keep the rows whose
-- imported_at is that day's max(imported_at); importing the same report again changes nothing.
-- `source` names the file the row came from.
CREATE TABLE IF NOT EXISTS {db}.provider_costs
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
