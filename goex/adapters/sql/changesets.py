"""Composing the undo of several SQLite changesets into one, without losing a conflict.

Undoing entries one by one, newest first, applies each inverted changeset in turn; each apply
checks that the rows it touches are as that entry left them. SQLite's changegroup composes the
inverted changesets into one that goes from the state now straight to the oldest before-state,
but it checks less: where two entries changed the same column of a row it keeps only the newest
expected value, and a row whose changes cancel out (inserted then deleted, set and set back)
vanishes from the result. `RowChain` walks the changesets oldest first and supplies both missing
checks: every row's states must link (what an entry left is what the next one found), and the
rows the composition drops must be, now, as the newest entry left them.
"""

from __future__ import annotations

from typing import Any, Iterable

import apsw

_ABSENT = None  # a row that does not exist
Key = tuple[str, tuple[Any, ...]]  # (table, primary key values; the rowid for tables without one)


def compose_inverse(changesets_newest_first: Iterable[bytes]) -> bytes:
    """One changeset undoing all of them: their inverses, newest first, composed."""
    builder = apsw.ChangesetBuilder()
    try:
        for changeset in changesets_newest_first:
            builder.add(apsw.Changeset.invert(changeset))
        return builder.output()
    finally:
        builder.close()


class RowChain:
    """The rows a series of changesets touched, and what is known of each after the last one."""

    def __init__(self) -> None:
        self.known: dict[Key, dict[int, Any] | None] = {}
        self.columns: dict[str, int] = {}  # table -> column count in the changesets
        self.pks: dict[str, list[int]] = {}  # table -> its primary key columns in the changesets
        self.broken: Key | None = None  # the first row whose states do not link

    def add(self, changeset: bytes) -> None:
        """Walk the next (newer) changeset; sets `broken` at the first row that does not link."""
        for change in apsw.Changeset.iter(changeset):
            table = change.name
            self.columns[table] = change.column_count
            self.pks[table] = sorted(change.pk_columns)
            key = _key(change)
            found = _ABSENT if change.op == "INSERT" else _defined(change.old)
            if key in self.known and self.broken is None and not _links(self.known[key], found):
                self.broken = key
            if change.op == "DELETE":
                self.known[key] = _ABSENT
            elif change.op == "INSERT":
                self.known[key] = _defined(change.new)
            else:
                self.known[key] = {**(self.known.get(key) or {}), **(found or {}), **_defined(change.new)}

    def dropped(self, composed: bytes) -> list[tuple[Key, dict[int, Any] | None]]:
        """Rows touched that the composed changeset does not check: with their expected state now."""
        kept = set()
        for change in apsw.Changeset.iter(composed):
            kept.add(_key(change))
        return [(key, state) for key, state in self.known.items() if key not in kept]


def _key(change: apsw.TableChange) -> Key:
    row = (change.old if change.op != "INSERT" else change.new) or ()
    return change.name, tuple(row[i] for i in sorted(change.pk_columns))


def _defined(values: tuple[Any, ...] | None) -> dict[int, Any]:
    return {i: v for i, v in enumerate(values or ()) if v is not apsw.no_change}


def _links(left: dict[int, Any] | None, found: dict[int, Any] | None) -> bool:
    """Whether a row as one change left it (`left`) is the row the next change found."""
    if left is _ABSENT or found is _ABSENT:
        return left is found
    return all(_same(left[i], v) for i, v in found.items() if i in left)


def _same(a: Any, b: Any) -> bool:
    # SQLite's `IS`: 1 and 1.0 are the same value; text and blob never are
    return a == b and isinstance(a, (bytes, bytearray)) == isinstance(b, (bytes, bytearray))


def row_matches(conn: apsw.Connection, table: str, column_count: int, key: tuple[Any, ...], pk: list[int],
                expected: dict[int, Any] | None) -> bool:
    """Whether the row `key` of `table` is now as `expected` (None: absent)."""
    exprs = [_quoted(r[0]) for r in conn.execute("SELECT name FROM pragma_table_info(?) ORDER BY cid", (table,))]
    if column_count == len(exprs) + 1:  # a table without a primary key: the rowid is column 0
        exprs = ["_rowid_", *exprs]
    if len(exprs) != column_count:
        return False
    where = " AND ".join(f"{exprs[i]} IS ?" for i in pk)
    rows = conn.execute(f"SELECT {', '.join(exprs)} FROM {_quoted(table)} WHERE {where}", key).fetchall()
    if expected is _ABSENT:
        return not rows
    return len(rows) == 1 and all(_same(rows[0][i], v) for i, v in expected.items())


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
