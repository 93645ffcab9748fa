"""A wrapped single-row SQLite UPDATE against a raw execute + commit of the same statement.

Figures (ratios of medians in the same run, interleaved): a 1,000-row table and a 100,000-row
table. Target (design): at most 3x. The current undo keeps the whole database image as the
before-image, so the cost grows with the database, not the change: the two figures show by how
much.

    .venv/bin/python benchmarks/sqlite_update.py [--quick]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import goex


def measure(rows: int, n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        for name in ("goex.db", "raw.db"):
            conn = sqlite3.connect(root / name)
            conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v INT, pad TEXT)")
            conn.executemany("INSERT INTO t VALUES (?, 0, ?)", ((i, "x" * 40) for i in range(rows)))
            conn.commit()
            conn.close()
        raw = sqlite3.connect(root / "raw.db", isolation_level=None)
        with goex.Runtime(root, policy="permissive", durability="process",
                          databases={"main": "sqlite:///goex.db"}) as rt:
            s = rt.session()
            g, r = [], []
            for i in range(n):
                t = time.perf_counter_ns()
                result = s.execute({"type": "sql.execute", "db": "main", "sql": "UPDATE t SET v = v + 1 WHERE id = ?",
                                    "params": [i % rows]})
                g.append(time.perf_counter_ns() - t)
                assert result.ok, result.error
                t = time.perf_counter_ns()
                raw.execute("BEGIN")
                raw.execute("UPDATE t SET v = v + 1 WHERE id = ?", (i % rows,))
                raw.execute("COMMIT")
                r.append(time.perf_counter_ns() - t)
        raw.close()
        gm, rm = statistics.median(g) / 1e3, statistics.median(r) / 1e3
        verdict = "meets" if gm / rm <= 3 else "MISSES"
        print(f"sqlite UPDATE of one row, {rows:,}-row table: {gm / rm:.1f}x raw execute+commit "
              f"(goex {gm:.0f} µs, raw {rm:.0f} µs, median of {n}) -- target <= 3x: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    quick = parser.parse_args().quick
    measure(1_000, 30 if quick else 300)
    measure(100_000, 10 if quick else 60)


if __name__ == "__main__":
    main()
