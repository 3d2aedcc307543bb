"""Errors the gateway itself returns.

    GatewayError (status, kind)
    ├── BadRequest            400 invalid_request   malformed body, missing model
    │   └── BodyTooLarge      413
    ├── AuthError             401 auth              no key, unknown, revoked or expired key
    ├── PolicyDenied          403 policy            model not allowed for this key/user/workspace
    ├── NotFound              404 not_found         unknown route or unknown model
    ├── BudgetExceeded        429 budget            a budget would go over its cap
    ├── RateLimited           429 rate              RPM/TPM window full
    ├── LedgerUnavailable     503 unavailable       fail-closed while the ledger is unreachable
    └── UpstreamError         502 upstream          provider unreachable
        ├── UpstreamTimeout   504
        └── UpstreamUnreachable                     no response began (a route may fail over)

Each adapter renders these in its own wire's shape (``adapters/*.error_body``);
only the edge (the middleware, or the relay once headers are sent) renders.
"""
from __future__ import annotations


class GatewayError(Exception):
    status = 500
    kind = "internal"
    # Clients built on the official SDKs honour this header: a refusal that
    # waiting will not fix must not be retried for minutes.
    should_retry: bool | None = None

    def __init__(self, message: str, *, retry_after_s: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s
        self.headers = dict(headers or {})

    def response_headers(self) -> dict[str, str]:
        h = dict(self.headers)
        if self.retry_after_s is not None:
            h["retry-after"] = str(self.retry_after_s)
        if self.should_retry is not None:
            h["x-should-retry"] = "true" if self.should_retry else "false"
        return h


class BadRequest(GatewayError):
    status, kind, should_retry = 400, "invalid_request", False


class BodyTooLarge(BadRequest):
    status = 413


class AuthError(GatewayError):
    status, kind, should_retry = 401, "auth", False


class PolicyDenied(GatewayError):
    status, kind, should_retry = 403, "policy", False


class NotFound(GatewayError):
    status, kind, should_retry = 404, "not_found", False


class BudgetExceeded(GatewayError):
    status, kind = 429, "budget"

    def __init__(self, message: str, *, retry_after_s: int, retry_pointless: bool,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message, retry_after_s=retry_after_s, headers=headers)
        self.should_retry = not retry_pointless


class RateLimited(GatewayError):
    status, kind, should_retry = 429, "rate", True


class LedgerUnavailable(GatewayError):
    status, kind, should_retry = 503, "unavailable", True


class UpstreamError(GatewayError):
    status, kind = 502, "upstream"


class UpstreamTimeout(UpstreamError):
    status = 504


class UpstreamUnreachable(UpstreamError):
    """No response at all: no connection, or the connection closed before any response header.
    The provider served nothing, so another upstream of the route may take the call."""
