"""Read LiteLLM's ``model_prices_and_context_window.json`` into entries of our format.

LiteLLM gives USD per token as JSON numbers (``3e-06``). The file is parsed with
``parse_float=Decimal`` so each number keeps the exact digits written in the file,
then moved to USD per million tokens and quantized to 1e-6 USD/MTok (1e-12 USD a
token), which drops binary-float debris such as ``1.2500000000000002e-06``.

Only token-priced text models are read (``mode`` chat, completion, responses,
embedding). The result is a partial entry per model: only the fields LiteLLM
states, so an import overlays them on the entry already in force and keeps
everything LiteLLM does not know (aliases, patterns, fees, tiers it omits).
"""
from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Mapping

_MODES = {"chat": "chat", "completion": "chat", "responses": "chat", "embedding": "embedding"}
_PROVIDERS = {"text-completion-openai": "openai"}
_QUANTUM = Decimal("0.000001")
_ABOVE = re.compile(r"^input_cost_per_token_above_(\d+)k_tokens$")

# LiteLLM field -> our rate field, for the base, long-context (suffix) and tier (suffix) variants.
_BASE = {
    "input_cost_per_token": "input",
    "output_cost_per_token": "output",
    "cache_creation_input_token_cost": "cache_write_5m",
    "cache_creation_input_token_cost_above_1hr": "cache_write_1h",
    "cache_read_input_token_cost": "cache_read",
    "output_cost_per_reasoning_token": "reasoning",
}
_TIERS = {"flex": "_flex", "priority": "_priority", "batch": "_batches"}


def parse(data: bytes | str) -> dict[str, object]:
    doc = json.loads(data, parse_float=Decimal)
    if not isinstance(doc, dict):
        raise ValueError("a LiteLLM price file is a JSON object of model name -> fields")
    return doc


def per_mtok(value: object) -> str | None:
    """USD per token (a Decimal or int from the file) -> USD per million tokens as a plain string."""
    if isinstance(value, bool) or not isinstance(value, (Decimal, int)):
        return None
    d = (Decimal(value).scaleb(6)).quantize(_QUANTUM).normalize()
    return "0" if d == 0 else format(d, "f")


def _rates(raw: Mapping[str, object], suffix: str) -> dict[str, str]:
    out = {}
    for field, ours in _BASE.items():
        value = per_mtok(raw.get(field + suffix))
        if value is not None:
            out[ours] = value
    return out


def entry_from_litellm(name: str, raw: Mapping[str, object]) -> dict[str, object] | None:
    """One partial entry of our format, or None when the model is not token-priced text."""
    mode = _MODES.get(str(raw.get("mode", "")))
    if mode is None or per_mtok(raw.get("input_cost_per_token")) is None:
        return None
    provider = str(raw.get("litellm_provider", "")) or "unknown"
    provider = _PROVIDERS.get(provider, provider)
    model = name.split("/", 1)[1] if name.startswith(provider + "/") else name
    entry: dict[str, object] = {"provider": provider, "model": model, "mode": mode,
                                "usd_per_mtok": _rates(raw, "")}
    thresholds = sorted(int(m.group(1)) for k in raw if (m := _ABOVE.match(k)))
    if thresholds:
        k = thresholds[0]   # one tier is modelled: the first threshold
        long = _rates(raw, f"_above_{k}k_tokens")
        one_hour = per_mtok(raw.get(f"cache_creation_input_token_cost_above_1hr_above_{k}k_tokens"))
        if one_hour is not None:
            long["cache_write_1h"] = one_hour
        if "output" in long:
            entry["long_context"] = {"above_prompt_tokens": k * 1000, "usd_per_mtok": long}
    tiers: dict[str, object] = {}
    for tier, suffix in _TIERS.items():
        rates = _rates(raw, suffix)
        if "input" in rates and ("output" in rates or mode == "embedding"):
            tiers[tier] = {"usd_per_mtok": rates}
    if tiers:
        entry["service_tiers"] = tiers
    for field, ours in (("max_input_tokens", "context_window"), ("max_output_tokens", "max_output_tokens")):
        if mode == "embedding":
            break       # an embedding limit is per input, and one request embeds many inputs
        value = raw.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            entry[ours] = value
    return entry


def entries_from_litellm(doc: Mapping[str, object]) -> list[dict[str, object]]:
    out = []
    for name, raw in doc.items():
        if name == "sample_spec" or not isinstance(raw, Mapping):
            continue
        entry = entry_from_litellm(name, raw)
        if entry is not None:
            out.append(entry)
    return out
