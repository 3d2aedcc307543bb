-- Usage events schema v2 carries usage_anomalous (ledger/events.py): the provider's usage was
-- negative, not an integer or beyond what the call could hold, and the gateway clamped it
-- (proxy/usage.py). Stored so an analyst can find every such call and what it was charged;
-- rows written before it were never flagged.

ALTER TABLE {db}.usage_events
    ADD COLUMN IF NOT EXISTS usage_anomalous Bool DEFAULT false AFTER web_search_calls;
