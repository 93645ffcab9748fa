"""A wrapped single-row UPDATE against a raw execute + commit of the same statement, on SQLite,
PostgreSQL and MariaDB/MySQL; and the rollback of a 1,000-statement session.

Figures (ratios of medians in the same run, interleaved, so machine noise hits both sides):
- SQLite, the same `UPDATE t SET v = v + 1 WHERE id = ?` repeated with new params, on a 1,000-row
  and a 100,000-row table. Target (design): at most 3x.
- The first-seen statement: a new statement text each time (sqlglot parses it), same tables.
- PostgreSQL and MariaDB (127.0.0.1:5432 / :3306, database `test`): the same ratio, reported.
- Rollback of a 1,000-statement session: time per statement undone, against the raw statement.
- PostgreSQL and MariaDB/MySQL: per-entry undo (`Session.undo()`) of a one-row UPDATE, against the
  raw statement; target at most 10 ms.

    .venv/bin/python benchmarks/sql_update.py [--quick] [--only sqlite|postgresql|mysql]

`--only` runs one engine's lines (the same lines, the same order) to iterate on it faster.

Durability is `process` on both sides' terms: the journal is not fsynced per action, as the raw
side is not (SQLite's default synchronous setting, servers' own commit).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import goex

PG = "postgresql://postgres@127.0.0.1:5432/test"
MY = "mysql://root@127.0.0.1:3306/test"


def _median_us(samples: list[int]) -> float:
    return statistics.median(samples) / 1e3


def _interleave(n: int, wrapped: Callable[[int], None], raw: Callable[[int], None]) -> tuple[float, float]:
    g, r = [], []
    for i in range(n):
        t = time.perf_counter_ns()
        wrapped(i)
        g.append(time.perf_counter_ns() - t)
        t = time.perf_counter_ns()
        raw(i)
        r.append(time.perf_counter_ns() - t)
    return _median_us(g), _median_us(r)


def _report(label: str, gm: float, rm: float, n: int, target: float | None) -> None:
    ratio = gm / rm
    verdict = f"target <= {target:g}x: {'meets' if ratio <= target else 'MISSES'}" if target else "target: reported"
    print(f"{label}: {ratio:.1f}x raw execute+commit (goex {gm:.0f} µs, raw {rm:.0f} µs, median of {n}) -- {verdict}")


def _sqlite(rows: int, n: int, *, first_seen: bool = False) -> None:
    import apsw

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        for name in ("goex.db", "raw.db"):
            conn = apsw.Connection(str(root / name))
            conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v INT, pad TEXT)")
            with conn:
                conn.executemany("INSERT INTO t VALUES (?, 0, ?)", ((i, "x" * 40) for i in range(rows)))
            conn.close()
        raw = apsw.Connection(str(root / "raw.db"))
        with goex.Runtime(root, policy="permissive", durability="process",
                          databases={"main": "sqlite:///goex.db"}) as rt:
            s = rt.session()

            def text(i: int) -> str:  # a new text each time defeats the parse cache
                return f"UPDATE t SET v = v + {i + 1} WHERE id = ?" if first_seen else "UPDATE t SET v = v + 1 WHERE id = ?"

            def wrapped(i: int) -> None:
                result = s.execute({"type": "sql.execute", "db": "main", "sql": text(i), "params": [i % rows]})
                assert result.ok, result.error

            def plain(i: int) -> None:
                raw.execute("BEGIN")
                raw.execute(text(i), (i % rows,))
                raw.execute("COMMIT")

            gm, rm = _interleave(n, wrapped, plain)
        raw.close()
    label = f"sqlite UPDATE of one row, {rows:,}-row table" + (", first-seen statement text" if first_seen else "")
    _report(label, gm, rm, n, None if first_seen else 3)


def _server(kind: str, url: str, n: int) -> None:
    table = f"bench_{uuid.uuid4().hex[:8]}"
    rawtable = f"{table}_raw"  # the raw side writes a table of its own: goex's undo would see its writes as conflicts
    try:
        raw, placeholder = _raw(kind, url)
    except Exception as exc:  # noqa: BLE001 - a server that is not there is reported, not measured
        print(f"{kind} UPDATE of one row: not measured ({exc.__class__.__name__}: {exc}) -- target: reported")
        return
    cur = raw.cursor()
    try:
        for name in (table, rawtable):
            cur.execute(f"CREATE TABLE {name}(id INT PRIMARY KEY, v INT, pad VARCHAR(64))")
            cur.executemany(f"INSERT INTO {name} VALUES ({placeholder}, 0, {placeholder})",
                            [(i, "x" * 40) for i in range(1000)])
        raw.commit()
        with tempfile.TemporaryDirectory() as tmp:
            with goex.Runtime(tmp, policy="permissive", durability="process", databases={"db": url}) as rt:
                s = rt.session()

                def wrapped(i: int) -> None:
                    result = s.execute({"type": "sql.execute", "db": "db",
                                        "sql": f"UPDATE {table} SET v = v + 1 WHERE id = ?", "params": [i % 1000]})
                    assert result.ok, result.error

                def plain(i: int) -> None:
                    cur.execute(f"UPDATE {rawtable} SET v = v + 1 WHERE id = {placeholder}", (i % 1000,))
                    raw.commit()

                gm, rm = _interleave(n, wrapped, plain)
                _report(f"{kind} UPDATE of one row, 1,000-row table", gm, rm, n, None)
                t = time.perf_counter_ns()
                s.rollback()
                per = (time.perf_counter_ns() - t) / 1e3 / n
                print(f"{kind} rollback of a {n}-statement session: {per:.0f} µs per statement undone, "
                      f"{per / rm:.1f}x the raw statement -- target: reported")
    finally:
        cur.execute(f"DROP TABLE IF EXISTS {table}")
        cur.execute(f"DROP TABLE IF EXISTS {rawtable}")
        raw.commit()
        raw.close()


def _undo(kind: str, url: str, n: int) -> None:
    """Each entry undone on its own (`Session.undo()`, newest first), median time per entry against
    the raw one-row UPDATE + commit. Target (design): at most 10 ms per entry."""
    table = f"bench_undo_{uuid.uuid4().hex[:8]}"
    try:
        raw, mark = _raw(kind, url)
    except Exception as exc:  # noqa: BLE001 - a server that is not there is reported, not measured
        print(f"{kind} per-entry undo: not measured ({exc.__class__.__name__}: {exc}) -- target: reported")
        return
    cur = raw.cursor()
    try:
        for name in (table, f"{table}_raw"):
            cur.execute(f"CREATE TABLE {name}(id INT PRIMARY KEY, v INT, pad VARCHAR(64))")
            cur.executemany(f"INSERT INTO {name} VALUES ({mark}, 0, {mark})", [(i, "x" * 40) for i in range(1000)])
        raw.commit()
        plain = []
        for i in range(n):
            t = time.perf_counter_ns()
            cur.execute(f"UPDATE {table}_raw SET v = v + 1 WHERE id = {mark}", (i % 1000,))
            raw.commit()
            plain.append(time.perf_counter_ns() - t)
        with tempfile.TemporaryDirectory() as tmp:
            with goex.Runtime(tmp, policy="permissive", durability="process", databases={"db": url}) as rt:
                s = rt.session()
                for i in range(n):
                    assert s.execute({"type": "sql.execute", "db": "db", "sql": f"UPDATE {table} SET v = v + 1 "
                                      "WHERE id = ?", "params": [i % 1000]}).ok
                undo = []
                for _ in range(n):
                    t = time.perf_counter_ns()
                    assert len(s.undo()) == 1
                    undo.append(time.perf_counter_ns() - t)
        um, rm = _median_us(undo), _median_us(plain)
        verdict = "meets" if um <= 10_000 else "MISSES"
        print(f"{kind} per-entry undo of a one-row UPDATE: {um / 1e3:.1f} ms ({um / rm:.1f}x the raw statement, "
              f"{rm:.0f} µs; median of {n}) -- target <= 10 ms: {verdict}")
    finally:
        cur.execute(f"DROP TABLE IF EXISTS {table}")
        cur.execute(f"DROP TABLE IF EXISTS {table}_raw")
        raw.commit()
        raw.close()


def _raw(kind: str, url: str) -> tuple[Any, str]:
    """A raw connection to the server (autocommit off) and its driver's placeholder."""
    if kind == "postgresql":
        import psycopg

        return psycopg.connect(url, autocommit=False), "%s"
    import pymysql

    return pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", database="test",
                           autocommit=False), "%s"


def _sqlite_rollback(n: int) -> None:
    import apsw

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        conn = apsw.Connection(str(root / "goex.db"))
        conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v INT)")
        with conn:
            conn.executemany("INSERT INTO t VALUES (?, 0)", ((i,) for i in range(1000)))
        conn.close()
        with goex.Runtime(root, policy="permissive", durability="process",
                          databases={"main": "sqlite:///goex.db"}) as rt:
            s = rt.session()
            t = time.perf_counter_ns()
            for i in range(n):
                assert s.execute({"type": "sql.execute", "db": "main", "sql": "UPDATE t SET v = v + 1 WHERE id = ?",
                                  "params": [i % 1000]}).ok
            forward = (time.perf_counter_ns() - t) / 1e3 / n
            t = time.perf_counter_ns()
            undone = s.rollback()
            per = (time.perf_counter_ns() - t) / 1e3 / n
            assert len(undone) == n
    print(f"sqlite rollback of a {n:,}-statement session: {per:.0f} µs per statement undone, "
          f"{per / forward:.1f}x the wrapped statement ({forward:.0f} µs) -- target: reported")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=("sqlite", "postgresql", "mysql"), help="run one engine's lines only")
    args = parser.parse_args()
    quick, only = args.quick, args.only
    if only in (None, "sqlite"):
        _sqlite(1_000, 30 if quick else 300)
        _sqlite(100_000, 10 if quick else 60)
        _sqlite(1_000, 20 if quick else 100, first_seen=True)
        _sqlite_rollback(100 if quick else 1000)
    for kind, url in (("postgresql", PG), ("mysql", MY)):
        if only in (None, kind):
            _server(kind, url, 30 if quick else 300)
    for kind, url in (("postgresql", PG), ("mysql", MY)):
        if only in (None, kind):
            _undo(kind, url, 30 if quick else 200)


if __name__ == "__main__":
    main()
