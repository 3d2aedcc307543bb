"""Exact cost of one call: token counts times dated rates, rounded once to integer nano-USD.

USD per million tokens times tokens is micro-USD, exactly, in Decimal; times 1,000
it is nano-USD. The sum of every part (tokens and per-request fees) is rounded
once, half to even, to the nano at the very end; no part is rounded on its own
and no float is ever involved. Nano, not micro: a 12-token embedding at
$0.02/Mtok is 0.24 micro-USD, which rounded to the micro was $0 per call.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext

from llmgw.core.events import NANO_PER_MICRO, Tokens, micro_of_nano
from llmgw.pricing.price import STANDARD_TIERS, Price, Rates

# Wide enough that no product or sum of catalog decimals and token counts is ever
# rounded before the final quantize (28 digits, the default, would also do; this
# removes the question).
MONEY_CONTEXT = Context(prec=60)
WEB_SEARCH = "web_search"
_ONE = Decimal(1)


@dataclass(frozen=True, slots=True)
class Cost:
    nano_usd: int
    price_version: str
    # The call was served at a tier this entry has no rates for (fast mode on a model whose fast
    # price is not in the catalog, flex on an entry without flex): billed at base rates, which
    # is a guess, so the event says so (``cost_estimated``) instead of looking exact.
    tier_unpriced: bool = False

    @property
    def micro_usd(self) -> int:
        """Micro-USD, rounded up from the nanos (``core.events.micro_of_nano``)."""
        return micro_of_nano(self.nano_usd)


def tier_name(service_tier: str | None, batch: bool) -> str | None:
    """The tier a call is billed at. ``batch`` is the tier named ``batch``."""
    if not batch:
        return service_tier
    if service_tier not in (None, "auto", "batch") and service_tier not in STANDARD_TIERS:
        raise ValueError(f"a batch call cannot also use service tier {service_tier!r}")
    return "batch"


def token_cost_exact(tokens: Tokens, rates: Rates) -> Decimal:
    """Micro-USD, unrounded. ``tokens.input`` excludes cache reads/writes; reasoning is part of output."""
    with localcontext(MONEY_CONTEXT):
        exact = (rates.input * tokens.input
                 + rates.cache_write_5m * tokens.cache_write_5m
                 + rates.cache_write_1h * tokens.cache_write_1h
                 + rates.cache_read * tokens.cache_read)
        if rates.reasoning is None:
            exact += rates.output * tokens.output
        else:
            exact += rates.output * (tokens.output - tokens.reasoning) + rates.reasoning * tokens.reasoning
        return exact


def fee_exact(price: Price, name: str, calls: int) -> Decimal:
    """Micro-USD for ``calls`` requests of a per-1k-requests fee: USD/1k x calls x 1e6 / 1e3."""
    if calls == 0:
        return Decimal(0)
    per_1k = price.fee_usd_per_1k(name)
    if per_1k is None:
        raise ValueError(f"{price.version} has no '{name}' fee but the call made {calls} such request(s); "
                         f"add usd_per_1k_requests.{name} to the entry")
    with localcontext(MONEY_CONTEXT):
        return per_1k * calls * 1000


def round_nano(exact_micro: Decimal) -> int:
    """Exact micro-USD to integer nano-USD, half to even: the one rounding of a call's cost."""
    with localcontext(MONEY_CONTEXT):
        return int((exact_micro * NANO_PER_MICRO).quantize(_ONE, rounding=ROUND_HALF_EVEN))


class IntRates:
    """One ``Rates`` as integers over ``10**exp`` (micro-USD per token), for the hot path.

    Every catalog rate is a finite decimal, so each is exactly ``m / 10**exp`` with ``exp`` the
    most decimal places any of them has: the sums ``cost`` and ``worst_case`` take are then exact
    integer arithmetic, equal to the Decimal ones (``token_cost_exact``), with no context to enter
    and no Decimal built per call. ``tests/test_pricing_cost.py`` checks both agree on every
    catalog entry and tier."""

    __slots__ = ("exp", "input", "output", "cache_write_5m", "cache_write_1h", "cache_read", "reasoning",
                 "prompt_max", "completion_max", "scale", "nano_mul", "nano_den")
    exp: int
    scale: int                  # 10**exp
    nano_mul: int               # micro x 1000 / 10**exp as a product (exp <= 3) ...
    nano_den: int               # ... or a quotient (exp > 3)
    input: int
    output: int
    cache_write_5m: int
    cache_write_1h: int
    cache_read: int
    reasoning: int | None
    prompt_max: int
    completion_max: int

    def __init__(self, rates: Rates) -> None:
        values = (rates.input, rates.output, rates.cache_write_5m, rates.cache_write_1h, rates.cache_read,
                  rates.reasoning if rates.reasoning is not None else Decimal(0))
        exp = max(0, *(-int(v.as_tuple().exponent) for v in values))
        self.exp, self.scale = exp, 10 ** exp
        self.nano_mul, self.nano_den = (10 ** (3 - exp), 1) if exp <= 3 else (1, 10 ** (exp - 3))
        (self.input, self.output, self.cache_write_5m, self.cache_write_1h, self.cache_read,
         reasoning) = (int(v.scaleb(exp, MONEY_CONTEXT)) for v in values)
        self.reasoning = None if rates.reasoning is None else reasoning
        self.prompt_max = max(self.input, self.cache_write_5m, self.cache_write_1h, self.cache_read)
        self.completion_max = self.output if self.reasoning is None else max(self.output, self.reasoning)

    def tokens_scaled(self, tokens: Tokens) -> int:
        """Micro-USD of ``tokens`` times ``10**exp`` (exact): ``token_cost_exact`` as an integer."""
        total = (self.input * tokens.input + self.cache_write_5m * tokens.cache_write_5m
                 + self.cache_write_1h * tokens.cache_write_1h + self.cache_read * tokens.cache_read)
        if self.reasoning is None:
            return total + self.output * tokens.output
        return total + self.output * (tokens.output - tokens.reasoning) + self.reasoning * tokens.reasoning

    def nano(self, scaled_micro: int) -> int:
        """``scaled_micro / 10**exp`` micro-USD in nano-USD, rounded half to even (``round_nano``)."""
        den = self.nano_den
        if den == 1:
            return scaled_micro * self.nano_mul
        q, r = divmod(scaled_micro, den)
        return q + 1 if 2 * r > den or (2 * r == den and q % 2) else q

    def micro_ceiling(self, scaled_micro: int) -> int:
        """``scaled_micro / 10**exp`` micro-USD rounded up to whole micro-USD."""
        return -(-scaled_micro // self.scale)


_INT_RATES: dict[tuple[int, bool, str | None], tuple[Price, IntRates | None]] = {}


def int_rates(price: Price, prompt_tokens: int, tier: str | None) -> IntRates | None:
    """``price.rates_for(prompt_tokens, tier)`` as ``IntRates``, made once per price, context side and
    tier (None for a rate that is not a finite decimal: the caller takes the Decimal path)."""
    key = (id(price), price.is_long_context(prompt_tokens), tier)
    hit = _INT_RATES.get(key)
    if hit is not None and hit[0] is price:
        return hit[1]
    rates = price.rates_for(prompt_tokens, tier)
    finite = all(v.is_finite() for v in (rates.input, rates.output, rates.cache_write_5m, rates.cache_write_1h,
                                         rates.cache_read) + ((rates.reasoning,) if rates.reasoning is not None else ()))
    made = IntRates(rates) if finite else None
    if len(_INT_RATES) > 65_536:            # prices are long-lived catalog entries; this bounds re-imports
        _INT_RATES.clear()
    _INT_RATES[key] = (price, made)
    return made


def _check(tokens: Tokens) -> None:
    for name in ("input", "cache_write_5m", "cache_write_1h", "cache_read", "output", "reasoning"):
        if getattr(tokens, name) < 0:
            raise ValueError(f"negative token count {name}={getattr(tokens, name)}")
    if tokens.reasoning > tokens.output:
        raise ValueError(f"reasoning ({tokens.reasoning}) is part of output ({tokens.output}) and cannot exceed it")


def cost(tokens: Tokens, price: Price, *, service_tier: str | None = None, batch: bool = False,
         web_search_calls: int = 0) -> Cost:
    """The exact cost of one call, rounded once (half to even) to integer nano-USD.

    Long-context rates apply to the whole request when ``tokens.prompt`` (input +
    cache writes + cache reads) exceeds the entry's threshold. ``service_tier`` is
    the tier the provider reports it served (``flex``, ``priority``, Anthropic's
    ``batch``...); a tier this entry lists no rates for is billed at base rates.
    ``batch`` selects the ``batch`` tier. Per-request fees are not discounted by tiers.
    Base rates for a tier the entry does not list are a guess: ``tier_unpriced`` says so.
    """
    _check(tokens)
    if web_search_calls < 0:
        raise ValueError("web_search_calls must be >= 0")
    tier = tier_name(service_tier, batch)
    unpriced = tier not in (None, "auto") and tier not in STANDARD_TIERS and price.tier(tier) is None
    fast = int_rates(price, tokens.prompt, tier) if not web_search_calls else None
    if fast is not None:
        return Cost(fast.nano(fast.tokens_scaled(tokens)), price.version, unpriced)
    rates = price.rates_for(tokens.prompt, tier)
    with localcontext(MONEY_CONTEXT):
        exact = token_cost_exact(tokens, rates) + fee_exact(price, WEB_SEARCH, web_search_calls)
    return Cost(round_nano(exact), price.version, unpriced)
