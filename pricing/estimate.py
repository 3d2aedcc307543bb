"""What a call may cost before it is made: the amounts a reservation holds.

``worst_case`` is the proven bound (a ``strict`` budget's hold); ``predicted``
is the hold of a ``predicted`` budget: the tokens that calls like this one
really used, priced, and never above the worst case.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal, localcontext

from llmgw.core.events import Tokens
from llmgw.pricing.cost import MONEY_CONTEXT, WEB_SEARCH, cost, fee_exact, int_rates
from llmgw.pricing.price import STANDARD_TIERS, Price

# Tokens a provider adds to a request that are not in its body. Tallied from the
# providers' published figures: Anthropic's tool-use system prompt (up to ~935
# tokens depending on model and tool_choice), its computer-use system prompt and
# tool definition (~500 + 735), text editor (~700) and bash (~245) tool
# definitions; OpenAI's per-message framing (3-4 tokens a message) is smaller
# than the JSON punctuation of that message, so the body already covers it.
INJECTED_TOKENS_ALLOWANCE = 4_096

# Tokens per image when the entry does not say (``max_image_tokens``). Covers
# OpenAI's tile models (85 + 170 x 8 tiles = 1,445 for gpt-4o/gpt-4.1), its patch
# models (1,536 patches x up to 2.46 = 3,779) and Anthropic (~1,600). gpt-4o-mini
# (2,833 + 5,667 x 8 = 48,169) carries its own figure in the catalog.
DEFAULT_IMAGE_TOKENS = 6_000

# Server-side web search: results come back into the prompt without passing
# through the request body, so their tokens and the per-search fee are an
# ALLOWANCE, not a proof: uses default to Anthropic's documented ``max_uses``
# when the proxy passes it, else this many, each adding this many prompt tokens.
WEB_SEARCH_DEFAULT_USES = 5
WEB_SEARCH_TOKENS_PER_USE = 25_000

# A predicted hold with nothing observed yet (a new key, a model it never used): every
# prompt token bound (body bytes + allowance, 3-4x the real count for text) at the
# input rate, and this much output per completion (capped by the request's limit).
COLD_OUTPUT_TOKENS = 4_096

# Never chosen by the provider on its own: a request must name them (ultrafast is per request,
# never a project default; regional is the endpoint a Bedrock call names), so a request that names
# no tier is not held at their rates.
_OPT_IN_TIERS = frozenset({"flex", "batch", "ultrafast", "regional"})


@dataclass(frozen=True, slots=True)
class CallProfile:
    """What recent calls like this one used, as rates a new call is scaled by: prompt tokens of
    each kind (input, 5-minute write, 1-hour write, cache read) per million body bytes, and output
    tokens per completion. Built by the proxy from observed usage (``proxy/holds.py``)."""

    input_ppm: int
    cache_write_5m_ppm: int
    cache_write_1h_ppm: int
    cache_read_ppm: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class RequestShape:
    """What the proxy knows about a request before forwarding it.

    ``body_bytes``: length of the DECODED request body (after any Content-Encoding).
    ``image_count``: image parts in the request, by URL or inline (tiny inline
    images can cost more tokens than their bytes). ``n``: completions requested
    (OpenAI's ``n``). ``web_search_max_uses``: the web search tool's ``max_uses``
    when the request sets one.
    """

    body_bytes: int
    max_output_tokens: int | None
    service_tier: str | None = None
    image_count: int = 0
    web_search: bool = False
    web_search_max_uses: int | None = None
    n: int = 1

    def __post_init__(self) -> None:
        counts = (self.body_bytes, self.max_output_tokens or 0, self.image_count, self.web_search_max_uses or 0)
        if min(counts) < 0 or self.n < 1:
            raise ValueError(f"invalid request shape {self!r}")


def prompt_bound(price: Price, shape: RequestShape) -> int:
    """Upper bound on prompt tokens (input + cache writes + cache reads) the call can be billed for."""
    per_image = price.max_image_tokens or DEFAULT_IMAGE_TOKENS
    bound = shape.body_bytes + INJECTED_TOKENS_ALLOWANCE + shape.image_count * per_image
    if shape.web_search:
        bound += web_search_uses(shape) * WEB_SEARCH_TOKENS_PER_USE
    elif price.context_window is not None and price.mode == "chat":    # an embedding request holds many inputs
        bound = min(bound, price.context_window)
    return bound


def output_bound(price: Price, shape: RequestShape) -> int:
    """Upper bound on output tokens (visible + reasoning) across all ``n`` completions."""
    if price.mode == "embedding":
        return 0
    limit = shape.max_output_tokens
    if limit is None:
        limit = price.max_output_tokens or price.context_window
    if limit is None:
        raise ValueError(f"{price.version} has no max_output_tokens or context_window and the request sets no limit")
    return max(shape.n, 1) * limit


def web_search_uses(shape: RequestShape) -> int:
    if not shape.web_search:
        return 0
    return shape.web_search_max_uses if shape.web_search_max_uses is not None else WEB_SEARCH_DEFAULT_USES


def candidate_tiers(price: Price, service_tier: str | None) -> list[str | None]:
    """Tiers the call may end up billed at.

    An explicit standard tier or a tier this entry lists is taken at its word.
    ``None``, ``auto`` or a name the entry does not know may be served at the
    project's default tier, which can be ``priority``: every tier the provider
    can pick on its own is a candidate (flex and batch are opt-in only).
    """
    if service_tier in STANDARD_TIERS or (service_tier is not None and price.tier(service_tier)):
        return [service_tier]
    return [None, *(t.name for t in price.service_tiers if t.name not in _OPT_IN_TIERS)]


def worst_case(price: Price, shape: RequestShape) -> int:
    """Micro-USD the call can cost at most (rounded up). Never below ``cost()`` of the same call.

    The bound, piece by piece:

    * Prompt tokens <= decoded body bytes + ``INJECTED_TOKENS_ALLOWANCE`` +
      images x per-image tokens. Both providers tokenize with byte-level BPE,
      where every token covers at least one byte of text, and the text the
      model reads is a subset of the JSON body (escapes only lengthen the JSON;
      token-id arrays spend at least 2 bytes a token). Provider framing per
      message is smaller than that message's JSON punctuation; what providers
      inject beyond the body (tool-use system prompts, built-in tool
      definitions) is the allowance. An image costs tokens by its pixel size,
      not its bytes, so every image adds the model's per-image maximum.
    * Without web search, a chat prompt is also capped by the context window
      (a longer prompt is refused, not billed). Embeddings are not capped: their
      limit is per input and one request carries many inputs. The catalog's ``context_window``
      is the largest the model accepts (1M for the Sonnet 4 family in beta),
      and an import never lowers it.
    * Every prompt token is priced at the dearest prompt rate (max of input,
      5-minute write, 1-hour write, cache read), since we cannot know which
      tokens will be cached.
    * Output <= ``n`` x ``max_output_tokens`` (both providers count reasoning
      inside that limit), or the model's output limit when the request sets
      none, priced at max(output, reasoning) rates.
    * If the prompt bound exceeds the long-context threshold, the real prompt
      may fall on either side, so both tiers are priced and the larger taken.
    * Service tier: see ``candidate_tiers``; the dearest candidate is taken.
    * Web search adds ``uses`` x (fee + ``WEB_SEARCH_TOKENS_PER_USE`` prompt
      tokens). This part is an allowance: results enter the prompt server-side.

    Not covered (the caller must add them to the shape): PDF pages (count each
    page as an image), OpenAI predicted outputs (rejected prediction tokens are
    billed as output: add the prediction's bytes to ``max_output_tokens``).
    Compressed bodies must be measured after decoding.
    """
    prompt = prompt_bound(price, shape)
    if not shape.web_search:                # integer rates (cost.IntRates): the same bound, exactly
        rates = _worst_rates(price, shape.service_tier, price.is_long_context(prompt))
        if rates is not None:
            output = output_bound(price, shape)
            return max(-(-(prompt_max * prompt + completion_max * output) // scale)
                       for prompt_max, completion_max, scale in rates)
    return worst_case_exact(price, shape)


def worst_case_exact(price: Price, shape: RequestShape) -> int:
    """``worst_case`` in Decimal arithmetic, straight from the catalog's rates: the reference the
    integer path must equal (``tests/test_pricing_cost.py``), and the path of a web search call."""
    prompt = prompt_bound(price, shape)
    output = output_bound(price, shape)
    prompts = {prompt}
    if price.long_context is not None and prompt > price.long_context.above_prompt_tokens:
        prompts.add(price.long_context.above_prompt_tokens)   # priced at the base tier
    uses = web_search_uses(shape)
    tiers = candidate_tiers(price, shape.service_tier)
    with localcontext(MONEY_CONTEXT):
        fees = fee_exact(price, WEB_SEARCH, uses) if uses else Decimal(0)
        worst = max(
            rates.prompt_max * prompt + rates.completion_max * output
            for tier in tiers
            for rates in (price.rates_for(p, tier) for p in prompts)
        )
        return int((worst + fees).to_integral_value(rounding=ROUND_CEILING))


# (id(price), requested tier, long-context side) -> (price, the worst case's integer rates); see _worst_rates
_WORST_RATES: dict[tuple[int, str | None, bool], tuple[Price, tuple[tuple[int, int, int], ...] | None]] = {}


def _worst_rates(price: Price, service_tier: str | None, long: bool) -> tuple[tuple[int, int, int], ...] | None:
    """``(prompt_max, completion_max, 10**exp)`` of every rate set ``worst_case`` takes the dearest
    of (each candidate tier; on the long-context side, both sides), made once per price, tier asked
    and side; None when a rate is not a finite decimal (the Decimal path then). A tier name the
    entry does not list is served like no name (``candidate_tiers``), and is not a key: the
    name comes from the client."""
    key = (id(price), service_tier, long)
    hit = _WORST_RATES.get(key)
    if hit is not None and hit[0] is price:
        return hit[1]
    if service_tier is not None and service_tier not in STANDARD_TIERS and price.tier(service_tier) is None:
        return _worst_rates(price, None, long)
    lc = price.long_context
    sides = [0] if lc is None else ([lc.above_prompt_tokens + 1, lc.above_prompt_tokens] if long
                                    else [lc.above_prompt_tokens])
    found = [int_rates(price, p, tier) for tier in candidate_tiers(price, service_tier) for p in sides]
    made = (None if any(r is None for r in found)
            else tuple((r.prompt_max, r.completion_max, r.scale) for r in found if r is not None))
    if len(_WORST_RATES) > 65_536:          # prices are long-lived catalog entries; this bounds re-imports
        _WORST_RATES.clear()
    _WORST_RATES[key] = (price, made)
    return made


def predicted(price: Price, shape: RequestShape, profile: CallProfile | None) -> int:
    """Micro-USD a ``predicted`` hold reserves: never above ``worst_case`` (same shape).

    The profile's per-byte prompt rates times this request's body bytes, each kind priced
    at its own rate, plus images at the per-image maximum, plus the profile's output per
    completion capped by the request's output bound; the dearest candidate tier is taken
    as in ``worst_case``. Without a profile, the cold start: the whole prompt bound at the
    input rate and ``COLD_OUTPUT_TOKENS`` per completion. A call with server-side web search
    holds the worst case (its results enter the prompt unseen).

    Unlike the worst case this is NOT a bound: a call that outgrows its recent history
    costs more than it held, and the budget can overshoot by that difference
    (docs/budgets.md states and measures it).
    """
    worst = worst_case(price, shape)
    if shape.web_search:
        return worst
    bound, out_limit = prompt_bound(price, shape), output_bound(price, shape)
    if profile is None:
        tokens = Tokens(input=bound, output=min(out_limit, max(shape.n, 1) * COLD_OUTPUT_TOKENS))
    else:
        b = shape.body_bytes
        parts = [-(-ppm * b // 1_000_000) for ppm in (profile.input_ppm, profile.cache_write_5m_ppm,
                                                       profile.cache_write_1h_ppm, profile.cache_read_ppm)]
        parts[0] += shape.image_count * (price.max_image_tokens or DEFAULT_IMAGE_TOKENS)
        over = sum(parts) - bound
        for i in (3, 0, 1, 2):                   # never more prompt than the bound: trim the cheapest kinds first
            cut = min(parts[i], max(over, 0))
            parts[i] -= cut
            over -= cut
        tokens = Tokens(input=parts[0], cache_write_5m=parts[1], cache_write_1h=parts[2], cache_read=parts[3],
                        output=min(out_limit, max(shape.n, 1) * profile.output_tokens))
    held = max(cost(tokens, price, service_tier=tier).micro_usd for tier in candidate_tiers(price, shape.service_tier))
    return min(worst, held)
