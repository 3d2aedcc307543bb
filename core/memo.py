"""``Memo``: a rule's answer worked out once per key, in a table that cannot grow without bound."""
from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Memo(dict[K, V], Generic[K, V]):
    """``rule(key)``, worked out once per key: a call's URL, a header name, a zone's minute. The same
    few keys come on every call, but keys may come from clients and providers (a path can carry a
    model name a client chose), so the table is bounded: full, it starts again."""

    __slots__ = ("rule", "bound")

    def __init__(self, rule: Callable[[K], V], bound: int = 1024) -> None:
        super().__init__()
        self.rule, self.bound = rule, bound

    def __missing__(self, key: K) -> V:
        if len(self) >= self.bound:
            self.clear()
        value = self[key] = self.rule(key)
        return value


__all__ = ["Memo"]
