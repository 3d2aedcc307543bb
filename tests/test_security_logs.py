"""Every credential shape the gateway mints or forwards is redacted in every log path, aiohttp's own
parser errors included (they quote the offending header line verbatim)."""
from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from llmgw.core.logs import REDACTED, JsonFormatter, Redactor, secrets_of
from llmgw.core.settings import Settings
from tests.admin_support import OWNER_KEY, Api, admin_harness
from tests.gateway_harness import GatewayHarness

ADMIN = "llmgw-admin-a0123456789ab-Zq3_secretpart-xyz0123456789"
CLIENT = "sk-llmgw-k0123456789ab-Cq3_secretpart-xyz0123456789"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNlY3JldA"
PROVIDER = "sk-ant-api03-Pq3secretpartxyz0123456789"
OPAQUE = "opaque-token-Wq3secretpart"


@pytest.mark.parametrize("line", [
    f"key {CLIENT} used", f"admin {ADMIN}", f"GARBAGE{ADMIN}", f"Authorization: Bearer {JWT}", f"token {JWT}",
    f"upstream said: Incorrect API key {PROVIDER}", f"b'x-api-key: {OPAQUE}\\x01'", f"b'x-api-key {OPAQUE}'",
    f"{{'Authorization': 'Basic {OPAQUE}'}}", f'"api-key":"{OPAQUE}"', f"authorization={OPAQUE};",
    f"Proxy-Authorization: {OPAQUE}", f"x-goog-api-key: {OPAQUE}",
])
def test_redactor_knows_every_credential_shape(line: str) -> None:
    out = Redactor()(line)
    assert REDACTED in out
    assert not any(s in out for s in ("secretpart", "c2lnbmF0dXJl", "eyJzdWIi")), out


def test_redactor_leaves_ordinary_words_alone() -> None:
    for text in ("monkey business: keys are fine", "x-api-key header is missing", "model gpt-4o, 12 tokens",
                 "sk-short", '"key_id":"k0123456789ab"'):
        assert Redactor()(text) == text


def test_settings_secrets_include_the_oidc_shared_secret() -> None:
    s = Settings(file_config={"admin": {"oidc": {"hs256_secret": "hs-secret-0123456789"}}})
    assert "hs-secret-0123456789" in secrets_of(s)


@pytest.fixture
def root_log(tmp_path: Path) -> Iterator[io.StringIO]:
    """Every record of the process (aiohttp's included), through the production formatter."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter(Redactor(secrets_of(Settings(admin_key=OWNER_KEY)))))
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield buf
    root.removeHandler(handler)
    root.setLevel(old)


async def send_raw(gw: GatewayHarness, head: bytes) -> bytes:
    host, port = urlsplit(gw.url).netloc.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


async def test_a_malformed_header_line_never_logs_the_admin_credential(fake_provider: Any, tmp_path: Path,
                                                                       root_log: io.StringIO) -> None:
    async with admin_harness(fake_provider, tmp_path) as gw, aiohttp.ClientSession() as http:
        minted = await Api(http, gw.url, OWNER_KEY).ok("POST", "/admin/admins",
                                                       {"name": "ops", "role": "owner", "reason": "t"}, 201)
        secret = minted["key"]
        client_key, _ = gw.key()
        for bad in (b"x-api-key: " + secret.encode() + b"\x01", b"x-api-key " + secret.encode(),
                    b"authorization: Bearer " + secret.encode() + b"\x7f",
                    b"x-api-key: " + client_key.encode() + b"\x01",
                    b"authorization: Bearer " + fake_provider.anthropic_key.encode() + b"\x7f"):
            answer = await send_raw(gw, b"POST /admin/keys HTTP/1.1\r\nhost: x\r\n" + bad
                                    + b"\r\ncontent-length: 0\r\n\r\n")
            assert b" 400 " in answer.split(b"\r\n", 1)[0]
    text = root_log.getvalue()
    assert "aiohttp.server" in text and "Invalid header" in text    # the parser error path was logged
    for s in (secret, secret[len("llmgw-admin-") + 14:], client_key, client_key[len("sk-llmgw-") + 14:],
              fake_provider.anthropic_key, OWNER_KEY):
        assert s not in text
