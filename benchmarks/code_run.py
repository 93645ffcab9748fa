"""Sandboxed print(1) per backend, and the change scan after a run, as ratios in one run.

- print(1) through `Session.execute` (journal included): warm Docker (a started container from
  the pool; target at most 50 ms), a cold `docker run`, bwrap (target at most 25 ms), each
  against a bare `python3 -c 'print(1)'` subprocess.
- the change scan (reading the overlay's upper layer) after a run that touched 10 files, in a
  100,000-file tree against a 1,000-file tree (target: about the same, within 1.5x).

    python benchmarks/code_run.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import goex
from goex.adapters.code import overlay


def median_ms(fn, n: int, before=None) -> float:
    times = []
    for _ in range(n):
        if before:
            before()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def make_tree(root: str, files: int) -> None:
    per = 1000
    for d in range((files + per - 1) // per):
        os.mkdir(os.path.join(root, f"d{d}"))
        for i in range(min(per, files - d * per)):
            with open(os.path.join(root, f"d{d}", f"f{i}.txt"), "w") as f:
                f.write("x")


def scan_cost(files: int, n: int) -> float:
    """Median ms of reading what a 10-file run changed, in a tree of `files` files."""
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "ws")
        os.mkdir(root)
        make_tree(root, files)
        with goex.Runtime(root, policy="permissive", sandbox="bwrap", durability="process") as rt:
            code = "for i in range(10):\n    open(f'd0/f{i}.txt', 'w').write('changed')"
            r = rt.session().execute({"type": "code.run", "code": code})
            assert r.ok and len(r.output["files"]["changed"]) == 10, r
            # the same change, on a layer of our own, so the scan is timed alone
            layer = overlay.Layer.create()
            try:
                layer.prepare(rt.workspace)
                layer.mount(rt.workspace.root)
                for i in range(10):
                    with open(os.path.join(layer.merged, "d0", f"f{i}.txt"), "w") as f:
                        f.write("again")
                layer.unmount()
                return median_ms(lambda: overlay.changes(layer, rt.workspace), n)
            finally:
                layer.remove()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n = 5 if args.quick else 30
    big = 20_000 if args.quick else 100_000

    bare = median_ms(lambda: subprocess.run(["/usr/bin/python3", "-c", "print(1)"], capture_output=True, check=True), n)
    print(f"bare subprocess python3 -c 'print(1)': {bare:.1f} ms (baseline)")

    with tempfile.TemporaryDirectory() as root:
        with goex.Runtime(root, policy="permissive", sandbox="docker", durability="process",
                          sandbox_options={"pool_size": 2}) as rt:
            s = rt.session()
            action = {"type": "code.run", "code": "print(1)"}
            assert s.execute(action).output["stdout"] == "1\n"
            backend = rt.adapter("code").backend()
            warm = median_ms(lambda: s.execute(action), n, before=backend.settle)
        print(f"warm docker (pooled container): {warm:.1f} ms = {warm / bare:.1f}x bare (target: at most 50 ms: "
              f"{'meets' if warm <= 50 else 'MISSES'} target)")

        image = "goex-sandbox:2"
        cold = median_ms(lambda: subprocess.run(
            ["docker", "run", "--rm", "--network", "none", "--read-only", "--tmpfs", "/tmp", "--memory", "512m",
             "--pids-limit", "128", "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--user", "65534:65534",
             image, "python3", "-c", "print(1)"], capture_output=True, check=True), max(3, n // 3))
        print(f"cold docker run: {cold:.1f} ms = {cold / bare:.1f}x bare (target: slower than warm, for reference)")

        with goex.Runtime(root, policy="permissive", sandbox="bwrap", durability="process") as rt:
            s = rt.session()
            bw = median_ms(lambda: s.execute(action), n)
        print(f"bwrap: {bw:.1f} ms = {bw / bare:.1f}x bare "
              f"(target: at most 25 ms: {'meets' if bw <= 25 else 'MISSES'} target)")

    small = scan_cost(1_000, n)
    large = scan_cost(big, n)
    print(f"change scan after a run touching 10 files: {small:.2f} ms in 1,000 files, {large:.2f} ms in "
          f"{big:,} files = {large / small:.2f}x (target: at most 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
