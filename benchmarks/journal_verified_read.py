"""Cost of reading the journal only through what its hash chain vouches for, and of the anchor.

Figures (each a ratio of medians, measured in the same run, the two sides interleaved):

  1. rollback of N fs.writes, warm (the runtime that wrote them undoes them): verified reads
     (index checked against the in-memory replay, records against their verified hashes, anchor
     checked) / raw reads (the stored index and records taken as they are)         target <= 1.10x
  2. the same rollback by a runtime opened for it (cold: the whole chain is verified first;
     the journal holds 2N records), opening included                                target <= 1.25x
  3. one 1 KiB fs.write (overwrite, durability=process) with the anchor moved at each commit
     / without the anchor                                                            target <= 1.05x

The raw side is the same code with `Journal.select` / `Journal.record` replaced by the unverified
reads and `Anchor.write` by a no-op, on one runtime of its own.

    .venv/bin/python benchmarks/journal_verified_read.py            # full run (~1-2 minutes)
    .venv/bin/python benchmarks/journal_verified_read.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import goex
from goex.journal.store import JournalCorrupt

TARGETS = {"warm": 1.10, "cold": 1.25, "anchor": 1.05}
clock = time.perf_counter_ns


def unverified(rt: goex.Runtime) -> goex.Runtime:
    """This runtime reads the stored index and records as they are, and keeps no anchor."""
    journal = rt.journal

    def raw_record(seq: int) -> dict[str, Any]:
        row = journal.raw().execute("SELECT body FROM records WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            raise JournalCorrupt(f"record {seq} is missing")
        return json.loads(row[0])

    journal.select = journal.query  # type: ignore[method-assign]
    journal.record = raw_record  # type: ignore[method-assign]
    journal.anchor.write = lambda seq, digest: None  # type: ignore[method-assign]
    return rt


def write_n(rt: goex.Runtime, n: int, tag: str) -> goex.Session:
    s = rt.session()
    for i in range(n):
        s.execute({"type": "fs.write", "path": f"d/f{i % 50}.txt", "content": f"{tag} {i}\n"}).raise_for_error()
    return s


def rollback_cycles(base: Path, n: int, cycles: int, *, cold: bool) -> tuple[list[int], list[int]]:
    """Interleaved cycles: N writes, then a timed rollback, on a verified and a raw root."""
    times: dict[bool, list[int]] = {True: [], False: []}
    roots = {}
    for verified in (True, False):
        root = base / f"{'cold' if cold else 'warm'}-{'verified' if verified else 'raw'}"
        (root / "d").mkdir(parents=True)
        roots[verified] = root
    for cycle in range(cycles):
        for verified in ((True, False) if cycle % 2 else (False, True)):
            root = roots[verified]
            if cold:  # a fresh journal each cycle: the cold verification covers exactly 2N records
                shutil.rmtree(root / ".goex", ignore_errors=True)
            rt = goex.Runtime(root, policy="permissive", durability="process")
            if not verified:
                unverified(rt)
            s = write_n(rt, n, f"cycle {cycle}")
            if cold:
                rt.close()
            gc.collect()
            t0 = clock()
            if cold:
                rt = goex.Runtime(root, policy="permissive", durability="process")
                if not verified:
                    unverified(rt)
                s = rt.session(session_id=s.id)
            undone = s.rollback()
            times[verified].append(clock() - t0)
            rt.close()
            if len(undone) != n:
                raise SystemExit(f"rollback undid {len(undone)} of {n}")
    return times[True], times[False]


def anchor_writes(base: Path, n: int, warmup: int) -> tuple[list[int], list[int]]:
    """1 KiB overwrites, op by op, on a runtime keeping the anchor and one that does not."""
    rts = {}
    for anchored in (True, False):
        root = base / f"anchor-{anchored}"
        root.mkdir()
        rts[anchored] = goex.Runtime(root, policy="permissive", durability="process")
        if not anchored:
            rts[anchored].journal.anchor.write = lambda seq, digest: None  # type: ignore[method-assign]
    sessions = {k: rt.session() for k, rt in rts.items()}
    texts = [base64.b64encode(os.urandom(768)).decode("ascii") for _ in range(n + warmup)]
    times: dict[bool, list[int]] = {True: [], False: []}
    gc.collect()
    try:
        for i, text in enumerate(texts):
            for anchored in ((True, False) if i % 2 else (False, True)):
                t0 = clock()
                sessions[anchored].execute({"type": "fs.write", "path": "a.txt", "content": text}).raise_for_error()
                if i >= warmup:
                    times[anchored].append(clock() - t0)
    finally:
        for rt in rts.values():
            rt.close()
    return times[True], times[False]


def report(label: str, key: str, mine: list[int], base: list[int], what: str) -> str:
    ratio = statistics.median(mine) / statistics.median(base)
    verdict = "meets" if ratio <= TARGETS[key] else "MISSES"
    return (f"{label}: {ratio:.2f}x {what} (median {statistics.median(mine) / 1e3:.0f} µs vs "
            f"{statistics.median(base) / 1e3:.0f} µs, {len(mine)} samples) -- target <= {TARGETS[key]}x: {verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny samples, for a smoke run")
    ap.add_argument("-n", type=int, default=None, help="entries per rollback (default 200, quick 20)")
    args = ap.parse_args()
    n = args.n or (20 if args.quick else 200)
    cycles = 4 if args.quick else 30
    writes, warmup = (60, 10) if args.quick else (2000, 200)

    base = Path(tempfile.mkdtemp(prefix="goex-bench-verified-"))
    os.environ["GOEX_STATE_DIR"] = str(base / "state")  # the scratch journals' anchors go away with them
    print(f"goex {goex.__version__}, Python {platform.python_version()}, {platform.system()} {platform.release()}, "
          f"{os.cpu_count()} CPUs, scratch {base}")
    lines = []
    try:
        mine, raw = rollback_cycles(base, n, cycles, cold=False)
        lines.append(report(f"rollback of {n} entries, warm", "warm", mine, raw, "verified / raw reads"))
        print(lines[-1])
        mine, raw = rollback_cycles(base, n, cycles, cold=True)
        lines.append(report(f"rollback of {n} entries by a new runtime, cold", "cold", mine, raw,
                            "verified / raw reads"))
        print(lines[-1])
        mine, raw = anchor_writes(base, writes, warmup)
        lines.append(report("fs.write 1 KiB overwrite, durability=process", "anchor", mine, raw,
                            "with / without the anchor"))
        print(lines[-1])
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print("\nSummary")
    for line in lines:
        print("  " + line)


if __name__ == "__main__":
    sys.exit(main())
