"""Read an uploaded CSV into named, typed columns and rows (one JSON object per row)."""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from modelport.errors import BadRequestError

MAX_COLUMNS = 500
_NOT_NAME = re.compile(r"[^a-z0-9_]+")


def snake_case(header: str) -> str:
    """'Fixed Acidity' -> 'fixed_acidity': names usable as signature fields."""
    name = _NOT_NAME.sub("_", header.strip().strip('"').lower()).strip("_")
    if not name or name[0].isdigit():
        name = f"c_{name}"
    return name[:64]


@dataclass(frozen=True)
class ParsedCsv:
    columns: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    sha256: str


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_csv(data: bytes, max_rows: int) -> ParsedCsv:
    """Header row first; ',' or ';' separated; a column is numeric when every value is a finite
    number (empty cells are missing values)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadRequestError("the CSV is not UTF-8 text") from None
    first_line = text.split("\n", 1)[0]
    delimiter = ";" if first_line.count(";") > first_line.count(",") else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        return _parse_records(reader, data, max_rows)
    except csv.Error as exc:
        # The csv module's limits and syntax errors (a field over its size limit, a quote
        # left open at the end of the file), with the line where reading stopped.
        raise BadRequestError(
            f"the CSV cannot be read at line {reader.line_num}: {_csv_problem(exc)}"
        ) from None


def _csv_problem(exc: csv.Error) -> str:
    text = str(exc)
    if text.startswith("field larger than field limit"):
        return f"a value is longer than {csv.field_size_limit()} characters"
    return text


def _parse_records(reader: Iterator[list[str]], data: bytes, max_rows: int) -> ParsedCsv:
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        raise BadRequestError("the CSV is empty: the first line must name the columns")
    names = [snake_case(h) for h in header]
    if len(names) > MAX_COLUMNS:
        raise BadRequestError(
            f"the CSV has {len(names)} columns; at most {MAX_COLUMNS} are allowed"
        )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise BadRequestError(f"the CSV names columns {duplicates} more than once")
    raw_rows: list[list[str]] = []
    for line_number, record in enumerate(reader, start=2):
        if not record or not any(cell.strip() for cell in record):
            continue
        if len(record) != len(names):
            raise BadRequestError(
                f"CSV line {line_number} has {len(record)} values; the header names {len(names)}"
            )
        raw_rows.append([cell.strip() for cell in record])
        if len(raw_rows) > max_rows:
            raise BadRequestError(f"the CSV has more than {max_rows} rows")
    if not raw_rows:
        raise BadRequestError("the CSV has a header but no rows")
    numeric = [
        all(row[i] == "" or _number(row[i]) is not None for row in raw_rows)
        for i in range(len(names))
    ]
    rows = [
        {
            name: (None if cell == "" else _number(cell) if is_number else cell)
            for name, cell, is_number in zip(names, row, numeric, strict=True)
        }
        for row in raw_rows
    ]
    columns = [
        {"name": name, "type": "float" if is_number else "string", "source_name": source.strip()}
        for name, is_number, source in zip(names, numeric, header, strict=True)
    ]
    return ParsedCsv(columns=columns, rows=rows, sha256=hashlib.sha256(data).hexdigest())
