"""One price version of one model: frozen values built from the catalog's decimal strings.

Every rate is a ``Decimal`` of USD per million tokens, built from a string (never
from a float). USD per million tokens times a token count is exactly micro-USD,
which is why the cost arithmetic needs no scaling factor.

Named constructors, not ``Price(**row)``: ``Price.from_entry`` reads one entry of
our JSON format (``docs/pricing.md``) and fills documented defaults, and
``Price.to_entry`` writes it back, so the class never copies the file layout.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import Mapping

import orjson

from llmgw.pricing.instant import format_instant, parse_instant_ms, version_stamp

MODES = ("chat", "embedding")
STANDARD_TIERS = frozenset({"", "default", "standard", "standard_only"})  # billed at base rates
RATE_FIELDS = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read", "reasoning")
_NEVER_LOWER = ("context_window", "max_output_tokens")
_ENTRY_KEYS = frozenset({
    "provider", "model", "effective_from", "version", "mode", "aliases", "patterns",
    "usd_per_mtok", "long_context", "service_tiers", "usd_per_1k_requests",
    "context_window", "max_output_tokens", "max_image_tokens", "source", "note",
})


class CatalogError(ValueError):
    """A catalog or overrides entry that cannot be read: the message names the entry and field."""


def dec(text: object, where: str) -> Decimal:
    """A non-negative finite Decimal from a catalog string. Floats are refused on purpose."""
    if not isinstance(text, str):
        raise CatalogError(f"{where}: expected a decimal string, got {type(text).__name__} {text!r}")
    try:
        value = Decimal(text)
    except InvalidOperation as exc:
        raise CatalogError(f"{where}: not a decimal: {text!r}") from exc
    if not value.is_finite() or value < 0:
        raise CatalogError(f"{where}: must be finite and >= 0: {text!r}")
    return value


def dec_str(value: Decimal) -> str:
    """Shortest plain decimal string: Decimal('30.00') -> '30', Decimal('0.30') -> '0.3'."""
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def _ratio(num: Decimal, den: Decimal) -> Decimal:
    return Decimal(1) if den == 0 else num / den


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per million tokens for each way a token is billed.

    ``reasoning`` is ``None`` when reasoning tokens are billed as output (every
    shipped model); otherwise it is their own rate.
    """

    input: Decimal
    output: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal
    cache_read: Decimal
    reasoning: Decimal | None = None

    @property
    def prompt_max(self) -> Decimal:
        """The dearest rate any prompt token can be billed at (plain, cache write or read)."""
        return max(self.input, self.cache_write_5m, self.cache_write_1h, self.cache_read)

    @property
    def completion_max(self) -> Decimal:
        """The dearest rate any output token can be billed at (visible or reasoning)."""
        return self.output if self.reasoning is None else max(self.output, self.reasoning)

    def scaled(self, factor: Decimal) -> "Rates":
        return Rates(
            self.input * factor, self.output * factor, self.cache_write_5m * factor,
            self.cache_write_1h * factor, self.cache_read * factor,
            None if self.reasoning is None else self.reasoning * factor,
        )

    def stacked(self, base: "Rates", long: "Rates") -> "Rates":
        """These tier rates moved to the long-context tier by the same per-field ratio long/base."""
        def f(tier: Decimal, b: Decimal, lc: Decimal) -> Decimal:
            return tier * _ratio(lc, b)
        reasoning = None
        if self.reasoning is not None:
            reasoning = f(self.reasoning, base.reasoning or base.output, long.reasoning or long.output)
        return Rates(
            f(self.input, base.input, long.input), f(self.output, base.output, long.output),
            f(self.cache_write_5m, base.cache_write_5m, long.cache_write_5m),
            f(self.cache_write_1h, base.cache_write_1h, long.cache_write_1h),
            f(self.cache_read, base.cache_read, long.cache_read), reasoning,
        )

    @classmethod
    def from_wire(cls, raw: object, where: str, *, base: "Rates | None" = None,
                  output_optional: bool = False) -> "Rates":
        """Read ``{"input": "3", ...}``; fill what is missing.

        Without ``base`` (the model's own rates): cache writes default to the
        input rate (OpenAI charges no write premium), the 1-hour write to the
        5-minute write, cache reads to the input rate (no discount unless one is
        published), reasoning to the output rate. With ``base`` (a long-context
        tier or a service tier given as rates): a missing field is the base
        field scaled by input/base.input (output/base.output for reasoning),
        which is how Anthropic stacks its caching multipliers on long-context
        rates.
        """
        if not isinstance(raw, Mapping):
            raise CatalogError(f"{where}: expected an object of rates")
        unknown = set(raw) - set(RATE_FIELDS)
        if unknown:
            raise CatalogError(f"{where}: unknown rate field(s) {sorted(unknown)}")
        if "input" not in raw:
            raise CatalogError(f"{where}: 'input' is required")
        inp = dec(raw["input"], f"{where}.input")
        if "output" in raw:
            out = dec(raw["output"], f"{where}.output")
        elif output_optional:
            out = Decimal(0)
        else:
            raise CatalogError(f"{where}: 'output' is required")

        def get(name: str, default: Decimal) -> Decimal:
            return dec(raw[name], f"{where}.{name}") if name in raw else default

        d = cls.defaults(inp, out, base)
        cw5 = get("cache_write_5m", d["cache_write_5m"])
        cw1 = get("cache_write_1h", d["cache_write_1h"] if base else cw5)
        cr = get("cache_read", d["cache_read"])
        reasoning: Decimal | None = dec(raw["reasoning"], f"{where}.reasoning") if "reasoning" in raw else None
        if reasoning is None and base is not None and base.reasoning is not None:
            reasoning = base.reasoning * _ratio(out, base.output)
        return cls(inp, out, cw5, cw1, cr, reasoning)

    @staticmethod
    def defaults(inp: Decimal, out: Decimal, base: "Rates | None") -> dict[str, Decimal]:
        """What ``from_wire`` fills for a missing cache field (the 1-hour write follows the 5-minute one)."""
        if base is None:
            return {"cache_write_5m": inp, "cache_write_1h": inp, "cache_read": inp}
        k = _ratio(inp, base.input)
        return {"cache_write_5m": base.cache_write_5m * k, "cache_write_1h": base.cache_write_1h * k,
                "cache_read": base.cache_read * k}

    def to_wire(self, base: "Rates | None" = None, *, full: bool = True) -> dict[str, str]:
        """``{"input": "3", ...}``; with ``full=False`` the fields equal to their default are left out."""
        d = self.defaults(self.input, self.output, base)
        if base is None:
            d["cache_write_1h"] = self.cache_write_5m
        out = {"input": dec_str(self.input), "output": dec_str(self.output)}
        for name in ("cache_write_5m", "cache_write_1h", "cache_read"):
            value: Decimal = getattr(self, name)
            if full or value != d[name]:
                out[name] = dec_str(value)
        if self.reasoning is not None:
            implied = None
            if base is not None and base.reasoning is not None:
                implied = base.reasoning * _ratio(self.output, base.output)
            if full or self.reasoning != implied:
                out["reasoning"] = dec_str(self.reasoning)
        return out


@dataclass(frozen=True, slots=True)
class LongContext:
    """Rates for the WHOLE request once its prompt (input + cache writes + cache reads) exceeds the threshold."""

    above_prompt_tokens: int
    rates: Rates


@dataclass(frozen=True, slots=True)
class ServiceTier:
    """A named tier (``flex``, ``priority``, ``batch``): a multiplier on the base rates, or rates of its own."""

    name: str
    multiplier: Decimal | None = None
    rates: Rates | None = None


@dataclass(frozen=True, slots=True)
class Price:
    """One effective-dated price version of one provider's model."""

    provider: str
    model: str
    effective_from_ms: int
    rates: Rates
    version: str = ""
    mode: str = "chat"
    aliases: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    long_context: LongContext | None = None
    service_tiers: tuple[ServiceTier, ...] = ()
    fees_usd_per_1k: tuple[tuple[str, Decimal], ...] = ()
    context_window: int | None = None
    max_output_tokens: int | None = None
    max_image_tokens: int | None = None
    source: str = ""
    note: str = ""

    @property
    def key(self) -> str:
        return f"{self.provider}/{self.model}"

    @property
    def default_version(self) -> str:
        return f"{self.key}@{version_stamp(self.effective_from_ms)}"

    def tier(self, name: str | None) -> ServiceTier | None:
        for t in self.service_tiers:
            if t.name == name:
                return t
        return None

    def fee_usd_per_1k(self, name: str) -> Decimal | None:
        for fee_name, value in self.fees_usd_per_1k:
            if fee_name == name:
                return value
        return None

    def is_long_context(self, prompt_tokens: int) -> bool:
        return self.long_context is not None and prompt_tokens > self.long_context.above_prompt_tokens

    def rates_for(self, prompt_tokens: int, tier: str | None = None) -> Rates:
        """The rates one request is billed at: long-context tier first, then the service tier.

        A tier not listed for this model (``default``, ``standard``, or any name
        this entry has no rates for) is billed at the base rates.
        """
        lc = self.long_context if self.is_long_context(prompt_tokens) else None
        base = lc.rates if lc else self.rates
        t = self.tier(tier) if tier else None
        if t is None:
            return base
        if t.multiplier is not None:
            return base.scaled(t.multiplier)
        assert t.rates is not None
        return t.rates.stacked(self.rates, lc.rates) if lc else t.rates

    def semantic(self) -> dict[str, object]:
        """What the price charges, canonically: no names, dates or provenance, every rate
        spelled out, and each service tier as the rates it bills (a ``0.5`` multiplier and
        the equivalent explicit rates compare equal)."""
        entry = self.to_entry(full=True)
        for k in ("provider", "model", "effective_from", "version", "aliases", "patterns", "source", "note"):
            entry.pop(k, None)
        if self.service_tiers:
            entry["service_tiers"] = {t.name: {"usd_per_mtok": self.rates_for(0, t.name).to_wire()}
                                      for t in self.service_tiers}
        return entry

    def content_hash(self) -> str:
        return hashlib.sha256(orjson.dumps(self.semantic(), option=orjson.OPT_SORT_KEYS)).hexdigest()[:8]

    def with_version(self, version: str) -> "Price":
        return replace(self, version=version)

    # -- the JSON format ------------------------------------------------------

    @classmethod
    def from_entry(cls, raw: Mapping[str, object], where: str = "entry") -> "Price":
        unknown = set(raw) - _ENTRY_KEYS
        if unknown:
            raise CatalogError(f"{where}: unknown field(s) {sorted(unknown)}")
        provider = _req_str(raw, "provider", where)
        model = _req_str(raw, "model", where)
        where = f"{where} ({provider}/{model})"
        mode = raw.get("mode", "chat")
        if mode not in MODES:
            raise CatalogError(f"{where}: mode must be one of {MODES}, got {mode!r}")
        try:
            effective_ms = parse_instant_ms(_req_str(raw, "effective_from", where))
        except ValueError as exc:
            raise CatalogError(f"{where}: effective_from: {exc}") from exc
        rates = Rates.from_wire(raw.get("usd_per_mtok"), f"{where}.usd_per_mtok",
                                output_optional=mode == "embedding")
        price = cls(
            provider=provider, model=model, effective_from_ms=effective_ms, rates=rates,
            mode=str(mode), aliases=_str_tuple(raw, "aliases", where),
            patterns=_str_tuple(raw, "patterns", where),
            long_context=_long_context(raw.get("long_context"), rates, where),
            service_tiers=_tiers(raw.get("service_tiers"), rates, where),
            fees_usd_per_1k=_fees(raw.get("usd_per_1k_requests"), where),
            context_window=_opt_int(raw, "context_window", where),
            max_output_tokens=_opt_int(raw, "max_output_tokens", where),
            max_image_tokens=_opt_int(raw, "max_image_tokens", where),
            source=str(raw.get("source", "")), note=str(raw.get("note", "")),
        )
        version = raw.get("version")
        if version is not None and not isinstance(version, str):
            raise CatalogError(f"{where}: version must be a string")
        return price.with_version(version or price.default_version)

    def to_entry(self, *, full: bool = False) -> dict[str, object]:
        """This version as an entry of our format. ``full`` writes every filled-in rate too."""
        entry: dict[str, object] = {
            "provider": self.provider, "model": self.model,
            "effective_from": format_instant(self.effective_from_ms), "mode": self.mode,
        }
        if self.version and self.version != self.default_version:
            entry["version"] = self.version
        if self.aliases:
            entry["aliases"] = list(self.aliases)
        if self.patterns:
            entry["patterns"] = list(self.patterns)
        entry["usd_per_mtok"] = self.rates.to_wire(full=full)
        if self.long_context:
            entry["long_context"] = {"above_prompt_tokens": self.long_context.above_prompt_tokens,
                                     "usd_per_mtok": self.long_context.rates.to_wire(self.rates, full=full)}
        if self.service_tiers:
            entry["service_tiers"] = {
                t.name: ({"multiplier": dec_str(t.multiplier)} if t.multiplier is not None
                         else {"usd_per_mtok": t.rates.to_wire(self.rates, full=full) if t.rates else {}})
                for t in self.service_tiers}
        if self.fees_usd_per_1k:
            entry["usd_per_1k_requests"] = {k: dec_str(v) for k, v in self.fees_usd_per_1k}
        for name in ("context_window", "max_output_tokens", "max_image_tokens"):
            value = getattr(self, name)
            if value is not None:
                entry[name] = value
        if self.source:
            entry["source"] = self.source
        if self.note:
            entry["note"] = self.note
        return entry


def overlay(current: Mapping[str, object], incoming: Mapping[str, object], *,
            additive: bool = False) -> dict[str, object]:
    """Incoming entry fields over the current entry's; nested rate tables merge field by field.

    Both should be minimal entries (``to_entry()``): a rate equal to its default
    is absent from both, so it follows the new input rate instead of being pinned.
    ``additive`` (imports): names are unioned, and the larger ``context_window`` /
    ``max_output_tokens`` is kept, since they bound the worst-case estimate.
    Otherwise (a hand-written override) a stated list or limit replaces ours.
    Provenance (``source``, ``note``) and identity are not inherited.
    """
    merged = {k: v for k, v in current.items() if k not in ("source", "note", "version")}
    for k, v in incoming.items():
        cur = merged.get(k)
        if k in ("provider", "model"):
            continue
        if k in ("usd_per_mtok", "service_tiers", "usd_per_1k_requests") and isinstance(v, Mapping) \
                and isinstance(cur, Mapping):
            merged[k] = {**cur, **v}
        elif k == "long_context" and isinstance(v, Mapping) and isinstance(cur, Mapping) \
                and v.get("above_prompt_tokens") == cur.get("above_prompt_tokens"):
            cur_rates, new_rates = cur.get("usd_per_mtok"), v.get("usd_per_mtok")
            if isinstance(cur_rates, Mapping) and isinstance(new_rates, Mapping):
                merged[k] = {**v, "usd_per_mtok": {**cur_rates, **new_rates}}
            else:
                merged[k] = v
        elif additive and k in _NEVER_LOWER and isinstance(v, int) and isinstance(cur, int):
            merged[k] = max(cur, v)
        elif additive and k in ("aliases", "patterns") and isinstance(v, list) and isinstance(cur, list):
            merged[k] = list(dict.fromkeys([*cur, *v]))
        else:
            merged[k] = v
    return merged


def _req_str(raw: Mapping[str, object], name: str, where: str) -> str:
    value = raw.get(name)
    if not isinstance(value, str) or not value:
        raise CatalogError(f"{where}: '{name}' must be a non-empty string")
    return value


def _str_tuple(raw: Mapping[str, object], name: str, where: str) -> tuple[str, ...]:
    value = raw.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise CatalogError(f"{where}: '{name}' must be a list of non-empty strings")
    return tuple(value)


def _opt_int(raw: Mapping[str, object], name: str, where: str) -> int | None:
    value = raw.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CatalogError(f"{where}: '{name}' must be a positive integer")
    return value


def _long_context(raw: object, base: Rates, where: str) -> LongContext | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or set(raw) - {"above_prompt_tokens", "usd_per_mtok"}:
        raise CatalogError(f"{where}.long_context: expected {{above_prompt_tokens, usd_per_mtok}}")
    threshold = _opt_int(raw, "above_prompt_tokens", f"{where}.long_context")
    if threshold is None:
        raise CatalogError(f"{where}.long_context: 'above_prompt_tokens' is required")
    rates = Rates.from_wire(raw.get("usd_per_mtok"), f"{where}.long_context.usd_per_mtok", base=base)
    return LongContext(threshold, rates)


def _tiers(raw: object, base: Rates, where: str) -> tuple[ServiceTier, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise CatalogError(f"{where}.service_tiers: expected an object")
    tiers = []
    for name, spec in sorted(raw.items()):
        w = f"{where}.service_tiers.{name}"
        if name in STANDARD_TIERS or not isinstance(spec, Mapping) or len(spec) != 1:
            raise CatalogError(f"{w}: expected a non-standard tier name with one of multiplier / usd_per_mtok")
        if "multiplier" in spec:
            tiers.append(ServiceTier(name, multiplier=dec(spec["multiplier"], f"{w}.multiplier")))
        elif "usd_per_mtok" in spec:
            tiers.append(ServiceTier(name, rates=Rates.from_wire(spec["usd_per_mtok"], f"{w}.usd_per_mtok", base=base)))
        else:
            raise CatalogError(f"{w}: expected 'multiplier' or 'usd_per_mtok'")
    return tuple(tiers)


def _fees(raw: object, where: str) -> tuple[tuple[str, Decimal], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise CatalogError(f"{where}.usd_per_1k_requests: expected an object")
    return tuple(sorted((str(k), dec(v, f"{where}.usd_per_1k_requests.{k}")) for k, v in raw.items()))
