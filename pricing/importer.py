"""Plan and write a price import: compare incoming entries with the versions in force, keep what changes.

Incoming entries (from LiteLLM's file or our own format) are overlaid on the
entry in force at the import's instant: stated fields replace ours, missing
fields keep ours. An entry whose charges come out identical is left alone; a
changed or new one becomes a NEW version effective from the import's instant,
appended to the overrides file. History is never rewritten.

``context_window`` and ``max_output_tokens`` bound the worst-case estimate, so an
import only ever raises them; lower them by editing the overrides file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import orjson

from llmgw.core.files import atomic_write
from llmgw.pricing.catalog import FORMAT, Catalog, UnknownModel
from llmgw.pricing.instant import format_instant, parse_instant_ms
from llmgw.pricing.price import CatalogError, Price, overlay

NEW, CHANGED, UNCHANGED, SKIPPED = "new", "changed", "unchanged", "skipped"


@dataclass(frozen=True, slots=True)
class Change:
    action: str                                 # new | changed | unchanged | skipped
    key: str                                    # provider/model in our catalog
    name: str                                   # the model name in the imported file
    diffs: tuple[tuple[str, str, str], ...] = ()  # (field, before, after); "" when absent
    price: Price | None = None                  # the version to write, for new and changed
    reason: str = ""


def flatten(value: object, prefix: str = "") -> dict[str, str]:
    if isinstance(value, Mapping):
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: str(value)}


def diff(before: Price | None, after: Price) -> tuple[tuple[str, str, str], ...]:
    old = flatten(before.semantic()) if before else {}
    new = flatten(after.semantic())
    return tuple((k, old.get(k, ""), new.get(k, "")) for k in sorted(old.keys() | new.keys())
                 if old.get(k) != new.get(k))


def plan_import(catalog: Catalog, incoming: Iterable[Mapping[str, object]], effective_from_ms: int | None,
                *, now_ms: int, providers: set[str] | None = None, only_known: bool = False,
                source: str = "") -> list[Change]:
    """What an import would change. ``effective_from_ms`` None: each entry's own, else ``now_ms``.

    Several imported names can land on one entry (``gpt-4o`` and a dated
    snapshot): the entry's own name wins, else the first; another name whose
    prices differ from the winner's is reported as skipped.
    """
    skipped: list[Change] = []
    by_key: dict[str, list[Change]] = {}
    for entry in incoming:
        name, provider = str(entry.get("model", "")), str(entry.get("provider", ""))
        if providers is not None and provider not in providers:
            continue
        ts = effective_from_ms
        if ts is None:
            own = entry.get("effective_from")
            ts = parse_instant_ms(own) if isinstance(own, str) else now_ms
        change = _plan_one(catalog, entry, name, provider, ts, only_known, source)
        if change.action == SKIPPED:
            skipped.append(change)
        else:
            by_key.setdefault(change.key, []).append(change)
    out: list[Change] = []
    for key, group in by_key.items():
        own = [c for c in group if key.split("/", 1)[1] == c.name]
        winner = (own or group)[0]
        out.append(winner)
        for c in group:
            if c is not winner and c.price is not None and winner.price is not None \
                    and c.price.semantic() != winner.price.semantic():
                out.append(Change(SKIPPED, key, c.name,
                                  reason=f"also names {key}; used {winner.name!r}, whose prices differ"))
    return out + skipped


def _plan_one(catalog: Catalog, entry: Mapping[str, object], name: str, provider: str, ts: int,
              only_known: bool, source: str) -> Change:
    key = f"{provider}/{name}"
    try:
        current: Price | None = catalog.price_at(name, ts, provider=provider or None)
    except UnknownModel:
        current = None
    if current is None and only_known:
        return Change(SKIPPED, key, name, reason="not in the catalog (--only-known)")
    base: Mapping[str, object] = current.to_entry() if current else {"provider": provider, "model": name}
    merged = overlay(base, entry, additive=True)
    merged["effective_from"] = format_instant(ts)
    merged.pop("version", None)
    if source:
        merged["source"] = source
    merged.pop("note", None)
    try:
        price = Price.from_entry(merged, f"import of {name!r}")
    except CatalogError as exc:
        return Change(SKIPPED, key, name, reason=str(exc))
    if current is not None and current.effective_from_ms == ts:
        price = price.with_version(f"{price.default_version}~{price.content_hash()}")  # same-instant correction
    changes = diff(current, price)
    if current is not None and not changes:
        return Change(UNCHANGED, current.key, name)
    if current is not None and name not in (current.model, current.key, *current.aliases):
        return Change(SKIPPED, current.key, name, changes,
                      reason=f"matches {current.key} only by a name pattern and its prices differ; "
                             f"import it under {current.model!r} or add the name as an alias")
    return Change(CHANGED if current else NEW, price.key, name, changes, price)


def to_write(changes: Iterable[Change]) -> list[Price]:
    return [c.price for c in changes if c.action in (NEW, CHANGED) and c.price is not None]


def write_overrides(path: Path, prices: list[Price]) -> None:
    """Append versions to the overrides file (created if missing), atomically."""
    entries: list[object] = []
    if path.exists():
        doc = orjson.loads(path.read_bytes())
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("entries"), list):
            raise CatalogError(f"{path}: not an llmgw price file; refusing to overwrite it")
        entries = doc["entries"]
    entries += [p.to_entry() for p in prices]
    data = orjson.dumps({"format": FORMAT, "entries": entries}, option=orjson.OPT_INDENT_2) + b"\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, binary=True) as f:
        f.write(data)


def format_changes(changes: list[Change], effective: str, *, verbose_new: bool = True) -> list[str]:
    lines: list[str] = []
    unchanged = 0
    for c in changes:
        if c.action == UNCHANGED:
            unchanged += 1
        elif c.action == SKIPPED:
            lines.append(f"! {c.key} ({c.name!r}) skipped: {c.reason}")
        else:
            mark, what = ("+", "new entry") if c.action == NEW else ("~", "new version")
            version = c.price.version if c.price else ""
            lines.append(f"{mark} {c.key} ({c.name!r}) {what} {version}")
            if c.action == CHANGED or verbose_new:
                for field, before, after in c.diffs:
                    lines.append(f"    {field}: {before or '-'} -> {after or '-'}")
    lines.append(f"= {unchanged} unchanged")
    n = len(to_write(changes))
    lines.append(f"{n} version(s) to add, effective {effective}")
    return lines
