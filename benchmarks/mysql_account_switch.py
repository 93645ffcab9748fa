"""The cost of running agent SQL on MariaDB/MySQL as goex's least-privilege account, with the
session reset and checked before each use of its kept connection.

Figures (ratios of medians in the same run, interleaved, so machine noise hits both sides):
- goex (account + reset) against raw PyMySQL: a one-row `UPDATE t SET v = v + 1 WHERE id = ?`
  through `sql.execute`, against a raw execute + commit of the same statement.
- reset on against reset off: the same goex action, with the reset and its check skipped
  (what it cost before the account and the reset existed: one kept connection, no reset).
  Target: at most 1.15x.
- the reset + check alone, per action (it runs twice: dry run and stage), in µs.

The agent account's login happens once per process (the connection is kept), so it is not in
the per-action figures; its first connection is timed on its own.

    .venv/bin/python benchmarks/mysql_account_switch.py [--quick]

Needs a server at 127.0.0.1:3306 (root, empty password). A fresh database is created and dropped.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import pymysql

import goex
from goex.adapters.sql import mysql as my

HOST, PORT = "127.0.0.1", 3306


def _median_us(samples: list[int]) -> float:
    return statistics.median(samples) / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny samples: proves the script runs")
    parser.add_argument("-n", type=int, default=300, help="actions per side")
    args = parser.parse_args()
    n = 15 if args.quick else args.n
    name = f"goex_bench_{secrets.token_hex(4)}"
    admin = pymysql.connect(host=HOST, port=PORT, user="root", password="", autocommit=True)
    admin.cursor().execute(f"CREATE DATABASE `{name}`")
    url = f"mysql://root@{HOST}:{PORT}/{name}"
    try:
        raw = pymysql.connect(host=HOST, port=PORT, user="root", password="", database=name, autocommit=False)
        with raw.cursor() as cur:
            cur.execute("CREATE TABLE t (id INT PRIMARY KEY, v INT, pad VARCHAR(40))")
            cur.execute("INSERT INTO t VALUES " + ",".join(f"({i}, 0, '{'x' * 40}')" for i in range(1000)))
        raw.commit()
        original_reset = my.MysqlEngine._reset
        with tempfile.TemporaryDirectory() as tmp, \
                goex.Runtime(Path(tmp), policy="permissive", durability="process", databases={"d": url}) as rt:
            s = rt.session()
            t0 = time.perf_counter_ns()
            assert s.execute({"type": "sql.execute", "db": "d", "sql": "SELECT 1"}).ok  # first login
            first_login = (time.perf_counter_ns() - t0) / 1e3

            def wrapped(i: int) -> None:
                result = s.execute({"type": "sql.execute", "db": "d", "sql": "UPDATE t SET v = v + 1 WHERE id = ?",
                                    "params": [i % 1000]})
                assert result.ok, result.error

            def plain(i: int) -> None:
                with raw.cursor() as cur:
                    cur.execute("UPDATE t SET v = v + 1 WHERE id = %s", (i % 1000,))
                raw.commit()

            def no_reset(i: int) -> None:
                my.MysqlEngine._reset = lambda self, conn: None  # type: ignore[method-assign]
                try:
                    wrapped(i)
                finally:
                    my.MysqlEngine._reset = original_reset  # type: ignore[method-assign]

            for i in range(5):  # warm-up
                wrapped(i), plain(i), no_reset(i)
            goex_t, raw_t, off_t, reset_t = [], [], [], []
            engine = rt.adapter("sql").engine("d")  # type: ignore[attr-defined]
            for i in range(n):
                for fn, out in ((wrapped, goex_t), (plain, raw_t), (no_reset, off_t)):
                    t = time.perf_counter_ns()
                    fn(i)
                    out.append(time.perf_counter_ns() - t)
            conn = engine._take()
            for _ in range(n):
                t = time.perf_counter_ns()
                engine._reset(conn)
                reset_t.append(time.perf_counter_ns() - t)
            engine._give(conn)
        g, r, o, z = (_median_us(x) for x in (goex_t, raw_t, off_t, reset_t))
        ratio = g / o
        print(f"one-row UPDATE, goex as the agent account: {g / r:.1f}x raw execute+commit "
              f"(goex {g:.0f} µs, raw {r:.0f} µs, median of {n}) -- target: reported")
        print(f"reset + check on vs off: {ratio:.2f}x (on {g:.0f} µs, off {o:.0f} µs) -- target <= 1.15x: "
              f"{'meets' if ratio <= 1.15 else 'MISSES'}")
        print(f"reset + check alone: {z:.0f} µs per use, 2 uses per write action ({2 * z / g:.0%} of it)")
        print(f"first login as the agent account (once per process): {first_login / 1e3:.0f} ms")
        raw.close()
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()
        my.drop_agent_account(url)


if __name__ == "__main__":
    main()
