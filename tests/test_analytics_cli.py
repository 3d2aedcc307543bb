"""`llmgw spend`, `trace` and `chargeback` through argparse, as the llmgw CLI wires them."""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import pytest

from llmgw.analytics import cli
from tests.fixtures.chdb import AnalyticsDB, usage_event


def _run(argv: list[str], environ: dict[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmgw")
    cli.register(parser.add_subparsers(dest="command", required=True), environ=environ or {})
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture
def db_args(analytics_db: AnalyticsDB) -> list[str]:
    analytics_db.sink.insert([usage_event(i, workspace=f"ws-{i % 2}", session_id="sess-9") for i in range(4)])
    return ["--dsn", analytics_db.dsn, "--database", analytics_db.database]


def test_dsn_resolution() -> None:
    assert cli.resolve_dsn("chdb:///x", {"LLMGW_CLICKHOUSE_DSN": "http://h"}) == "chdb:///x"
    assert cli.resolve_dsn(None, {"LLMGW_CLICKHOUSE_DSN": "http://h"}) == "http://h"
    assert cli.resolve_dsn(None, {"LLMGW_DATA_DIR": "/srv/llmgw"}) == "chdb:///srv/llmgw/clickhouse"
    assert cli.resolve_dsn(None, {}) == f"chdb://{Path('llmgw-data').resolve()}/clickhouse"


def test_spend(db_args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["spend", *db_args, "--since", "2026-11-01", "--until", "2026-12-01", "--by", "workspace"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["workspace", "requests"] and len(lines) == 3
    assert _run(["spend", *db_args, "--since", "2026-11-01", "--until", "2026-12-01", "--by", "", "--json"]) == 0
    [total] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert total["requests"] == 4 and total["cost_micro_usd"] == sum(1_234_567 + i for i in range(4))


def test_spend_with_env_dsn(analytics_db: AnalyticsDB, capsys: pytest.CaptureFixture[str]) -> None:
    environ = {"LLMGW_CLICKHOUSE_DSN": f"{analytics_db.dsn}?database={analytics_db.database}"}
    analytics_db.sink.insert([usage_event(1)])
    assert _run(["spend", "--since", "2026-11-04", "--until", "2026-11-05", "--json"], environ) == 0
    assert json.loads(capsys.readouterr().out)["requests"] == 1


def test_trace(db_args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["trace", "sess-9", *db_args]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[0] == "start_utc" and len(out) == 5
    assert out[-1].split()[-1] == "4.938274"                      # running total, USD
    assert _run(["trace", "no-such-session", *db_args]) == 1


def test_chargeback_to_file(db_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "2026-11.csv"
    assert _run(["chargeback", *db_args, "--month", "2026-11", "--by", "workspace,tag:project",
                 "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open(newline="")))
    assert [r["workspace"] for r in rows] == ["ws-0", "ws-1", ""]
    assert rows[-1]["month"] == "TOTAL" and rows[-1]["cost_usd"] == "4.938274"
    assert not (tmp_path / "2026-11.csv.partial").exists()
    err = capsys.readouterr().err
    assert "chargeback 2026-11 by workspace,tag:project" in err and "2 rows" in err and "$4.938274" in err


def test_bad_arguments(db_args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _run(["spend", *db_args, "--by", "colour"])
    assert exit_info.value.code == 2
    assert _run(["chargeback", *db_args, "--month", "2026-13"]) == 2
    assert "month must look like" in capsys.readouterr().err
