"""Predicted holds: what recent calls of this key (or user) on this model really used.

A ``strict`` budget holds a call's worst case (``pricing.worst_case``): for an
agent that sends ``max_tokens=128000`` on every call that is dollars per call
while its calls cost cents, so a small budget refuses the first call and a
large one stops admitting far below its cap. A ``predicted`` budget holds what
calls like this one used lately (``pricing.predicted``), and the call is
settled to its real cost as always.

Per (key, model) and per (user, model) this proxy keeps the last ``SAMPLES``
successful calls as rates: prompt tokens of each kind per million body bytes
and output tokens per completion. The profile of a new call is the
``PERCENTILE``-th percentile of each rate on its own (with fewer than
100 / (100 - PERCENTILE) samples that is the largest seen). The key's own
history wins; a key that has none borrows its user's (a new key of a known
agent); neither gives the cold start of ``pricing.predicted``.

Memory only, per proxy: a restart or another proxy starts cold, which only
makes holds larger. At most ``MAX_PROFILES`` histories are kept, the least
recently updated dropped first.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from ledger.events import Tokens
from pricing import CallProfile

SAMPLES = 32
PERCENTILE = 95
MAX_PROFILES = 100_000

Sample = tuple[int, int, int, int, int]     # input, write 5m, write 1h, read (per million bytes), output


@dataclass(frozen=True, slots=True)
class Basis:
    """What a call's hold was predicted from, to learn from when it settles."""

    who: tuple[str, ...]          # history keys, most specific first: ("key:K", "user:ORG/U")
    model: str
    body_bytes: int
    completions: int = 1


class HoldPredictor:
    def __init__(self, samples: int = SAMPLES, percentile: int = PERCENTILE,
                 max_profiles: int = MAX_PROFILES) -> None:
        self.samples, self.percentile, self.max_profiles = samples, percentile, max_profiles
        self._seen: OrderedDict[tuple[str, str], deque[Sample]] = OrderedDict()

    def profile(self, who: tuple[str, ...], model: str) -> CallProfile | None:
        for w in who:
            seen = self._seen.get((w, model))
            if seen:
                return CallProfile(*(self._high(col) for col in zip(*seen)))
        return None

    def observe(self, basis: Basis, tokens: Tokens) -> None:
        """Learn from a call that completed normally (a cancelled or failed call says
        nothing about how long this agent's answers are)."""
        b = max(basis.body_bytes, 1)
        sample = (tokens.input * 1_000_000 // b, tokens.cache_write_5m * 1_000_000 // b,
                  tokens.cache_write_1h * 1_000_000 // b, tokens.cache_read * 1_000_000 // b,
                  -(-tokens.output // max(basis.completions, 1)))
        for w in basis.who:
            k = (w, basis.model)
            seen = self._seen.get(k)
            if seen is None:
                seen = self._seen[k] = deque(maxlen=self.samples)
                while len(self._seen) > self.max_profiles:
                    self._seen.popitem(last=False)
            else:
                self._seen.move_to_end(k)
            seen.append(sample)

    def _high(self, column: tuple[int, ...]) -> int:
        ordered = sorted(column)
        rank = -(-len(ordered) * self.percentile // 100)          # nearest-rank percentile
        return ordered[max(rank, 1) - 1]
