"""The dated catalog: every price version ever loaded, looked up by model name and instant.

Loading order is the shipped ``pricing/data/catalog.json`` then the overrides file.
For one provider+model, the version in force at an instant is the one with the
latest ``effective_from`` at or before it; when two loaded versions share an
``effective_from``, the later-loaded one wins (an override corrects the shipped
data from that same instant). Superseded versions stay reachable by id so that an
event's ``price_version`` can always be looked up again (re-rating needs it).

Name resolution, among the versions in force at the instant:
exact model name (or ``provider/model``) > alias > glob pattern, the pattern with
the most literal characters winning. A ``provider/model`` name that matches
nothing is retried as ``model`` under that provider.
"""
from __future__ import annotations

import bisect
from fnmatch import fnmatchcase
from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator, Literal, Mapping

import orjson

from llmgw.pricing.instant import format_instant, parse_instant_ms
from llmgw.pricing.price import CatalogError, Price, overlay

FORMAT = "llmgw.prices/1"
_MEMO_LIMIT = 4096
Policy = Literal["reject", "fallback"]


class UnknownModel(LookupError):
    """No price entry matches this model at this instant. The proxy refuses the call (or uses a named fallback)."""

    def __init__(self, model: str, ts_ms: int | None = None, provider: str | None = None,
                 detail: str = "no price entry matches it") -> None:
        self.model = model
        self.ts_ms = ts_ms
        self.provider = provider
        where = f" for provider {provider!r}" if provider else ""
        when = f" at {format_instant(ts_ms)}" if ts_ms is not None else ""
        super().__init__(
            f"unknown model {model!r}{where}{when}: {detail}. Add it to the price overrides file "
            f"(`llmgw pricing import`) or configure a named fallback entry; "
            f"llmgw never prices an unknown model at zero.")


class Catalog:
    """Immutable set of price versions. Build with ``load_catalog`` or ``Catalog(prices)`` (in load order)."""

    __slots__ = ("_loaded", "_versions", "_starts", "_by_version", "_epochs", "_memo")

    def __init__(self, prices: Iterable[Price]) -> None:
        loaded: list[Price] = []
        by_version: dict[str, Price] = {}
        per_key: dict[str, dict[int, Price]] = {}
        for p in prices:
            at = per_key.setdefault(p.key, {})
            earlier = at.get(p.effective_from_ms)
            if earlier is not None and earlier.semantic() == p.semantic():
                continue                                  # the same version loaded twice
            if p.version in by_version:
                if earlier is None or earlier.version != p.version:
                    raise CatalogError(f"duplicate price version id {p.version!r}")
                p = p.with_version(f"{p.version}~{p.content_hash()}")  # a same-instant correction
            at[p.effective_from_ms] = p
            by_version[p.version] = p
            loaded.append(p)
        self._loaded = tuple(loaded)
        self._by_version = by_version
        self._versions = {k: tuple(v[t] for t in sorted(v)) for k, v in per_key.items()}
        self._starts = {k: [p.effective_from_ms for p in v] for k, v in self._versions.items()}
        # Between two consecutive effective_from instants (any entry's) the answer for a
        # name cannot change, so lookups are memoized per (name, provider, epoch): the glob
        # matching is a tenth of the proxy's CPU per call otherwise.
        self._epochs = sorted({p.effective_from_ms for p in loaded})
        self._memo: dict[tuple[str, str | None, int], Price | None] = {}

    # -- inspection -------------------------------------------------------------

    def __iter__(self) -> Iterator[Price]:
        return iter(self._loaded)

    def __len__(self) -> int:
        return len(self._loaded)

    def keys(self) -> list[str]:
        return sorted(self._versions)

    def providers(self) -> set[str]:
        return {k.split("/", 1)[0] for k in self._versions}

    def versions(self, key: str) -> tuple[Price, ...]:
        """Every version in force at some time for ``provider/model``, oldest first."""
        return self._versions.get(key, ())

    def by_version(self, version: str) -> Price | None:
        return self._by_version.get(version)

    def extended(self, prices: Iterable[Price]) -> "Catalog":
        """A new catalog with ``prices`` loaded after this one's (used to preview an import)."""
        return Catalog([*self._loaded, *prices])

    def in_force(self, ts_ms: int) -> list[Price]:
        out = []
        for key, starts in self._starts.items():
            i = bisect.bisect_right(starts, ts_ms)
            if i:
                out.append(self._versions[key][i - 1])
        return out

    # -- lookup -----------------------------------------------------------------

    def price_at(self, model: str, ts_ms: int, provider: str | None = None) -> Price:
        """The price version in force for ``model`` at ``ts_ms``; raises ``UnknownModel``."""
        memo_key = (model, provider, bisect.bisect_right(self._epochs, ts_ms))
        try:
            found = self._memo[memo_key]
        except KeyError:
            found = self._lookup(model, ts_ms, provider)
            if len(self._memo) >= _MEMO_LIMIT:        # model names come from clients: stay bounded
                self._memo.clear()
            self._memo[memo_key] = found
        if found is None:
            raise UnknownModel(model, ts_ms, provider)
        return found

    def _lookup(self, model: str, ts_ms: int, provider: str | None) -> Price | None:
        found = self._match(model, ts_ms, provider)
        if found is None and "/" in model:
            prefix, rest = model.split("/", 1)
            if prefix in self.providers() and provider in (None, prefix):
                found = self._match(rest, ts_ms, prefix)
        return found

    def resolve(self, model: str, ts_ms: int, provider: str | None = None,
                policy: Policy = "reject", fallback_entry: str | None = None) -> tuple[Price, bool]:
        """``(price, estimated)`` under the unknown-model policy.

        ``reject`` (default): an unknown model raises ``UnknownModel``.
        ``fallback``: an unknown model is priced with the NAMED ``fallback_entry``
        (``provider/model`` or a model name) and ``estimated`` is True so the
        event carries ``cost_estimated``. Nothing is ever priced at zero.
        """
        if policy not in ("reject", "fallback"):
            raise ValueError(f"unknown-model policy must be 'reject' or 'fallback', got {policy!r}")
        try:
            return self.price_at(model, ts_ms, provider), False
        except UnknownModel:
            if policy == "reject":
                raise
        if not fallback_entry:
            raise ValueError("the 'fallback' unknown-model policy needs a named fallback_entry")
        try:
            return self.price_at(fallback_entry, ts_ms), True
        except UnknownModel as exc:
            raise UnknownModel(model, ts_ms, provider,
                               detail=f"and the fallback entry {fallback_entry!r} is not in the catalog") from exc

    def history(self, model: str, ts_ms: int | None = None, provider: str | None = None) -> tuple[Price, ...]:
        """All versions of the entry ``model`` resolves to (at ``ts_ms``, default: its latest)."""
        if ts_ms is None:
            ts_ms = max((p.effective_from_ms for p in self._loaded), default=0)
        return self.versions(self.price_at(model, ts_ms, provider).key)

    def _match(self, model: str, ts_ms: int, provider: str | None) -> Price | None:
        best: list[tuple[tuple[int, int], Price]] = []
        for p in self.in_force(ts_ms):
            if provider is not None and p.provider != provider:
                continue
            rank = _rank(model, p)
            if rank is not None:
                best.append((rank, p))
        if not best:
            return None
        best.sort(key=lambda rp: rp[0], reverse=True)
        top = [p for r, p in best if r == best[0][0]]
        if len(top) > 1:
            keys = ", ".join(sorted(p.key for p in top))
            raise UnknownModel(model, ts_ms, provider,
                               detail=f"it is ambiguous between {keys}; pass the provider")
        return top[0]


def _rank(model: str, p: Price) -> tuple[int, int] | None:
    if model in (p.model, p.key):
        return (3, 0)
    if model in p.aliases:
        return (2, 0)
    literal = [sum(ch not in "*?[]" for ch in pat) for pat in p.patterns if fnmatchcase(model, pat)]
    return (1, max(literal)) if literal else None


# -- files --------------------------------------------------------------------

def read_entries(data: bytes, where: str) -> list[tuple[str, Mapping[str, object]]]:
    """The raw entries of one file of our format (``{"format": ..., "entries": [...]}``), in file order."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CatalogError(f"{where}: not JSON: {exc}") from exc
    if not isinstance(doc, Mapping) or doc.get("format") != FORMAT or not isinstance(doc.get("entries"), list):
        raise CatalogError(f"{where}: expected {{\"format\": \"{FORMAT}\", \"entries\": [...]}}")
    out = []
    for i, raw in enumerate(doc["entries"]):
        if not isinstance(raw, Mapping):
            raise CatalogError(f"{where}: entries[{i}] is not an object")
        out.append((f"{where}: entries[{i}]", raw))
    return out


def shipped_entries() -> list[Price]:
    data = resources.files("llmgw.pricing").joinpath("data", "catalog.json").read_bytes()
    return [Price.from_entry(raw, w) for w, raw in read_entries(data, "pricing/data/catalog.json")]


def override_entries(base: list[Price], data: bytes, where: str) -> list[Price]:
    """Override entries as prices. An entry need only state what changes: it overlays the
    version of the same provider+model in force at its ``effective_from`` (aliases, patterns,
    tiers, fees and limits it does not mention are inherited; a rate it states replaces ours)."""
    loaded = list(base)
    out = []
    for w, raw in read_entries(data, where):
        previous = _superseded(loaded, raw)
        price = Price.from_entry(overlay(previous.to_entry(), raw) if previous else raw, w)
        loaded.append(price)
        out.append(price)
    return out


def _superseded(loaded: list[Price], raw: Mapping[str, object]) -> Price | None:
    """The version ``raw`` takes over from, if its identity fields are readable (else from_entry reports them)."""
    key = f"{raw.get('provider')}/{raw.get('model')}"
    when = raw.get("effective_from")
    if not isinstance(when, str):
        return None
    try:
        ts = parse_instant_ms(when)
    except ValueError:
        return None
    earlier = [p for p in loaded if p.key == key and p.effective_from_ms <= ts]
    return max(earlier, key=lambda p: p.effective_from_ms) if earlier else None


def load_catalog(overrides: str | Path | None = None) -> Catalog:
    """The shipped catalog plus the overrides file, if one is given.

    An ``overrides`` path that is given must exist (a typo must not silently
    drop every correction); pass ``None`` for the shipped prices alone.
    """
    prices = shipped_entries()
    if overrides is not None:
        path = Path(overrides)
        prices += override_entries(prices, path.read_bytes(), str(path))
    return Catalog(prices)
