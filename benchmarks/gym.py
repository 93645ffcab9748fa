"""The Gymnasium environment's step throughput, reset time and journal size, as ratios in one run.

- `step` on file actions (fs.write of 100 bytes) and on SQL actions (a one-row UPDATE), in
  steps per second on one core (targets: at least 5,000 and 3,000), each against the raw
  operation it wraps (a plain write; an sqlite3 execute + commit) measured in the same run.
- `reset` after a 100-action episode (50 file writes and 50 SQL updates, rolled back through the
  journal as one coalesced range, the state fingerprint checked, the journal compacted) against
  starting a fresh container of the sandbox image (`docker run --rm goex-sandbox:2 true`;
  target: reset at least 100x faster).
- journal.db's size after many short episodes against its size once warmed up (target: no
  growth, at most 1.0x); the write-ahead log beside it is printed too (SQLite folds it back into
  journal.db every 1,000 pages, so it stays under about 4 MiB).

    python benchmarks/gym.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import goex.gym

TASK = """
id: bench
domain: sql
instruction: A world for measuring.
files:
  notes/a.txt: "a\\n"
databases:
  main:
    setup: |
      CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER);
      WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000) INSERT INTO t SELECT x, 0 FROM c;
max_steps: 1000000000
grade:
  - file: {path: notes/a.txt, exists: true}
reference:
  honest: [{type: submit}]
"""


def fs_action(i: int) -> str:
    return json.dumps({"type": "fs.write", "path": f"notes/f{i % 10}.txt", "content": f"{i:0100d}"})


def sql_action(i: int) -> str:
    return json.dumps({"type": "sql.execute", "db": "main", "sql": "UPDATE t SET v = ? WHERE id = ?",
                       "params": [i, i % 1000 + 1]})


def steps_per_s(env: goex.gym.GoexEnv, make, n: int) -> float:
    actions = [make(i) for i in range(n)]
    t = time.perf_counter()
    for a in actions:
        env.step(a)
    return n / (time.perf_counter() - t)


def raw_fs_per_s(folder: Path, n: int) -> float:
    t = time.perf_counter()
    for i in range(n):
        with open(folder / f"f{i % 10}.txt", "w") as f:
            f.write(f"{i:0100d}")
    return n / (time.perf_counter() - t)


def raw_sql_per_s(path: Path, n: int) -> float:
    conn = sqlite3.connect(path)
    t = time.perf_counter()
    for i in range(n):
        conn.execute("UPDATE t SET v = ? WHERE id = ?", (i, i % 1000 + 1))
        conn.commit()
    rate = n / (time.perf_counter() - t)
    conn.close()
    return rate


def journal_growth(scratch: Path, episodes: int) -> tuple[int, int, int, int, int]:
    """Short episodes (a file write and a row update, then reset): journal.db's and the world
    folder's sizes once warmed up and at the end, and the largest write-ahead log seen."""
    env = goex.gym.GoexEnv(task=scratch / "task.yaml", home=scratch / "soak")
    try:
        env.reset(seed=0)
        home = scratch / "soak" / "bench"
        journal = home / "workspace" / ".goex"
        warm = episodes // 5
        sizes, wal = [], 0
        for e in range(episodes):
            env.step(fs_action(e))
            env.step(sql_action(e))
            env.reset()
            wal = max(wal, (journal / "journal.db-wal").stat().st_size)
            if e + 1 in (warm, episodes):
                sizes += [(journal / "journal.db").stat().st_size, folder_size(home) - folder_size(journal)]
        return sizes[0], sizes[2], sizes[1], sizes[3], wal
    finally:
        env.close()


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def container_start_ms(n: int) -> float | None:
    try:
        import docker

        client = docker.from_env()
        client.images.get("goex-sandbox:2")
    except Exception as exc:  # noqa: BLE001 - no engine or no image: say so
        print(f"  (no container baseline: {exc})")
        return None
    times = []
    for _ in range(n):
        t = time.perf_counter()
        client.containers.run("goex-sandbox:2", ["true"], remove=True, network_mode="none")
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny samples: proves the script runs, figures meaningless")
    args = ap.parse_args()
    n = 200 if args.quick else 5000
    episodes = 2 if args.quick else 30
    scratch = Path(tempfile.mkdtemp(prefix="goex-bench-gym-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None))
    (scratch / "task.yaml").write_text(TASK)
    env = goex.gym.GoexEnv(task=scratch / "task.yaml", home=scratch / "home")
    try:
        env.reset(seed=0)
        raw_dir = scratch / "raw"
        raw_dir.mkdir()
        conn = sqlite3.connect(raw_dir / "raw.db")
        conn.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER);"
                           "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000) "
                           "INSERT INTO t SELECT x, 0 FROM c;")
        conn.close()
        steps_per_s(env, fs_action, 50)  # warm-up
        steps_per_s(env, sql_action, 50)
        fs_rates, sql_rates, raw_fs, raw_sql = [], [], [], []
        rounds = 5
        for r in range(rounds):  # interleaved: a burst of load hits both sides alike
            fs_rates.append(steps_per_s(env, fs_action, n // rounds))
            raw_fs.append(raw_fs_per_s(raw_dir, n // rounds))
            sql_rates.append(steps_per_s(env, sql_action, n // rounds))
            raw_sql.append(raw_sql_per_s(raw_dir / "raw.db", n // rounds))
            env.reset()
        fs_rate, sql_rate = statistics.median(fs_rates), statistics.median(sql_rates)
        print(f"step, file actions: {fs_rate:,.0f} steps/s; the raw write {statistics.median(raw_fs):,.0f}/s "
              f"({statistics.median(raw_fs) / fs_rate:.1f}x the raw cost)")
        print(f"step, SQL actions:  {sql_rate:,.0f} steps/s; the raw UPDATE + commit {statistics.median(raw_sql):,.0f}/s "
              f"({statistics.median(raw_sql) / sql_rate:.1f}x the raw cost)")

        resets = []
        for e in range(episodes):
            for i in range(100):
                env.step(fs_action(i) if i % 2 else sql_action(i + e))
            t = time.perf_counter()
            env.reset()
            resets.append(time.perf_counter() - t)
        reset_ms = statistics.median(resets) * 1000
        print(f"reset after a 100-action episode: {reset_ms:.1f} ms (median of {episodes})")
    finally:
        env.close()
    growth = journal_growth(scratch, 50 if args.quick else 2000)
    print(f"journal.db after {50 if args.quick else 2000} short episodes: {growth[1]:,} bytes, once warmed up "
          f"{growth[0]:,} bytes; the world folder {growth[3]:,} bytes, once warmed up {growth[2]:,} bytes; the "
          f"write-ahead log at most {growth[4]:,} bytes (SQLite folds it into journal.db every 1,000 pages)")
    start_ms = container_start_ms(2 if args.quick else 10)
    raw_fs_rate, raw_sql_rate = statistics.median(raw_fs), statistics.median(raw_sql)
    print("\nSummary")
    for name, rate, raw_rate, target in (("step, file actions", fs_rate, raw_fs_rate, 5000),
                                         ("step, SQL actions", sql_rate, raw_sql_rate, 3000)):
        verdict = "meets" if rate >= target else "MISSES"
        print(f"  {name}: {rate:,.0f} steps/s = {raw_rate / rate:.1f}x the raw operation's time "
              f"({raw_rate:,.0f}/s); target at least {target:,} steps/s: {verdict} target")
    if start_ms is not None:
        ratio = start_ms / reset_ms
        verdict = "meets" if ratio >= 100 else "MISSES"
        print(f"  reset: {ratio:.1f}x faster than a fresh container ({start_ms:.0f} ms vs {reset_ms:.1f} ms; "
              f"target at least 100x: {verdict} target)")
    else:
        print(f"  reset: {reset_ms:.1f} ms; no container baseline on this machine (target: 100x faster than one)")
    ratio = growth[1] / growth[0]
    print(f"  journal size after many episodes: {ratio:.2f}x its size once warmed up ({growth[1]:,} vs "
          f"{growth[0]:,} bytes; world folder {growth[3] / growth[2]:.2f}x); target at most 1.0x: "
          f"{'meets' if ratio <= 1.0 else 'MISSES'} target")
    import shutil

    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
