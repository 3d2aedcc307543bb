"""Which upstream serves a model, with which credential, priced as what.

Routes come only from settings and the config file: nothing a client sends
chooses a URL, so the gateway cannot be turned into an open proxy.
"""
from __future__ import annotations

import fnmatch
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, MutableMapping, Protocol

from .errors import NotFound
from llmgw.core.settings import Settings

# kind -> (API family it serves, header that carries the credential, scheme)
_AUTH = {
    "anthropic": ("anthropic", "x-api-key", ""),
    "openai": ("openai", "authorization", "Bearer "),
    "openai_compatible": ("openai", "authorization", "Bearer "),
    "azure": ("openai", "api-key", ""),
    "bedrock": ("bedrock", "", ""),                # SigV4 per request (adapters/bedrock.py)
    "vertex": ("vertex", "", ""),                  # Google OAuth bearer (adapters/vertex.py)
    "gemini": ("gemini", "", ""),                  # x-goog-api-key, set by its signer
}
# What a kind's calls are priced as when the upstream names no catalog provider: Bedrock's
# Claude list prices are Anthropic's (regional endpoints' premium: an override or `provider:`).
# Vertex serves two publishers (Anthropic and Google): its models are found under any provider.
_PRICE_PROVIDER: dict[str, str | None] = {"openai_compatible": "openai", "bedrock": "anthropic", "vertex": None}


class Signer(Protocol):
    """Credentials computed per request from its method, URL and body (AWS SigV4)."""

    async def sign(self, method: str, url: str, headers: MutableMapping[str, str], body: bytes | None) -> None: ...


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    kind: str
    base_url: str
    api_key: str = ""
    provider: str = ""            # price catalog provider; defaults to the kind
    query: str = ""               # e.g. Azure's "api-version=..."
    signer: Signer | None = field(default=None, compare=False, repr=False)
    rewrite: Callable[[str], str] | None = field(default=None, compare=False, repr=False)   # Vertex: own project

    @property
    def family(self) -> str:
        return _AUTH[self.kind][0]

    def url(self, path: str, client_query: str = "") -> str:
        if self.rewrite is not None:
            path = self.rewrite(path)
        url = self.base_url.rstrip("/") + path
        query = "&".join(q for q in (self.query, client_query) if q)
        return f"{url}?{query}" if query else url

    def auth_headers(self) -> dict[str, str]:
        _, header, scheme = _AUTH[self.kind]
        return {header: scheme + self.api_key} if self.api_key and header else {}

    async def sign(self, method: str, url: str, headers: MutableMapping[str, str], body: bytes | None) -> None:
        """Per-request credentials (Bedrock's SigV4) over the headers already built; a no-op for key kinds."""
        if self.signer is not None:
            await self.signer.sign(method, url, headers, body)

    @property
    def price_provider(self) -> str | None:
        return self.provider or _PRICE_PROVIDER.get(self.kind, self.kind)

    def catalog_model(self, model: str) -> str:
        """The name the catalog knows a model by (Bedrock ids carry profile, vendor and version)."""
        if self.kind == "bedrock":
            from .adapters.bedrock import catalog_model
            return catalog_model(model)
        return model


@dataclass(frozen=True, slots=True)
class Member:
    """One upstream of a route: lower ``order`` is tried first; members sharing an order share its load
    by ``weight``."""

    upstream: str
    weight: float = 1.0
    order: int = 0


@dataclass(frozen=True, slots=True)
class Route:
    pattern: str
    upstream: str                 # the first member (the only one for a one-upstream route)
    price_as: str = ""            # price this model as another catalog entry
    members: tuple[Member, ...] = ()

    @property
    def all_members(self) -> tuple[Member, ...]:
        return self.members or (Member(self.upstream),)


@dataclass(frozen=True, slots=True)
class Target:
    upstream: Upstream
    price_model: str
    # where the call goes if ``upstream`` cannot take it (connect error, 429, 5xx before any byte)
    fallbacks: tuple[Upstream, ...] = ()

    def attempts(self) -> tuple["Target", ...]:
        return (self, *(Target(u, self.price_model) for u in self.fallbacks))


class Breaker:
    """A circuit breaker per upstream: ``threshold`` failures in a row open it for ``cooldown_s``; then
    one call is let through (half-open) and its outcome closes or reopens it. Per process, in memory."""

    __slots__ = ("threshold", "cooldown_s", "failures", "open_until", "total_failures", "failovers")

    def __init__(self, threshold: int = 3, cooldown_s: float = 30.0) -> None:
        self.threshold, self.cooldown_s = threshold, cooldown_s
        self.failures, self.open_until = 0, 0.0
        self.total_failures = 0          # exported as a counter
        self.failovers = 0               # calls moved off this upstream to the next

    def available(self, now: float) -> bool:
        """Closed, or open with its cooldown over (half-open: the next call is the trial)."""
        return self.failures < self.threshold or now >= self.open_until

    def trying(self, now: float) -> None:
        """A call goes to this upstream: if it is half-open, later calls wait out a new cooldown meanwhile."""
        if self.failures >= self.threshold:
            self.open_until = now + self.cooldown_s

    @property
    def healthy(self) -> bool:
        return self.failures < self.threshold

    def success(self) -> None:
        self.failures = 0

    def failure(self, now: float) -> None:
        self.failures += 1
        self.total_failures += 1
        if self.failures >= self.threshold:
            self.open_until = now + self.cooldown_s


class RoutingTable:
    def __init__(self, upstreams: Mapping[str, Upstream], routes: list[Route], *,
                 failure_threshold: int = 3, cooldown_s: float = 30.0) -> None:
        self.upstreams = dict(upstreams)
        self.routes = routes
        self.breakers = {name: Breaker(failure_threshold, cooldown_s) for name in self.upstreams}
        for r in routes:
            ups = []
            for m in r.all_members:
                if m.upstream not in self.upstreams:
                    raise ValueError(f"route {r.pattern!r} names unknown upstream {m.upstream!r}")
                if not m.weight > 0:
                    raise ValueError(f"route {r.pattern!r}: upstream {m.upstream!r} needs a weight above 0")
                ups.append(self.upstreams[m.upstream])
            # a failover must not change how the call is priced or what wire it speaks
            if len({(u.family, u.price_provider) for u in ups}) > 1:
                raise ValueError(f"route {r.pattern!r}: its upstreams must serve one API family and price "
                                 "alike (same kind, or the same `provider:`)")

    def resolve(self, family: str, model: str) -> Target:
        for r in self.routes:
            up = self.upstreams[r.upstream]
            if up.family == family and fnmatch.fnmatchcase(model, r.pattern):
                first, *rest = self.order(r)
                return Target(first, r.price_as or first.catalog_model(model), tuple(rest))
        default = self.upstreams.get(family) or self._first_of(family)
        if default is None or not default.base_url or default.family != family:
            raise NotFound(f"no upstream is configured for model {model!r}")
        return Target(default, default.catalog_model(model))

    def order(self, route: Route, now: float | None = None, rng: random.Random | None = None) -> list[Upstream]:
        """The route's upstreams in the order to try them: by ``order``, a weighted shuffle within one
        order, and upstreams whose breaker is open after every healthy one (tried only when all are out)."""
        members = route.all_members
        if len(members) == 1:
            return [self.upstreams[members[0].upstream]]
        now = time.monotonic() if now is None else now
        rand = (rng or random).random
        # Efraimidis-Spirakis: sorting by u ** (1 / w) is a draw without replacement weighted by w
        keyed = sorted(members, key=lambda m: (m.order, -(rand() ** (1.0 / m.weight))))
        ups = [self.upstreams[m.upstream] for m in keyed]
        up_now = [u for u in ups if self.breakers[u.name].available(now)]
        return up_now + [u for u in ups if u not in up_now]

    def _first_of(self, family: str) -> Upstream | None:
        """The default of a family with no upstream named after it (``bedrock``): its first configured one."""
        return next((u for u in self.upstreams.values() if u.family == family), None)

    def default(self, family: str) -> Upstream:
        up = self.upstreams.get(family)
        if up is None:
            raise NotFound(f"no {family} upstream is configured")
        return up

    @classmethod
    def from_settings(cls, s: Settings) -> "RoutingTable":
        ups = {
            "openai": Upstream("openai", "openai", s.openai_base_url, s.openai_api_key),
            "anthropic": Upstream("anthropic", "anthropic", s.anthropic_base_url, s.anthropic_api_key),
        }
        conf: Mapping[str, Any] = s.file_config
        for name, u in (conf.get("upstreams") or {}).items():
            kind = u.get("kind", "openai_compatible")
            if kind not in _AUTH:
                raise ValueError(f"upstream {name!r}: kind must be one of {sorted(_AUTH)}")
            if kind in _CLOUD:
                ups[name] = _CLOUD[kind](name, u)
                continue
            ups[name] = Upstream(name, kind, u["base_url"], str(u.get("api_key", "")),
                                 str(u.get("provider", "")), str(u.get("query", "")))
        routes = [_route(r) for r in conf.get("routes") or []]
        opts: Mapping[str, Any] = conf.get("routing") or {}
        return cls(ups, routes, failure_threshold=int(opts.get("failure_threshold", 3)),
                   cooldown_s=float(opts.get("cooldown_s", 30.0)))


def _route(r: Mapping[str, Any]) -> Route:
    """``{model, upstream}`` or ``{model, upstreams: [name | {upstream, weight, order}]}``; a member's
    ``order`` defaults to its place in the list, so a plain list is a failover chain."""
    if "upstreams" not in r:
        return Route(str(r["model"]), str(r["upstream"]), str(r.get("price_as", "")))
    raw = r["upstreams"]
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"route {r.get('model')!r}: `upstreams` must be a non-empty list")
    members = tuple(Member(m, 1.0, i) if isinstance(m, str) else
                    Member(str(m["upstream"]), float(m.get("weight", 1)), int(m.get("order", i)))
                    for i, m in enumerate(raw))
    return Route(str(r["model"]), members[0].upstream, str(r.get("price_as", "")), members)


def _bedrock(name: str, u: Mapping[str, Any]) -> Upstream:
    """``kind: bedrock``: ``region`` (required), ``base_url`` (default: the region's runtime endpoint),
    ``aws_access_key_id`` / ``aws_secret_access_key`` / ``aws_session_token`` (default: botocore's chain)."""
    from .adapters.bedrock import SigV4Signer

    region = str(u.get("region") or "")
    if not region:
        raise ValueError(f"upstream {name!r}: a bedrock upstream needs `region`")
    signer = SigV4Signer(region, str(u.get("aws_access_key_id", "")), str(u.get("aws_secret_access_key", "")),
                         str(u.get("aws_session_token", "")))
    base = str(u.get("base_url") or f"https://bedrock-runtime.{region}.amazonaws.com")
    return Upstream(name, "bedrock", base, provider=str(u.get("provider", "")), signer=signer)


def _vertex(name: str, u: Mapping[str, Any]) -> Upstream:
    """``kind: vertex``: ``project`` (required), ``location`` (default ``global``), ``base_url`` (default:
    the location's endpoint), ``access_token`` or ``credentials_file`` (a service-account JSON)."""
    from .adapters.vertex import GoogleBearer, with_project

    project, location = str(u.get("project") or ""), str(u.get("location") or "global")
    if not project:
        raise ValueError(f"upstream {name!r}: a vertex upstream needs `project`")
    host = "aiplatform.googleapis.com" if location == "global" else f"{location}-aiplatform.googleapis.com"
    signer = GoogleBearer(str(u.get("access_token", "")), str(u.get("credentials_file", "")))
    return Upstream(name, "vertex", str(u.get("base_url") or f"https://{host}"), provider=str(u.get("provider", "")),
                    signer=signer, rewrite=lambda path: with_project(path, project, location))


def _gemini(name: str, u: Mapping[str, Any]) -> Upstream:
    """``kind: gemini``: the Gemini API; ``api_key``, ``base_url`` (default generativelanguage)."""
    from .adapters.vertex import GoogleApiKey

    key = str(u.get("api_key", ""))
    return Upstream(name, "gemini", str(u.get("base_url") or "https://generativelanguage.googleapis.com"),
                    provider=str(u.get("provider", "")), signer=GoogleApiKey(key))


_CLOUD = {"bedrock": _bedrock, "vertex": _vertex, "gemini": _gemini}
