"""Governance: the admin API and CLI, roles, config as code, the audit log, budget-increase requests.

    routes.py           add_routes(router) and the admin_errors middleware: /admin/..., LiteLLM-compatible
                        calls, /v1/llmgw/increase-requests
    cli.py              register(subparsers): apply, audit, request-increase, increase-requests, admins
    runtime.py          AdminRuntime (config-log writer, auth), handler helpers, the raise-expiry task
    http_*.py, litellm.py   thin handlers, one resource family per module (http_limits: rate limits and
                        model allow-lists of proxy/ratelimit.py and proxy/access.py)
    roles.py            the roles and their permissions
    credentials.py      admin keys (hashed in the config log), the owner key, first-start bootstrap
    oidc.py             optional JWT bearer tokens from a company IdP (joserfc)
    entities.py         orgs, workspaces, users, keys as config records (pure)
    budget_ops.py       budgets/defaults/exceptions from JSON, and who may write which scope (pure)
    increase.py         budget-increase requests and time-boxed raises (pure)
    apply.py            config as code: desired records, diff, plan (pure)
    audit.py            the audit log's filters (its entries: ledger/audit.py)

Every change is a ``ConfigRecord`` appended to the config log with ``actor``
(the admin) and ``reason``; every proxy follows the log. docs/governance.md
tells the whole story; docs/admin-openapi.yaml specifies the HTTP surface.
"""
from llmgw.ledger.audit import audit_entries

__all__ = ["audit_entries"]
