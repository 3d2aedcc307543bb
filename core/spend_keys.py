"""What spend counts against: a spend key is ``"dim|entity|window|start_ms"``, e.g.
``"user|acme/alice|day|1764028800000"``. Entities are scoped by organization because
user and workspace names are only unique inside one."""
from __future__ import annotations

ORG, WORKSPACE, USER, KEY, TAG, WORKSPACE_TAG, USER_TAG = (
    "org", "workspace", "user", "key", "tag", "workspace.tag", "user.tag")
DIMENSIONS = (ORG, WORKSPACE, USER, KEY, TAG, WORKSPACE_TAG, USER_TAG)

# Tag names that become budget dimensions. Other tags are kept on the event
# for analytics only: folding every free-form tag would grow state unbounded.
BUDGET_TAGS = frozenset({"project"})


def spend_key(dim: str, entity: str, window: str, start_ms: int) -> str:
    return f"{dim}|{entity}|{window}|{start_ms}"


def parse_spend_key(key: str) -> tuple[str, str, str, int]:
    dim, rest = key.split("|", 1)
    entity, window, start = rest.rsplit("|", 2)
    return dim, entity, window, int(start)
