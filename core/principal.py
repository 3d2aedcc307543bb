"""Who is calling, as an API key resolves it (``proxy.keys``): every layer reads it, so it lives here."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the attribution every event and budget check uses."""

    key_id: str
    org: str
    workspace: str
    user: str
    tags: tuple[str, ...] = ()
    allowed_models: tuple[str, ...] = ()     # glob patterns; empty means any
    expires_ms: int = 0                      # 0: never

    def entity(self, kind: str) -> str:
        """The entity a scope kind names for this caller, org-qualified as spend keys are."""
        if kind == "org":
            return self.org
        if kind == "workspace":
            return f"{self.org}/{self.workspace}"
        if kind == "user":
            return f"{self.org}/{self.user}"
        return self.key_id
