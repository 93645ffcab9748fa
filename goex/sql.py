"""Canonical dumps of databases, for comparing states: `goex.sql.dump(url)`.

Each engine's dump lists settings, every schema object (tables with columns, types, defaults,
constraints and foreign keys; indexes; triggers; views; sequences or AUTOINCREMENT positions) and
every row, sorting everything that has no defined order (rows included, duplicates kept). goex's
own objects (schema `goex`, names starting `goex_`) never appear. Two databases in the same
logical state give the same text; hidden row ids (SQLite rowids of tables whose primary key is
not an INTEGER PRIMARY KEY, PostgreSQL ctids) are not part of it.
"""

from __future__ import annotations

import os
from pathlib import Path

from .adapters.sql.adapter import parse_databases

__all__ = ["dump"]


def dump(url: str, root: str | os.PathLike[str] | None = None) -> str:
    """The canonical text of the database at `url` (`sqlite:///PATH`, relative to `root` or the
    current folder; `postgresql://...`; `mysql://...`)."""
    db = parse_databases({"db": url}, Path(root) if root is not None else Path.cwd())["db"]
    if db.kind == "sqlite":
        from .adapters.sql.sqlite import dump_path
        assert db.path is not None
        return dump_path(db.path)
    if db.kind == "postgresql":
        from .adapters.sql.postgres import dump as pg_dump
        return pg_dump(db.url)
    from .adapters.sql.mysql import dump as my_dump
    return my_dump(db.url)
