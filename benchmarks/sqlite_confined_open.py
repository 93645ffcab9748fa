"""What SQLite confinement costs per action: the checks before every use (the file found through
the workspace's confined resolver, its sidecars, the TEMP schema) and the dry run's count of the
rows each table had touched (`all_rows`, a preupdate hook).

Figures (ratios of medians in the same run, interleaved, so machine noise hits both sides):
- One-row `UPDATE t SET v = v + 1 WHERE id = ?` through goex, with the checks, against the same
  runtime with the checks replaced by a bare stat of the file (what the engine did before).
- The checks alone, in µs, and as a share of the wrapped UPDATE.
- The dry run of `DELETE FROM t WHERE 1` on a 100,000-row table (preview only: `session.check`),
  against a raw BEGIN / DELETE / ROLLBACK: the hook is called once per row.

    .venv/bin/python benchmarks/sqlite_confined_open.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import apsw

import goex
from goex.adapters.sql import sqlite as engine_module


def _median_us(samples: list[int]) -> float:
    return statistics.median(samples) / 1e3


def _interleave(n: int, a: Callable[[int], None], b: Callable[[int], None]) -> tuple[float, float]:
    x, y = [], []
    for i in range(n):
        t = time.perf_counter_ns()
        a(i)
        x.append(time.perf_counter_ns() - t)
        t = time.perf_counter_ns()
        b(i)
        y.append(time.perf_counter_ns() - t)
    return _median_us(x), _median_us(y)


def _unchecked(self: Any) -> tuple[Any, os.stat_result | None]:
    """The engine's view of its file before confinement: a stat by path, nothing else."""
    try:
        st = os.stat(self.path)
    except FileNotFoundError:
        st = None
    return engine_module._File(Path(self.path), None, None), st


def _make(path: Path, rows: int) -> None:
    conn = apsw.Connection(str(path))
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v INT, pad TEXT)")
    with conn:
        conn.executemany("INSERT INTO t VALUES (?, 0, ?)", ((i, "x" * 40) for i in range(rows)))
    conn.close()


def update(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        roots = [Path(tmp) / "checked", Path(tmp) / "bare"]
        for root in roots:
            root.mkdir()
            _make(root / "app.db", 1000)
        checked = goex.Runtime(roots[0], policy="permissive", durability="process", databases={"main": "sqlite:///app.db"})
        bare = goex.Runtime(roots[1], policy="permissive", durability="process", databases={"main": "sqlite:///app.db"})
        bare_engine = bare.adapter("sql").engine("main")  # type: ignore[attr-defined]
        bare_engine._file = _unchecked.__get__(bare_engine)  # type: ignore[method-assign]
        sc, sb = checked.session(), bare.session()
        action = {"type": "sql.execute", "db": "main", "sql": "UPDATE t SET v = v + 1 WHERE id = ?"}

        def run(s: goex.Session) -> Callable[[int], None]:
            def go(i: int) -> None:
                assert s.execute({**action, "params": [i % 1000]}).ok
            return go

        gm, bm = _interleave(n, run(sc), run(sb))
        engine = checked.adapter("sql").engine("main")  # type: ignore[attr-defined]
        samples = []
        for _ in range(n):
            t = time.perf_counter_ns()
            engine._file()
            samples.append(time.perf_counter_ns() - t)
        checks = _median_us(samples)
        checked.close()
        bare.close()
    print(f"sqlite UPDATE of one row with confinement checks: {gm / bm:.2f}x the same without them "
          f"(checked {gm:.0f} µs, bare {bm:.0f} µs, median of {n}) -- target <= 1.10x: "
          f"{'meets' if gm / bm <= 1.10 else 'MISSES'}")
    print(f"  the checks alone: {checks:.0f} µs per use (twice per write action: dry run and stage), "
          f"{2 * checks / gm:.0%} of the wrapped UPDATE")


def bulk_preview(n: int, rows: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        _make(root / "app.db", rows)
        _make(root / "raw.db", rows)
        raw = apsw.Connection(str(root / "raw.db"))
        with goex.Runtime(root, policy="permissive", durability="process", databases={"main": "sqlite:///app.db"}) as rt:
            s = rt.session()

            def previewed(i: int) -> None:
                _, preview = s.check({"type": "sql.execute", "db": "main", "sql": "DELETE FROM t WHERE 1"})
                assert preview["all_rows"] == ["t"]

            def plain(i: int) -> None:
                raw.execute("BEGIN")
                raw.execute("DELETE FROM t WHERE 1")
                raw.execute("ROLLBACK")

            gm, rm = _interleave(n, previewed, plain)
        raw.close()
    print(f"sqlite preview of DELETE ... WHERE 1 on {rows:,} rows (dry run with all_rows): {gm / rm:.1f}x a raw "
          f"BEGIN/DELETE/ROLLBACK (goex {gm / 1e3:.0f} ms, raw {rm / 1e3:.0f} ms, median of {n}) -- target: reported")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (CI smoke run)")
    quick = parser.parse_args().quick
    update(200 if quick else 2000)
    bulk_preview(3 if quick else 9, 20_000 if quick else 100_000)


if __name__ == "__main__":
    main()
