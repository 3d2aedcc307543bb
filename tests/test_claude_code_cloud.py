"""The real Claude Code CLI in Bedrock and Vertex mode through the gateway to the fakes (runs where a
`claude` binary is on PATH; `npm install -g @anthropic-ai/claude-code` gives one)."""
from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from llmgw.core import events as E
from tests.fakes.bedrock import FakeBedrock
from tests.fakes.google import FakeGoogle
from tests.gateway_harness import GatewayHarness

CLAUDE = shutil.which("claude")
pytestmark = pytest.mark.skipif(CLAUDE is None, reason="the claude CLI is not installed")
OFFLINE = {"DISABLE_TELEMETRY": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1"}


async def run_claude(env: dict[str, str], home: Path) -> str:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TMPDIR")}
    proc = await asyncio.create_subprocess_exec(CLAUDE, "-p", "say hi", env={**keep, **OFFLINE, **env, "HOME": str(home)},
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, out.decode(errors="replace")
    return out.decode()


async def test_claude_code_bedrock_mode(fake_provider, tmp_path):
    async with FakeBedrock() as bedrock:
        async with GatewayHarness(fake_provider, tmp_path, file_config={"upstreams": bedrock.upstream_config()}) as gw:
            key, key_id = gw.key()
            out = await run_claude({"CLAUDE_CODE_USE_BEDROCK": "1", "ANTHROPIC_BEDROCK_BASE_URL": gw.url + "/bedrock",
                                    "CLAUDE_CODE_SKIP_BEDROCK_AUTH": "1", "AWS_REGION": "us-east-1",
                                    "AWS_BEARER_TOKEN_BEDROCK": key}, tmp_path)
            assert "Hello from fake Bedrock." in out
            assert bedrock.requests and all(r.signed for r in bedrock.requests)
            events = await gw.events()
    assert len(events) == len(bedrock.requests) and all(e.outcome == E.OK and e.key_id == key_id for e in events)
    assert all(e.cost_micro_usd > 0 and e.session_id for e in events)


async def test_claude_code_vertex_mode(fake_provider, tmp_path):
    async with FakeGoogle() as google:
        async with GatewayHarness(fake_provider, tmp_path, file_config={"upstreams": google.vertex_config()}) as gw:
            key, _ = gw.key()
            out = await run_claude({"CLAUDE_CODE_USE_VERTEX": "1", "ANTHROPIC_VERTEX_BASE_URL": gw.url + "/vertex/v1",
                                    "CLAUDE_CODE_SKIP_VERTEX_AUTH": "1", "CLOUD_ML_REGION": "global",
                                    "ANTHROPIC_VERTEX_PROJECT_ID": "any", "ANTHROPIC_CUSTOM_HEADERS": f"x-api-key: {key}"},
                                   tmp_path)
            assert "Hello from fake Google." in out
            events = await gw.events()
    assert google.requests and len(events) == len(google.requests)
    assert all(e.outcome == E.OK and e.api == "vertex_messages" and e.cost_micro_usd > 0 for e in events)
