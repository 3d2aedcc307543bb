"""`llmgw pricing import|show|cost`, driven through an argparse parser as the llmgw CLI will."""
from __future__ import annotations

import argparse
from pathlib import Path

import orjson
import pytest

from llmgw.core.events import Tokens
from llmgw.pricing import cost, load_catalog
from llmgw.pricing.cli import format_usd, register
from llmgw.pricing.instant import parse_instant_ms
from llmgw.pricing.litellm import entries_from_litellm, parse, per_mtok

# A slice of LiteLLM's model_prices_and_context_window.json, numbers written as LiteLLM writes them.
LITELLM = b"""{
  "sample_spec": {"input_cost_per_token": 0.0, "litellm_provider": "one of ...", "mode": "one of ..."},
  "claude-sonnet-4-5": {
    "cache_creation_input_token_cost": 3.75e-06, "cache_creation_input_token_cost_above_1hr": 6e-06,
    "cache_read_input_token_cost": 3e-07, "input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05,
    "input_cost_per_token_above_200k_tokens": 6e-06, "output_cost_per_token_above_200k_tokens": 2.25e-05,
    "cache_creation_input_token_cost_above_200k_tokens": 7.5e-06,
    "cache_read_input_token_cost_above_200k_tokens": 6e-07,
    "litellm_provider": "anthropic", "max_input_tokens": 200000, "max_output_tokens": 64000, "mode": "chat"},
  "claude-sonnet-4-5-20250929": {
    "cache_creation_input_token_cost": 3.75e-06, "cache_read_input_token_cost": 3e-07,
    "input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05,
    "litellm_provider": "anthropic", "max_input_tokens": 200000, "max_output_tokens": 64000, "mode": "chat"},
  "gpt-4o": {
    "cache_read_input_token_cost": 1e-06, "input_cost_per_token": 2e-06, "output_cost_per_token": 1e-05,
    "input_cost_per_token_priority": 4.25e-06, "output_cost_per_token_priority": 1.7e-05,
    "cache_read_input_token_cost_priority": 2.125e-06,
    "litellm_provider": "openai", "max_input_tokens": 128000, "max_output_tokens": 16384, "mode": "chat"},
  "gpt-4.1-mini": {
    "cache_read_input_token_cost": 1e-07, "input_cost_per_token": 4.0000000000000003e-07,
    "output_cost_per_token": 1.6e-06, "litellm_provider": "openai", "max_input_tokens": 1047576,
    "max_output_tokens": 32768, "mode": "chat"},
  "gpt-5-pro": {
    "input_cost_per_token": 1.5e-05, "output_cost_per_token": 0.00012, "litellm_provider": "openai",
    "max_input_tokens": 400000, "max_output_tokens": 272000, "mode": "responses"},
  "dall-e-3": {"litellm_provider": "openai", "mode": "image_generation", "output_cost_per_image": 0.04},
  "bedrock/anthropic.claude-3-haiku": {
    "input_cost_per_token": 2.5e-07, "output_cost_per_token": 1.25e-06, "litellm_provider": "bedrock",
    "mode": "chat"}
}"""


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="llmgw")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LLMGW_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def test_litellm_numbers_are_read_exactly() -> None:
    assert per_mtok(parse(b'{"x": 3e-06}')["x"]) == "3"
    assert per_mtok(parse(b'{"x": 1.25e-07}')["x"]) == "0.125"
    assert per_mtok(parse(b'{"x": 4.0000000000000003e-07}')["x"]) == "0.4"   # float debris dropped
    entries = {str(e["model"]): e for e in entries_from_litellm(parse(LITELLM))}
    assert sorted(entries) == ["anthropic.claude-3-haiku", "claude-sonnet-4-5", "claude-sonnet-4-5-20250929",
                               "gpt-4.1-mini", "gpt-4o", "gpt-5-pro"]     # no sample_spec, no image model
    assert entries["claude-sonnet-4-5"]["long_context"] == {"above_prompt_tokens": 200000, "usd_per_mtok": {
        "input": "6", "output": "22.5", "cache_write_5m": "7.5", "cache_read": "0.6"}}
    assert entries["gpt-4o"]["service_tiers"] == {"priority": {"usd_per_mtok": {
        "input": "4.25", "output": "17", "cache_read": "2.125"}}}


def test_litellm_import_prints_the_diff_and_writes_new_versions(tmp_path: Path, data_dir: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "model_prices_and_context_window.json"
    src.write_bytes(LITELLM)

    assert run(["pricing", "import", str(src), "--effective-from", "2025-12-01", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert not (data_dir / "prices.json").exists()
    assert "dry run: nothing written" in out

    assert run(["pricing", "import", str(src), "--effective-from", "2025-12-01"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    # gpt-4o: input $2.50 -> $2, cached $1.25 -> $1; its cache-write rates default to input, so follow it
    assert "~ openai/gpt-4o ('gpt-4o') new version openai/gpt-4o@2025-12-01" in lines
    assert "    usd_per_mtok.input: 2.5 -> 2" in lines
    assert "    usd_per_mtok.cache_read: 1.25 -> 1" in lines
    assert "    usd_per_mtok.cache_write_5m: 2.5 -> 2" in lines
    # a model we did not have, from a provider we price
    assert "+ openai/gpt-5-pro ('gpt-5-pro') new entry openai/gpt-5-pro@2025-12-01" in lines
    assert "    usd_per_mtok.output: - -> 120" in lines
    # unchanged: Sonnet 4.5 (its snapshot name lands on the same entry and agrees, so it is folded in;
    # LiteLLM's 200k context must not lower our 1M) and gpt-4.1-mini despite the float debris.
    # bedrock is filtered out: not a provider the catalog prices.
    assert "= 2 unchanged" in lines
    assert "2 version(s) to add, effective 2025-12-01T00:00:00Z" in lines
    assert not any("bedrock" in line or "sonnet" in line for line in lines)

    catalog = load_catalog(data_dir / "prices.json")
    tokens = Tokens(input=1_000)
    # before the import's instant the old price holds ($2.50 x 1,000), from it the new one ($2 x 1,000)
    assert cost(tokens, catalog.price_at("gpt-4o", parse_instant_ms("2025-11-30T23:59:59Z"))).micro_usd == 2_500
    new = catalog.price_at("gpt-4o-2024-08-06", parse_instant_ms("2025-12-01"))
    assert (cost(tokens, new).micro_usd, new.version) == (2_000, "openai/gpt-4o@2025-12-01")
    assert new.tier("batch") is not None and new.fee_usd_per_1k("web_search") is not None   # kept ours

    # importing the same file again changes nothing
    assert run(["pricing", "import", str(src), "--effective-from", "2025-12-02"]) == 0
    assert "0 version(s) to add" in capsys.readouterr().out
    assert len(orjson.loads((data_dir / "prices.json").read_bytes())["entries"]) == 2


def test_import_only_known_and_provider_filter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "l.json"
    src.write_bytes(LITELLM)
    assert run(["pricing", "import", str(src), "--only-known", "--dry-run", "--provider", "openai",
                "--effective-from", "2025-12-01"]) == 0
    out = capsys.readouterr().out
    assert "gpt-5-pro" in out and "skipped: not in the catalog" in out
    assert "1 version(s) to add" in out


def test_llmgw_format_import(tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "ours.json"
    src.write_bytes(orjson.dumps({"format": "llmgw.prices/1", "entries": [
        {"provider": "anthropic", "model": "claude-haiku-4-5", "effective_from": "2026-02-01",
         "usd_per_mtok": {"input": "0.9", "output": "4.5"}}]}))
    assert run(["pricing", "import", str(src), "--format", "llmgw"]) == 0
    out = capsys.readouterr().out
    assert "~ anthropic/claude-haiku-4-5 ('claude-haiku-4-5') new version anthropic/claude-haiku-4-5@2026-02-01" in out
    assert "    usd_per_mtok.input: 1 -> 0.9" in out
    p = load_catalog(data_dir / "prices.json").price_at("claude-haiku-4-5-20251001", parse_instant_ms("2026-02-01"))
    # 0.9 x 1,000 + 4.5 x 1,000 = 5,400; the explicit cache rates stay as they were ($1.25 5m write)
    assert cost(Tokens(input=1_000, output=1_000), p).micro_usd == 5_400
    assert str(p.rates.cache_write_5m) == "1.25"


def test_import_refuses_a_broken_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "broken.json"
    src.write_bytes(b"{not json")
    assert run(["pricing", "import", str(src)]) == 1
    assert "llmgw pricing:" in capsys.readouterr().err


def test_show_prints_the_entry_in_force_and_its_history(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["pricing", "show", "o3-2025-04-16", "--at", "2025-07-01"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "openai/o3: in force at 2025-07-01T00:00:00Z: openai/o3@2025-06-10"
    assert "  2025-04-16T00:00:00Z  openai/o3@2025-04-16  input 10, output 40" in out
    assert "  2025-06-10T00:00:00Z  openai/o3@2025-06-10  input 2, output 8  <- in force" in out
    assert "  tier flex: x0.5" in out
    assert run(["pricing", "show", "no-such-model"]) == 1
    assert "unknown model 'no-such-model'" in capsys.readouterr().err


def test_cost_prints_usd_micro_usd_and_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    usage = '{"input": 1000, "cache_write_5m": 10000, "cache_write_1h": 20000, "cache_read": 50000, "output": 2000}'
    assert run(["pricing", "cost", "--model", "claude-sonnet-4-5", "--usage", usage, "--at", "2025-11-01"]) == 0
    # 3,000 + 37,500 + 120,000 + 15,000 + 30,000 (see test_pricing_cost)
    assert capsys.readouterr().out.splitlines() == [
        "price version: anthropic/claude-sonnet-4-5@2025-09-29", "cost: $0.205500000 (205500000 nano-USD; 205500 micro-USD rounded up)"]
    assert run(["pricing", "cost", "--model", "text-embedding-3-small", "--usage", '{"input": 12}']) == 0
    assert capsys.readouterr().out.splitlines()[1] == "cost: $0.000000240 (240 nano-USD; 1 micro-USD rounded up)"
    assert run(["pricing", "cost", "--model", "gpt-5", "--usage", '{"input": 1000, "cached": 5}']) == 2
    assert run(["pricing", "cost", "--model", "gpt-5", "--usage", '{"input": 1.5}']) == 2


def test_format_usd() -> None:
    assert format_usd(205_500) == "$0.205500"
    assert format_usd(-4_000) == "-$0.004000"
    assert format_usd(12_345_678) == "$12.345678"


def test_a_name_matching_only_by_pattern_does_not_move_the_entry(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "l.json"
    src.write_bytes(b'{"claude-sonnet-4-5-turbo-preview": {"input_cost_per_token": 1e-05, '
                    b'"output_cost_per_token": 5e-05, "litellm_provider": "anthropic", "mode": "chat"}}')
    assert run(["pricing", "import", str(src), "--dry-run", "--effective-from", "2025-12-01"]) == 0
    out = capsys.readouterr().out
    assert "skipped: matches anthropic/claude-sonnet-4-5 only by a name pattern" in out
    assert "0 version(s) to add" in out


def test_equivalent_tier_spellings_are_not_a_change(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # LiteLLM spells the batch discount as explicit rates; ours is a 0.5 multiplier: same prices
    src = tmp_path / "l.json"
    src.write_bytes(b'{"text-embedding-3-small": {"input_cost_per_token": 2e-08, "output_cost_per_token": 0.0,'
                    b' "input_cost_per_token_batches": 1e-08, "output_cost_per_token_batches": 0.0,'
                    b' "litellm_provider": "openai", "max_input_tokens": 8191, "mode": "embedding"}}')
    assert run(["pricing", "import", str(src), "--dry-run", "--effective-from", "2025-12-01"]) == 0
    out = capsys.readouterr().out
    assert "= 1 unchanged" in out and "0 version(s) to add" in out, out
