"""Request parsing shared by the adapters: parse once, keep the bytes."""
from __future__ import annotations

from typing import Any

import orjson

from ledger.events import normalize_tags

from ..errors import BadRequest


def parse_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise BadRequest("request body is empty; expected a JSON object")
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise BadRequest("request body must be a JSON object")
    return obj


def require_model(obj: dict[str, Any]) -> str:
    model = obj.get("model")
    if not isinstance(model, str) or not model.strip():
        raise BadRequest("`model` is required and must be a non-empty string")
    return model


def optional_int(obj: dict[str, Any], *names: str) -> int | None:
    for name in names:
        v = obj.get(name)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise BadRequest(f"`{name}` must be a non-negative integer")
        return v
    return None


def optional_bool(obj: dict[str, Any], name: str) -> bool:
    """A flag the gateway acts on (``stream``): true, false or absent, nothing a provider might coerce."""
    v = obj.get(name)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise BadRequest(f"`{name}` must be true or false")
    return v


def take_metadata_tags(obj: dict[str, Any], string_values_are_tags: bool) -> tuple[tuple[str, ...], bool]:
    """Tags from ``metadata``: LiteLLM-style ``metadata.tags`` (a list, removed
    before forwarding because providers reject it) and, for OpenAI, plain
    string entries (forwarded: the provider accepts them).

    Returns the tags and whether the body was changed.
    """
    meta = obj.get("metadata")
    if meta is None:
        return (), False
    if not isinstance(meta, dict):
        raise BadRequest("`metadata` must be an object")
    tags: list[str] = []
    changed = False
    if "tags" in meta and not isinstance(meta.get("tags"), str):
        raw = meta.pop("tags")
        changed = True
        if isinstance(raw, list):
            tags.extend(str(t) for t in raw if isinstance(t, (str, int)))
        if not meta:
            obj.pop("metadata")
    if string_values_are_tags:
        tags.extend(f"{k}:{v}" for k, v in meta.items() if isinstance(v, str) and k != "user_id")
    return normalize_tags(tags), changed


def count_url_images(messages: Any) -> int:
    """Images passed by URL cost tokens the body's bytes do not show."""
    n = 0
    if not isinstance(messages, list):
        return 0
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if not isinstance(content, list):
            continue
        for block in content:
            if not isinstance(block, dict):
                continue
            t = block.get("type")
            if t == "image" and isinstance(block.get("source"), dict) and block["source"].get("type") == "url":
                n += 1
            elif t in ("image_url", "input_image"):
                n += 1
    return n


def has_web_search(tools: Any) -> bool:
    return isinstance(tools, list) and any(
        isinstance(t, dict) and str(t.get("type", "")).startswith("web_search") for t in tools)


def int_of(d: Any, *path: str) -> int:
    for p in path:
        if not isinstance(d, dict):
            return 0
        d = d.get(p)
    return d if isinstance(d, int) and not isinstance(d, bool) else 0
