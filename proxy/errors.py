"""Errors the gateway itself returns.

    GatewayError (status, kind)
    ├── BadRequest            400 invalid_request   malformed body, missing model
    │   ├── BodyTooLarge      413
    │   ├── UnreadableBody    400                   Content-Encoding the body does not have; closes the connection
    │   └── HeaderTooLarge    431                   one header over 8 KiB
    ├── AuthError             401 auth              no key, unknown, revoked or expired key
    ├── PolicyDenied          403 policy            model not allowed for this key/user/workspace
    ├── NotFound              404 not_found         unknown model
    │   └── NoRoute           404 no_route          no such path on the gateway
    ├── BudgetExceeded        429 budget            a budget would go over its cap
    ├── RateLimited           429 rate              RPM/TPM window full
    ├── LedgerUnavailable     503 unavailable       fail-closed while the ledger is unreachable
    └── UpstreamError         502 upstream          provider unreachable
        ├── UpstreamTimeout   504
        └── UpstreamUnreachable                     no response began (a route may fail over)

Each adapter renders these in its own wire's shape (``adapters/*.error_body``), and only the edge
renders: the middleware (``app.py``) before any byte of a response, and the Responses WebSocket as an
``error`` frame (``websocket.py``). Nothing is rendered into an HTTP response once it has begun: an
upstream that breaks mid-stream ends the client's stream where it broke (``forward.Relay``).
"""
from __future__ import annotations


class GatewayError(Exception):
    status = 500
    kind = "internal"
    # Clients built on the official SDKs honour this header: a refusal that
    # waiting will not fix must not be retried for minutes.
    should_retry: bool | None = None
    # The rest of the request cannot be framed (its body could not be decoded): answer, then close.
    close_connection = False
    # A refusal that lasts until a window resets: when (epoch s) and what ran out, in one line.
    resets_at_s: int | None = None
    summary: str = ""
    # The client as the edge recognised it ("codex"): some clients show only a shape of their own.
    client: str = ""

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
        if self.client == "codex" and self.codex_final:
            # Codex prints "You've hit your usage limit. {this}, or try again at {resets_at}."
            h["x-codex-promo-message"] = self.summary.encode("ascii", "replace").decode()
        return h

    @property
    def codex_final(self) -> bool:
        """A 429 no retry short of a reset can pass: Codex's own usage-limit shape fits it."""
        return self.status == 429 and self.should_retry is False and bool(self.summary)


class BadRequest(GatewayError):
    status, kind, should_retry = 400, "invalid_request", False


class BodyTooLarge(BadRequest):
    status = 413


class UnreadableBody(BadRequest):
    """The body is not what its headers say (``Content-Encoding: gzip`` that is not gzip)."""

    close_connection = True


class HeaderTooLarge(BadRequest):
    """One header longer than any client sends: answered, not reset (see ``proxy/app.py``)."""

    status = 431


class AuthError(GatewayError):
    status, kind, should_retry = 401, "auth", False


class PolicyDenied(GatewayError):
    status, kind, should_retry = 403, "policy", False


class NotFound(GatewayError):
    status, kind, should_retry = 404, "not_found", False


class NoRoute(NotFound):
    """The path is none of the gateway's (a typo'd base URL), not a model the upstream lacks."""

    kind = "no_route"


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
