"""Which upstream serves a model, with which credential, priced as what.

Routes come only from settings and the config file: nothing a client sends
chooses a URL, so the gateway cannot be turned into an open proxy.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Mapping

from .errors import NotFound
from .settings import Settings

# kind -> (API family it serves, header that carries the credential, scheme)
_AUTH = {
    "anthropic": ("anthropic", "x-api-key", ""),
    "openai": ("openai", "authorization", "Bearer "),
    "openai_compatible": ("openai", "authorization", "Bearer "),
    "azure": ("openai", "api-key", ""),
}


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    kind: str
    base_url: str
    api_key: str = ""
    provider: str = ""            # price catalog provider; defaults to the kind
    query: str = ""               # e.g. Azure's "api-version=..."

    @property
    def family(self) -> str:
        return _AUTH[self.kind][0]

    def url(self, path: str, client_query: str = "") -> str:
        url = self.base_url.rstrip("/") + path
        query = "&".join(q for q in (self.query, client_query) if q)
        return f"{url}?{query}" if query else url

    def auth_headers(self) -> dict[str, str]:
        _, header, scheme = _AUTH[self.kind]
        return {header: scheme + self.api_key} if self.api_key else {}

    @property
    def price_provider(self) -> str:
        return self.provider or ("openai" if self.kind == "openai_compatible" else self.kind)


@dataclass(frozen=True, slots=True)
class Route:
    pattern: str
    upstream: str
    price_as: str = ""            # price this model as another catalog entry


@dataclass(frozen=True, slots=True)
class Target:
    upstream: Upstream
    price_model: str


class RoutingTable:
    def __init__(self, upstreams: Mapping[str, Upstream], routes: list[Route]) -> None:
        self.upstreams = dict(upstreams)
        self.routes = routes
        for r in routes:
            if r.upstream not in self.upstreams:
                raise ValueError(f"route {r.pattern!r} names unknown upstream {r.upstream!r}")

    def resolve(self, family: str, model: str) -> Target:
        for r in self.routes:
            up = self.upstreams[r.upstream]
            if up.family == family and fnmatch.fnmatchcase(model, r.pattern):
                return Target(up, r.price_as or model)
        default = self.upstreams.get(family)
        if default is None or not default.base_url:
            raise NotFound(f"no upstream is configured for model {model!r}")
        return Target(default, model)

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
            ups[name] = Upstream(name, kind, u["base_url"], str(u.get("api_key", "")),
                                 str(u.get("provider", "")), str(u.get("query", "")))
        routes = [Route(str(r["model"]), str(r["upstream"]), str(r.get("price_as", "")))
                  for r in conf.get("routes") or []]
        return cls(ups, routes)
