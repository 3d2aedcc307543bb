"""Request parsing shared by the adapters: parse once, keep the bytes.

The gateway checks only the fields it reads itself, and the basic shape the
provider would refuse anyway (``messages`` a non-empty list of objects, ...):
a body the provider cannot take is refused here, in the client's own error
shape, before any hold is placed or any upstream round trip is spent on it.
Everything else in the body travels untouched.
"""
from __future__ import annotations

import re
from typing import Any

import orjson

from llmgw.core.events import Tokens, normalize_tags

from ..errors import BadRequest

# A meter's usage before the provider's: Tokens are immutable, so every meter starts from this one
# instead of building its own (a frozen dataclass costs a call per field to build).
NO_TOKENS = Tokens()


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


MAX_MODEL_CHARS = 256
# Every model name a provider or a router uses: gpt-4o-mini, claude-sonnet-4-5@20250929,
# accounts/fireworks/models/x, anthropic.claude-v2:1, ft:gpt-4o:org:id. Never a path trick or a control char.
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+\-]*")


def require_model(obj: dict[str, Any]) -> str:
    model = obj.get("model")
    if not isinstance(model, str) or not model.strip():
        raise BadRequest("`model` is required and must be a non-empty string")
    # A name starts with a letter or digit (_MODEL): only one with a slash can hold a bad path segment.
    if (len(model) > MAX_MODEL_CHARS or not _MODEL.fullmatch(model)
            or ("/" in model and any(part in ("", ".", "..") for part in model.split("/")))):
        shown = model if len(model) <= 80 else model[:80] + "..."
        raise BadRequest(f"`model` {shown!r} is not a model name: use letters, digits and . _ - : / @ + "
                         f"(at most {MAX_MODEL_CHARS} characters, no empty, `.` or `..` path segments)")
    return model


def require_messages(obj: dict[str, Any]) -> list[Any]:
    """``messages`` as both Messages and Chat Completions take it: a non-empty list of message objects."""
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise BadRequest("`messages` is required and must be a non-empty list of message objects")
    return messages


def require_positive_int(obj: dict[str, Any], name: str) -> int:
    v = obj.get(name)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise BadRequest(f"`{name}` is required and must be a positive integer")
    return v


def optional_input(obj: dict[str, Any]) -> None:
    """Responses ``input``: absent (a stored prompt, a previous response), a string, or a list of items."""
    v = obj.get("input")
    if v is None or isinstance(v, str):
        return
    if not isinstance(v, list) or not all(isinstance(item, dict) for item in v):
        raise BadRequest("`input` must be a string or a list of input item objects")


def require_embedding_input(obj: dict[str, Any]) -> None:
    """Embeddings ``input``: a non-empty string, or a non-empty list of strings or token arrays."""
    v = obj.get("input")
    if isinstance(v, str) and v:
        return
    if isinstance(v, list) and v and (all(isinstance(i, str) for i in v) or _tokens(v)
                                      or all(isinstance(i, list) and i and _tokens(i) for i in v)):
        return
    raise BadRequest("`input` is required: a non-empty string, a list of strings, or token arrays")


def _tokens(items: list[Any]) -> bool:
    return all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in items)


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
