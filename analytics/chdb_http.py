"""ClickHouse's HTTP interface, the part clickhouse-connect uses, served from a chDB engine.

Why: chDB runs one engine per process and locks its data path, so once the
embedded analytics moved to its own process (``analytics/process.py``) nothing
else can open that path. Every other reader and writer (the dashboard and
spend reports in the gateway, captured bodies, the audit landing, the CLI)
reaches it through this interface instead, with the stock HTTP client
(``store.connect`` finds the server from the file it publishes), so no query
changes.

What is served: ``GET /ping``; ``GET``/``POST /`` with the statement in the
body, in ``?query=`` (then the body is the data of an ``INSERT ... FORMAT``),
or in a multipart form (long bind parameters); ``param_*`` bind parameters
passed to chDB as they came; ``database``; any other parameter is a setting,
applied for that statement only. A result is answered in the statement's
``FORMAT`` (``TabSeparated`` when it names none) with ``X-ClickHouse-Format``
when it produced a result set, as ClickHouse does; an engine error is a 500
with ``X-ClickHouse-Exception-Code``. Bodies are not compressed. Every request
must carry the server's token (``Authorization: Bearer``): the listener is on
loopback and the token sits in a file only the data dir's owner reads.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import tempfile
from collections.abc import AsyncIterator, Mapping

from aiohttp import web
from clickhouse_connect.driver._backend.chdb_backend import CHDB_TRANSPORT_SETTINGS, ChdbBackend
from clickhouse_connect.driver._backend.models import QueryRuntime
from clickhouse_connect.driver._chdbclient import build_connection_string
from clickhouse_connect.driver.exceptions import ClickHouseError, DatabaseError

# Parameters the HTTP layer itself consumes (clickhouse-connect sends them; chDB would refuse them).
_TRANSPORT = frozenset(CHDB_TRANSPORT_SETTINGS | {
    "query", "default_format", "cancel_http_readonly_queries_on_client_close", "user", "password"})
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
_INSERT_WITH_DATA = re.compile(rb"^\s*(INSERT\s.*?)\s+FORMAT\s+(\w+)[ \t]*(?:\r?\n|$)", re.IGNORECASE | re.DOTALL)


class Engine:
    """A few chDB handles on the one engine of this process, lent one statement at a time
    (a handle runs one statement at once; readers should not queue behind an insert)."""

    def __init__(self, path: str, handles: int = 3) -> None:
        self._free: list[ChdbBackend] = [ChdbBackend(connection_string=build_connection_string(path, None))
                                         for _ in range(handles)]
        self._available = asyncio.Semaphore(handles)

    @contextlib.asynccontextmanager
    async def handle(self) -> AsyncIterator[ChdbBackend]:
        async with self._available:
            backend = self._free.pop()
            try:
                yield backend
            finally:
                self._free.append(backend)

    def close(self) -> None:
        for backend in self._free:
            backend.close()


def _run(backend: ChdbBackend, sql: str, data: bytes, binds: dict[str, str], runtime: QueryRuntime) -> tuple[bytes, str | None]:
    """(body, result format or None) of one statement; ``data`` is an insert's payload."""
    if data:
        return _insert(backend, sql, data, runtime), None
    fmt = _TRAILING_FORMAT.search(sql)
    if fmt:
        return backend.execute_raw_query(sql, binds, None, runtime, None), fmt.group(1)
    done = backend.execute_command(sql, binds, None, None, runtime, None)
    return done.body, done.result_format


def _insert(backend: ChdbBackend, sql: str, data: bytes, runtime: QueryRuntime) -> bytes:
    """``INSERT ... FORMAT f`` with its data: chDB reads the data from a file (``FROM INFILE``)."""
    match = _TRAILING_FORMAT.search(sql)
    if not match:
        raise DatabaseError("an insert with data must end with FORMAT <format>", code=62)
    fd, name = tempfile.mkstemp(suffix=".insert")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        quoted = name.replace("\\", "\\\\").replace("'", "\\'")
        statement = f"{sql[:match.start()].rstrip()} FROM INFILE '{quoted}' FORMAT {match.group(1)}"
        return backend.execute_raw_query(statement, {}, None, runtime, None)
    finally:
        os.unlink(name)


def _split(params: Mapping[str, str]) -> tuple[str | None, dict[str, str], dict[str, str]]:
    """(database, bind parameters, settings) of a request's parameters."""
    binds = {k: v for k, v in params.items() if k.startswith("param_")}
    settings = {k: v for k, v in params.items() if k not in _TRANSPORT and not k.startswith("param_")}
    return params.get("database") or None, binds, settings


async def _statement(request: web.Request) -> tuple[str, bytes, dict[str, str]]:
    """(SQL, insert data, parameters) from the URL, the body or a multipart form."""
    params = dict(request.query)
    if request.content_type.startswith("multipart/") or request.content_type == "application/x-www-form-urlencoded":
        form = await request.post()
        params.update({k: v for k, v in form.items() if isinstance(v, str)})
        return params.pop("query", ""), b"", params
    body = await request.read()
    if "query" in params:
        return params.pop("query"), body, params
    match = _INSERT_WITH_DATA.match(body)
    if match and match.end() < len(body):
        return f"{match.group(1).decode()} FORMAT {match.group(2).decode()}", body[match.end():], params
    return body.decode(), b"", params


def _authorized(request: web.Request, token: str) -> bool:
    return secrets.compare_digest(request.headers.get("Authorization", ""), f"Bearer {token}")


def http_app(engine: Engine, token: str) -> web.Application:
    """The aiohttp app serving ``engine`` to clients holding ``token``."""

    async def ping(request: web.Request) -> web.Response:
        return web.Response(text="Ok.\n")

    async def statement(request: web.Request) -> web.Response:
        if not _authorized(request, token):
            return web.Response(status=403, text="Code: 516. DB::Exception: wrong token. (AUTHENTICATION_FAILED)\n",
                                headers={"X-ClickHouse-Exception-Code": "516"})
        if request.headers.get("Content-Encoding", "identity") != "identity":
            return web.Response(status=400, text="Code: 36. DB::Exception: compressed bodies are not served. "
                                                 "(BAD_ARGUMENTS)\n", headers={"X-ClickHouse-Exception-Code": "36"})
        sql, data, params = await _statement(request)
        database, binds, settings = _split(params)
        runtime = QueryRuntime(database=database, settings=settings)
        try:
            async with engine.handle() as backend:
                body, fmt = await asyncio.to_thread(_run, backend, sql, data, binds, runtime)
        except ClickHouseError as err:
            code = getattr(err, "code", None) or 1002
            return web.Response(status=500, text=f"{err}\n", headers={"X-ClickHouse-Exception-Code": str(code)})
        headers = {"X-ClickHouse-Format": fmt} if fmt else {}
        return web.Response(body=body, headers=headers)

    app = web.Application(client_max_size=1 << 30)
    app.router.add_get("/ping", ping)
    app.router.add_route("GET", "/", statement)
    app.router.add_route("POST", "/", statement)
    return app


__all__ = ["Engine", "http_app"]
