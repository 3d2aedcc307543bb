"""CSV cells a spreadsheet will not run: every CSV the product writes goes through ``csv_writer``.

Group values in an export (user names, tag values, model names) come from
clients and admins. A cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a
carriage return is a formula to Excel, LibreOffice and Google Sheets
(``=HYPERLINK(...)``, ``=cmd|' /C calc'!A0``), run when finance opens the file.
As OWASP's CSV-injection page recommends, such a cell is prefixed with a single
quote (shown as text, never evaluated) and always quoted. Numbers the gateway
formats itself (``-0.5``, ``12``) are left as numbers, so sums still work.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Protocol

FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"^[+-]?\d+(\.\d+)?$")
_NEEDS_QUOTES = (",", '"', "\n", "\r")


def csv_cell(value: object) -> str:
    """One cell as RFC 4180 text: neutralized if it could start a formula, quoted when needed."""
    text = "" if value is None else str(value)
    quote = False
    if text.startswith(FORMULA_LEADS) and not _NUMBER.match(text):
        text, quote = "'" + text, True
    if quote or any(c in text for c in _NEEDS_QUOTES):
        return '"' + text.replace('"', '""') + '"'
    return text


class _Sink(Protocol):
    def write(self, text: str, /) -> int: ...


class CsvWriter:
    """``csv.writer``'s ``writerow``, with every cell through ``csv_cell``; lines end in ``\\n``."""

    __slots__ = ("_file",)

    def __init__(self, file: _Sink) -> None:
        self._file = file

    def writerow(self, row: Iterable[object]) -> None:
        self._file.write(",".join(csv_cell(c) for c in row) + "\n")


def csv_writer(file: _Sink) -> CsvWriter:
    return CsvWriter(file)


__all__ = ["FORMULA_LEADS", "CsvWriter", "csv_cell", "csv_writer"]
