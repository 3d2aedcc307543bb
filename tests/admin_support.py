"""Shared by the governance tests: a real gateway with an owner key, and a small JSON client for it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from tests.gateway_harness import GatewayHarness

OWNER_KEY = "owner-key-for-tests-0123456789"


def admin_harness(fake: Any, data_dir: Path, **overrides: Any) -> GatewayHarness:
    return GatewayHarness(fake, data_dir, admin_key=OWNER_KEY, **overrides)


class Api:
    """JSON over HTTP as one admin (or client key) sees the gateway: ``(status, body)`` per call."""

    def __init__(self, http: aiohttp.ClientSession, url: str, token: str | None) -> None:
        self.http, self.url, self.token = http, url, token

    def as_(self, token: str | None) -> "Api":
        return Api(self.http, self.url, token)

    async def call(self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None,
                   data: str | None = None) -> tuple[int, Any]:
        h = dict(headers or {})
        if self.token is not None:
            h["Authorization"] = f"Bearer {self.token}"
        async with self.http.request(method, self.url + path, json=body, data=data, headers=h) as r:
            text = await r.text()
            try:
                return r.status, (await r.json(content_type=None)) if text else None
            except ValueError:
                return r.status, text

    async def get(self, path: str) -> tuple[int, Any]:
        return await self.call("GET", path)

    async def post(self, path: str, body: Any = None) -> tuple[int, Any]:
        return await self.call("POST", path, body if body is not None else {})

    async def ok(self, method: str, path: str, body: Any = None, status: int | tuple[int, ...] = (200, 201)) -> Any:
        got, out = await self.call(method, path, body)
        wanted = (status,) if isinstance(status, int) else status
        assert got in wanted, f"{method} {path}: {got} {out}"
        return out


async def admin_with_role(owner: Api, name: str, role: str, *workspaces: str) -> Api:
    made = await owner.ok("POST", "/admin/admins", {"name": name, "role": role, "workspaces": list(workspaces),
                                                     "reason": "test"}, 201)
    return owner.as_(made["key"])
