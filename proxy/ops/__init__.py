"""Operations: metrics, health and readiness, failure policy, structured logs (issue 9).

``routes.register(app)`` adds ``/metrics``, ``/readyz``, the observing
middleware and the ledger hook; ``cli.register`` adds ``llmgw probe``;
``failure.admit`` is the pipeline's failure-policy check; ``logs`` formats
every log line as one JSON object with secrets redacted.
"""
