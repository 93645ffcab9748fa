"""The cost of running agent SQL as the least-privilege role on PostgreSQL, per action.

Figures (ratios of medians in the same run, interleaved, so machine noise hits both sides):
- Session reset and check: what goex adds to each action's transaction on a kept connection
  logged in as the agent role (`RESET ALL`, advisory locks released, the session user read back,
  the session checked by goex.start) against `BEGIN; UPDATE; COMMIT` on the same connection.
- A one-row UPDATE through goex (agent role, capture in SECURITY DEFINER functions) against a
  raw execute + commit as the URL's user: the figure `sql_update.py` reports, for comparison.

    .venv/bin/python benchmarks/pg_role_switch.py [--quick]

Needs PostgreSQL at 127.0.0.1:5432 (GOEX_BENCH_PG); works in a database of its own, dropped after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from typing import Callable

import psycopg

import goex
from goex.adapters.sql.postgres import VERSION, PostgresEngine

ADMIN = os.environ.get("GOEX_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _interleave(n: int, a: Callable[[int], None], b: Callable[[int], None]) -> tuple[float, float]:
    ta, tb = [], []
    for i in range(n):
        t = time.perf_counter_ns()
        a(i)
        ta.append(time.perf_counter_ns() - t)
        t = time.perf_counter_ns()
        b(i)
        tb.append(time.perf_counter_ns() - t)
    return statistics.median(ta) / 1e3, statistics.median(tb) / 1e3


def _report(label: str, am: float, bm: float, n: int, base: str) -> None:
    print(f"{label}: {am / bm:.2f}x {base} ({am:.0f} µs vs {bm:.0f} µs, median of {n}) -- target: reported")


def _reset_cost(url: str, n: int) -> None:
    engine = PostgresEngine(url)
    try:
        conn = engine._agent()  # logged in as the agent role, as goex's kept connections are
    finally:
        engine.close()
    start = (f"BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE; RESET ALL; SELECT pg_advisory_unlock_all(), session_user; "
             f"SELECT goex.start_{VERSION}('{{}}'::text[], '{{}}'::text[], false, false, current_setting('search_path'))")
    with conn:
        def goex_way(i: int) -> None:
            conn.execute(start)
            conn.execute("UPDATE a SET v = v + 1 WHERE id = %s", (i % 1000,))
            conn.execute("COMMIT")

        def bare(i: int) -> None:
            conn.execute("BEGIN")
            conn.execute("UPDATE a SET v = v + 1 WHERE id = %s", (i % 1000,))
            conn.execute("COMMIT")

        am, bm = _interleave(n, goex_way, bare)
    _report("PostgreSQL session reset + check per action (agent role, kept connection)", am, bm, n,
            "a bare BEGIN/UPDATE/COMMIT")


def _action_cost(url: str, n: int) -> None:
    raw = psycopg.connect(url, autocommit=False)
    with tempfile.TemporaryDirectory() as tmp, raw:
        with goex.Runtime(tmp, policy="permissive", durability="process", databases={"db": url}) as rt:
            s = rt.session()

            def wrapped(i: int) -> None:
                result = s.execute({"type": "sql.execute", "db": "db", "sql": "UPDATE a SET v = v + 1 WHERE id = ?",
                                    "params": [i % 1000]})
                assert result.ok, result.error

            def plain(i: int) -> None:
                raw.execute("UPDATE b SET v = v + 1 WHERE id = %s", (i % 1000,))
                raw.commit()

            gm, rm = _interleave(n, wrapped, plain)
    _report("PostgreSQL one-row UPDATE through goex as the agent role", gm, rm, n, "raw execute+commit")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    n = 60 if parser.parse_args().quick else 400
    name = "goex_bench_" + uuid.uuid4().hex[:8]
    url = f"{ADMIN.rpartition('/')[0]}/{name}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            for table in ("a", "b"):
                conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int, pad text); "
                             f"INSERT INTO {table} SELECT g, 0, repeat('x', 40) FROM generate_series(0, 999) g")
        _reset_cost(url, n)
        _action_cost(url, n)
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    main()
