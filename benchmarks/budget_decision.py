"""Cost of reading a session's budgets from the journal at every decision.

A 1 KiB `fs.write` (durability=process) under a pack with budgets, whose decision reads the
journal records appended since the last one (so budgets hold across runtimes and processes),
against the same write under the same pack without budgets (no journal read), interleaved op by
op in one run. A second runtime on the same session acts between the measured writes in the
"shared" figure, so each decision also reads that runtime's records. Target: at most 1.1x.

    .venv/bin/python benchmarks/budget_decision.py [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import goex

TARGET = 1.1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    n = 50 if parser.parse_args().quick else 2000
    scratch = Path(tempfile.mkdtemp(prefix="goex-bench-budget-"))
    try:
        packs = {}
        for name, budgets in (("with", "budgets: {bytes_written: 1000000000000}\n"), ("without", "")):
            packs[name] = scratch / f"{name}.yaml"
            packs[name].write_text(f"name: {name}\nextends: permissive\n{budgets}rules: []\n")
        roots = {name: scratch / name for name in packs}
        for r in roots.values():
            r.mkdir()
        rts = {name: goex.Runtime(roots[name], policy=packs[name], durability="process") for name in packs}
        other = goex.Runtime(roots["with"], policy=packs["with"], durability="process")
        try:
            sessions = {name: rt.session(session_id="s") for name, rt in rts.items()}
            peer = other.session(session_id="s")
            times: dict[str, list[int]] = {"with": [], "without": [], "shared": []}
            data = "x" * 1024
            for i in range(n):
                order = ("with", "without", "shared") if i % 2 else ("shared", "without", "with")
                for kind in order:
                    if kind == "shared":
                        peer.execute({"type": "fs.write", "path": "peer.txt", "content": data})
                    s = sessions["without" if kind == "without" else "with"]
                    t = time.perf_counter_ns()
                    r = s.execute({"type": "fs.write", "path": f"{kind}.txt", "content": data})
                    times[kind].append(time.perf_counter_ns() - t)
                    assert r.ok, r.error
        finally:
            other.close()
            for rt in rts.values():
                rt.close()
        base = statistics.median(times["without"])
        print("Summary")
        for kind in ("with", "shared"):
            med = statistics.median(times[kind])
            ratio = med / base
            print(f"  fs.write with budgets read from the journal ({'another runtime acting in between' if kind == 'shared' else 'one runtime'}): "
                  f"{ratio:.2f}x the same write without budgets ({med / 1e3:.0f} µs vs {base / 1e3:.0f} µs, "
                  f"median of {n}) -- target <= {TARGET}x: {'meets' if ratio <= TARGET else 'MISSES'}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
