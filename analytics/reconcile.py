"""Reconciliation: what the providers billed against what the gateway metered, per UTC day.

The gateway sees only the traffic routed through it. The providers' own cost
reports see everything billed, so the daily difference measures what bypassed
the gateway (other clients, keys used directly) or a price the catalog has
wrong. Reports are imported into ``provider_costs`` (migration 004) and
compared with ``usage_events`` by ``report``.

Accepted reports (``parse_report``):

- OpenAI, organization costs API (``GET /v1/organization/costs``): a page
  ``{"object": "page", "data": [bucket, ...]}`` or a list of pages; each bucket
  has ``start_time`` (Unix seconds, UTC day) and ``results[]`` with
  ``amount: {value, currency}`` (USD, a JSON number), ``line_item`` and
  ``project_id`` (null unless grouped by them).
- Anthropic, Admin API cost report (``GET /v1/organizations/cost_report``):
  ``{"data": [{"starting_at", "ending_at", "results": [...]}]}`` or a list of
  pages; ``results[].amount`` is a decimal string in cents ("123.45" is
  $1.2345), with ``currency``, ``description``, ``model`` and
  ``workspace_id``.
- CSV exports: a header row naming a date column (``date``, ``day``,
  ``usage_date_utc``, ``start_time``, ...), an amount column in USD (``cost_usd``,
  ``amount_usd``, ``cost``, ``amount``) or in cents (``cost_cents``,
  ``amount_cents``), and optionally ``line_item``/``description``, ``model``,
  ``project_id``/``workspace_id`` and ``currency``. The consoles' export
  columns are not documented and change; a file this does not recognise is
  refused with the columns it found, never guessed at.

Money is parsed from the text as ``Decimal`` (JSON numbers included) and
rounded once, half-even, to integer micro-USD. Only USD is accepted.
"""
from __future__ import annotations

import csv
import io
import json
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from clickhouse_connect.driver.client import Client

from llmgw.analytics.store import check_identifier
from llmgw.core.events import micro_of_nano

PROVIDERS = ("openai", "anthropic")
_MICRO = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class BilledCost:
    """One line of a provider's bill for one UTC day."""

    provider: str
    day: date
    line_item: str
    project_id: str
    model: str
    cost_micro_usd: int
    currency: str = "USD"

    @property
    def key(self) -> tuple[str, date, str, str, str]:
        return self.provider, self.day, self.line_item, self.project_id, self.model


@dataclass(frozen=True, slots=True)
class DayDelta:
    """Gateway-metered against billed spend of one provider on one UTC day."""

    day: date
    provider: str
    metered_micro_usd: int
    billed_micro_usd: int
    requests: int

    @property
    def delta_micro_usd(self) -> int:
        """Billed minus metered: positive is spend the gateway did not see."""
        return self.billed_micro_usd - self.metered_micro_usd


# ---- parsing (pure) -------------------------------------------------------------------------


def usd_to_micro(amount: Decimal) -> int:
    return int((amount * _MICRO).to_integral_value(rounding=ROUND_HALF_EVEN))


def cents_to_micro(amount: Decimal) -> int:
    return int((amount * 10_000).to_integral_value(rounding=ROUND_HALF_EVEN))


def _decimal(value: Any, what: str) -> Decimal:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{what}: not an amount: {value!r}")
    try:
        text = str(value).strip().replace(",", "").lstrip("$")
        return Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{what}: not an amount: {value!r}") from None


def _usd_only(currency: Any, what: str) -> str:
    code = str(currency or "usd").upper()
    if code != "USD":
        raise ValueError(f"{what}: currency {code}; only USD reports can be reconciled")
    return code


def _pages(doc: Any) -> Iterator[Mapping[str, Any]]:
    """Buckets of a page, of a list of pages, or of a bare list of buckets."""
    items = doc if isinstance(doc, list) else [doc]
    for item in items:
        if not isinstance(item, Mapping):
            raise ValueError(f"expected JSON objects, found {type(item).__name__}")
        if "results" in item:
            yield item
        elif isinstance(item.get("data"), list):
            yield from item["data"]
        else:
            raise ValueError("not a cost report: no `data` buckets and no `results`")


def parse_openai_costs(doc: Any) -> list[BilledCost]:
    """Buckets of the OpenAI organization costs API (USD amounts as JSON numbers)."""
    out = []
    for n, bucket in enumerate(_pages(doc)):
        if "start_time" not in bucket:
            raise ValueError(f"bucket {n}: no start_time (is this an OpenAI costs report?)")
        day = datetime.fromtimestamp(int(bucket["start_time"]), tz=timezone.utc).date()
        for r in bucket.get("results") or ():
            amount = r.get("amount")
            if not isinstance(amount, Mapping):
                raise ValueError(f"bucket {n}: result without an `amount` object (is this an OpenAI costs report?)")
            what = f"OpenAI costs {day}"
            out.append(BilledCost("openai", day, str(r.get("line_item") or ""), str(r.get("project_id") or ""),
                                  "", usd_to_micro(_decimal(amount.get("value"), what)),
                                  _usd_only(amount.get("currency"), what)))
    return out


def parse_anthropic_cost_report(doc: Any) -> list[BilledCost]:
    """Buckets of the Anthropic cost report (amounts in cents, as decimal strings)."""
    out = []
    for n, bucket in enumerate(_pages(doc)):
        if "starting_at" not in bucket:
            raise ValueError(f"bucket {n}: no starting_at (is this an Anthropic cost report?)")
        day = _parse_day(str(bucket["starting_at"]))
        for r in bucket.get("results") or ():
            what = f"Anthropic cost report {day}"
            if isinstance(r.get("amount"), Mapping):
                raise ValueError(f"{what}: `amount` is an object; expected a decimal string in cents")
            out.append(BilledCost("anthropic", day, str(r.get("description") or r.get("cost_type") or ""),
                                  str(r.get("workspace_id") or ""), str(r.get("model") or ""),
                                  cents_to_micro(_decimal(r.get("amount"), what)),
                                  _usd_only(r.get("currency"), what)))
    return out


_DATE_COLUMNS = ("date", "day", "usage_date_utc", "usage_date", "date_utc", "start_time", "starting_at",
                 "bucket_start", "start_date")
_USD_COLUMNS = ("cost_usd", "amount_usd", "cost", "amount", "amount_value", "cost_in_usd", "total_cost_usd")
_CENT_COLUMNS = ("cost_cents", "amount_cents")
_ITEM_COLUMNS = ("line_item", "description", "cost_type", "product", "item")
_PROJECT_COLUMNS = ("project_id", "project", "workspace_id", "workspace")


def _column(header: Sequence[str], names: Sequence[str]) -> str | None:
    return next((n for n in names if n in header), None)


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def parse_cost_csv(text: str, provider: str) -> list[BilledCost]:
    """A cost export as CSV (see the module docstring for the columns recognised)."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    if not reader.fieldnames:
        raise ValueError("empty CSV")
    names = {_norm(f): f for f in reader.fieldnames}
    header = list(names)
    day_col = _column(header, _DATE_COLUMNS)
    usd_col = _column(header, _USD_COLUMNS)
    cents_col = _column(header, _CENT_COLUMNS)
    if day_col is None or (usd_col is None and cents_col is None):
        raise ValueError(f"CSV columns {reader.fieldnames} not recognised: need a date column "
                         f"({', '.join(_DATE_COLUMNS)}) and an amount column "
                         f"({', '.join(_USD_COLUMNS + _CENT_COLUMNS)})")
    item_col, project_col = _column(header, _ITEM_COLUMNS), _column(header, _PROJECT_COLUMNS)
    model_col, currency_col = _column(header, ("model",)), _column(header, ("currency",))
    out = []
    for line, row in enumerate(reader, start=2):
        def get(col: str | None, row: dict[str, str] = row) -> str:
            return (row.get(names[col]) or "").strip() if col else ""

        if not get(day_col):
            continue
        what = f"CSV line {line}"
        amount = _decimal(get(cents_col) if cents_col else get(usd_col), what)
        micro = cents_to_micro(amount) if cents_col else usd_to_micro(amount)
        out.append(BilledCost(provider, _parse_day(get(day_col)), get(item_col), get(project_col),
                              get(model_col), micro, _usd_only(get(currency_col), what)))
    return out


def _parse_day(text: str) -> date:
    """'2026-11-04', '2026-11-04T00:00:00Z', '2026-11-04 00:00:00+00:00' or Unix seconds -> UTC date."""
    text = text.strip()
    if text.isdigit():
        return datetime.fromtimestamp(int(text), tz=timezone.utc).date()
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a date: {text!r}") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.date()


def parse_report(data: bytes | str, provider: str) -> list[BilledCost]:
    """A provider's cost report (JSON from its API, or a CSV export), as daily bill lines."""
    if provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}, not {provider!r}")
    text = data.decode("utf-8-sig") if isinstance(data, bytes) else data
    if text.lstrip()[:1] in ("{", "["):
        doc = json.loads(text, parse_float=Decimal)     # exact: never through float
        return parse_openai_costs(doc) if provider == "openai" else parse_anthropic_cost_report(doc)
    return parse_cost_csv(text, provider)


def combine(costs: Iterable[BilledCost]) -> list[BilledCost]:
    """Lines with the same (provider, day, line item, project, model) added up, in key order."""
    total: dict[tuple[str, date, str, str, str], BilledCost] = {}
    for c in costs:
        prev = total.get(c.key)
        total[c.key] = c if prev is None else BilledCost(*c.key, prev.cost_micro_usd + c.cost_micro_usd,
                                                         c.currency)
    return [total[k] for k in sorted(total)]


# ---- ClickHouse -----------------------------------------------------------------------------

_COLUMNS = ("provider", "day", "line_item", "project_id", "model", "cost_micro_usd", "currency", "source",
            "imported_at")


def import_costs(client: Client, db: str, costs: Sequence[BilledCost], source: str,
                 imported_at_ms: int | None = None) -> int:
    """Append one import; for the days it covers it supersedes earlier imports. Returns rows written."""
    rows = combine(costs)
    if not rows:
        return 0
    stamp = datetime.fromtimestamp((imported_at_ms or time.time_ns() // 1_000_000) / 1000, tz=timezone.utc)
    data = [[c.provider, c.day, c.line_item, c.project_id, c.model, c.cost_micro_usd, c.currency, source, stamp]
            for c in rows]
    client.insert("provider_costs", data, column_names=_COLUMNS, database=check_identifier(db))
    return len(rows)


def _latest_costs(db: str) -> str:
    return (f"SELECT provider, day, sum(cost_micro_usd) AS billed FROM {db}.provider_costs"
            f" WHERE (provider, day, imported_at) IN (SELECT provider, day, max(imported_at)"
            f"  FROM {db}.provider_costs GROUP BY provider, day)"
            "  AND day >= {since:Date} AND day < {until:Date}"
            "  AND (empty({providers:Array(String)}) OR has({providers:Array(String)}, provider))"
            " GROUP BY provider, day")


def report(client: Client, db: str, since: date, until: date,
           providers: Sequence[str] = ()) -> list[DayDelta]:
    """Per UTC day in [since, until) and provider: metered (usage_events) vs billed (provider_costs)."""
    db = check_identifier(db)
    sql = f"""
        SELECT day, provider, m.metered, b.billed, m.requests
        FROM
        (
            SELECT toDate(ts_start) AS day, provider, sum(cost_nano_usd) AS metered,
                   countIf(kind = 'usage') AS requests
            FROM {db}.usage_events FINAL
            WHERE ts_start >= toDateTime64({{since:Date}}, 3, 'UTC') AND ts_start < toDateTime64({{until:Date}}, 3, 'UTC')
              AND (empty({{providers:Array(String)}}) OR has({{providers:Array(String)}}, provider))
            GROUP BY day, provider
        ) AS m
        FULL OUTER JOIN ({_latest_costs(db)}) AS b USING (day, provider)
        ORDER BY day, provider
    """
    rows = client.query(sql, parameters={"since": since, "until": until, "providers": list(providers)}).result_rows
    return [DayDelta(day=r[0], provider=str(r[1]), metered_micro_usd=micro_of_nano(int(r[2])),
                     billed_micro_usd=int(r[3]), requests=int(r[4])) for r in rows]


__all__ = ["PROVIDERS", "BilledCost", "DayDelta", "cents_to_micro", "combine", "import_costs",
           "parse_anthropic_cost_report", "parse_cost_csv", "parse_openai_costs", "parse_report", "report",
           "usd_to_micro"]
