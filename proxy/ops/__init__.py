"""Operations: metrics, health and readiness, structured logs.

``routes.add_routes`` adds ``/metrics`` and ``/readyz``, ``routes.ops_ctx`` binds the
metrics to the gateway, ``observe`` is the access-log and metrics middleware, ``Ops.on_event``
observes every usage event (the composition root makes it one of the gateway's observers);
``cli.register`` adds ``llmgw probe``; ``logs`` formats every log line as one JSON object with
secrets redacted. The failure policy is the gateway's own (``proxy/failure.py``).
"""
