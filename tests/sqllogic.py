"""A small sqllogictest runner: reads the scripts, runs each record that applies to an engine on a
connection, and puts query results in the form the scripts compare.

The format (sqllogictest's own, as SQLite's test suite uses it): records are separated by blank
lines; `#` starts a comment line.

- `statement ok` / `statement error`, then the SQL.
- `query <types> [nosort|rowsort|valuesort] [label]`, then the SQL, a `----` line and the
  expected values, one per line (or `N values hashing to MD5` when there are more than the
  `hash-threshold`). Types are one letter a column: `I` integer, `R` real (printed `%.3f`),
  `T` text. NULL prints as `NULL`, the empty string as `(empty)`, characters outside printable
  ASCII as `@`. `rowsort` sorts the rows, `valuesort` every value, `nosort` keeps the order.
- `skipif <engine>` / `onlyif <engine>` lines before a record (or before `halt`) say which
  engines it is for; `halt` ends the script for the engines it applies to; `hash-threshold N`
  sets the threshold.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, localcontext
from pathlib import Path
from typing import Any, Iterator


@dataclass
class Record:
    """One `statement` or `query` record of a script."""

    path: Path
    line: int  # where the record starts (1-based)
    kind: str  # "statement" | "query"
    sql: str
    error: bool = False  # `statement error`
    types: str = ""
    sort: str = "nosort"
    expected: list[str] = field(default_factory=list)
    threshold: int = 0  # the hash-threshold in force

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"


def _applies(conditions: list[tuple[str, str]], engine: str) -> bool:
    return all((engine != name) if how == "skipif" else (engine == name) for how, name in conditions)


def records(path: Path, engine: str) -> Iterator[Record]:
    """The records of the script at `path` that apply to `engine`, in order, up to a `halt` for it."""
    lines = path.read_text(encoding="utf-8").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    threshold = 0
    i = 0
    while i < len(lines):
        # one block: lines up to the next blank line, comments dropped
        while i < len(lines) and not lines[i].strip():
            i += 1
        start = i
        block: list[str] = []
        while i < len(lines) and lines[i].strip():
            if not lines[i].startswith("#"):
                block.append(lines[i])
            i += 1
        conditions: list[tuple[str, str]] = []
        while block and block[0].split()[0] in ("skipif", "onlyif"):
            words = block.pop(0).split()
            conditions.append((words[0], words[1]))
        if not block:
            continue
        head = block[0].split()
        if head[0] == "halt":
            if _applies(conditions, engine):
                return
            continue
        if head[0] == "hash-threshold":
            threshold = int(head[1])
            continue
        if head[0] not in ("statement", "query"):
            raise ValueError(f"{path.name}:{start + 1}: unknown record {block[0]!r}")
        if not _applies(conditions, engine):
            continue
        if head[0] == "statement":
            yield Record(path, start + 1, "statement", "\n".join(block[1:]), error=head[1] == "error",
                         threshold=threshold)
            continue
        body = block[1:]
        cut = body.index("----") if "----" in body else len(body)
        sort = head[2] if len(head) > 2 else "nosort"
        yield Record(path, start + 1, "query", "\n".join(body[:cut]), types=head[1], sort=sort,
                     expected=body[cut + 1:], threshold=threshold)


# -- results ---------------------------------------------------------------------------------------


def _real(value: float) -> str:
    """`%.3f` as SQLite's printf writes it: at most 16 significant digits, then zeros."""
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    with localcontext() as context:
        context.prec = 400  # room for any double's integer digits
        return str(Decimal(f"{value:.15e}").quantize(Decimal("0.001"), rounding=ROUND_HALF_UP))


def _integer(value: Any) -> int:
    if isinstance(value, (int, float, Decimal)):
        return int(value)
    match = re.match(r"\s*[+-]?\d+", str(value))
    return int(match.group()) if match else 0


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        match = re.match(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", str(value))
        return float(match.group()) if match else 0.0


def cell(value: Any, kind: str) -> str:
    """One value as a script prints it, for a column of type `kind` (I, R or T)."""
    if isinstance(value, dict) and set(value) == {"$base64"}:  # goex's JSON form of bytes
        value = base64.b64decode(value["$base64"])
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        value = int(value)
    if kind == "I":
        return str(_integer(value))
    if kind == "R":
        return _real(_number(value))
    text = value.decode("latin-1") if isinstance(value, (bytes, bytearray, memoryview)) else str(value)
    if text == "":
        return "(empty)"
    return "".join(c if " " <= c <= "~" else "@" for c in text)


def values(record: Record, rows: list[list[Any]]) -> list[str]:
    """The rows of a query, formatted by the record's types and sorted by its sort mode."""
    shaped = [[cell(v, record.types[i] if i < len(record.types) else "T") for i, v in enumerate(row)]
              for row in rows]
    if record.sort == "rowsort":
        shaped.sort()
    flat = [v for row in shaped for v in row]
    if record.sort == "valuesort":
        flat.sort()
    return flat


def compared(record: Record, flat: list[str]) -> list[str]:
    """The lines a script holds for these values: themselves, or their hash past the threshold."""
    if record.threshold and len(flat) > record.threshold:
        digest = hashlib.md5("".join(f"{v}\n" for v in flat).encode()).hexdigest()
        return [f"{len(flat)} values hashing to {digest}"]
    return flat
