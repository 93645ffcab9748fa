"""Rollback cost: does it grow with the change or with the tree? And how does it compare to git?

One cycle = checkpoint, then 100 changes (overwrite 60 files, delete 20, create 20 new ones, spread
over the tree), then roll back to the checkpoint. Trees hold ~100-byte files in 100 nested
folders (10 x 10): 1,000 files (small) and 100,000 files (big). Each tree is built once and
reused: every rollback restores it (checked after every cycle, outside the timing). Before each
timed cycle the script calls os.sync(), so no cycle pays for the writeback of the one before it.

Figures (medians over many cycles; small, big and git cycles interleaved):

  1. rollback in the big tree / rollback in the small tree        target <= 1.5x
  2. git cycle (add -A + commit + reset --hard + clean -fd) on the big tree
     / goex rollback alone on the big tree                         target >= 50x faster
  3. git add/commit + raw changes + reset/clean
     / goex checkpoint + journaled changes + rollback (big tree)   target >= 50x faster

All three are printed for durability=process and durability=fsync. The git repository lives in
the big tree itself (initial commit and `git gc` once, outside the timing; `.goex` is excluded).

    .venv/bin/python benchmarks/rollback.py            # full run (~2-4 minutes)
    .venv/bin/python benchmarks/rollback.py --quick    # smoke run (3,000-file big tree)
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import goex

TARGET_SCALING = 1.5
TARGET_VS_GIT = 50.0
N_OVERWRITE, N_DELETE, N_CREATE = 60, 20, 20
FOLDERS = [f"d{a}/d{b}" for a in range(10) for b in range(10)]  # 100 nested folders


def original_content(folder: str, i: int) -> bytes:
    head = f"{folder}/f{i}.txt original content "
    return (head + "x" * (100 - len(head) - 1) + "\n").encode()


def build_tree(root: Path, per_folder: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for folder in FOLDERS:
        d = root / folder
        d.mkdir(parents=True)
        for i in range(per_folder):
            fd = os.open(d / f"f{i}.txt", flags, 0o644)
            try:
                os.write(fd, original_content(folder, i))
            finally:
                os.close(fd)


@dataclass
class Spec:
    """One cycle's 100 changes."""

    overwrite: list[tuple[str, int]]
    delete: list[tuple[str, int]]
    create: list[str]
    content: str

    @staticmethod
    def make(per_folder: int, seed: int) -> "Spec":
        rng = random.Random(seed)
        picks = rng.sample(range(len(FOLDERS) * per_folder), N_OVERWRITE + N_DELETE)
        files = [(FOLDERS[p // per_folder], p % per_folder) for p in picks]
        create = [f"{rng.choice(FOLDERS)}/new_{seed}_{j}.txt" for j in range(N_CREATE)]
        head = f"changed in cycle {seed} "
        return Spec(files[:N_OVERWRITE], files[N_OVERWRITE:], create, head + "y" * (99 - len(head)) + "\n")

    def actions(self) -> list[dict]:
        acts = [{"type": "fs.write", "path": f"{d}/f{i}.txt", "content": self.content} for d, i in self.overwrite]
        acts += [{"type": "fs.delete", "path": f"{d}/f{i}.txt"} for d, i in self.delete]
        acts += [{"type": "fs.write", "path": p, "content": self.content} for p in self.create]
        return acts

    def apply_raw(self, root: Path) -> None:
        data = self.content.encode()
        for d, i in self.overwrite:
            with open(root / d / f"f{i}.txt", "wb") as f:
                f.write(data)
        for d, i in self.delete:
            os.unlink(root / d / f"f{i}.txt")
        for p in self.create:
            with open(root / p, "wb") as f:
                f.write(data)

    def check_restored(self, root: Path, who: str) -> None:
        for d, i in self.overwrite + self.delete:
            p = root / d / f"f{i}.txt"
            if not p.is_file() or p.read_bytes() != original_content(d, i):
                raise SystemExit(f"{who}: {p} was not restored")
        for p in self.create:
            if (root / p).exists() or (root / p).is_symlink():
                raise SystemExit(f"{who}: {root / p} was not removed")


@dataclass
class Times:
    checkpoint: list[float] = field(default_factory=list)
    changes: list[float] = field(default_factory=list)
    rollback: list[float] = field(default_factory=list)
    rollback_cpu: list[float] = field(default_factory=list)  # this process's CPU time (user + system)

    def cycle(self) -> list[float]:
        return [a + b + c for a, b, c in zip(self.checkpoint, self.changes, self.rollback)]


@dataclass
class GitTimes:
    add_commit: list[float] = field(default_factory=list)
    changes: list[float] = field(default_factory=list)
    reset_clean: list[float] = field(default_factory=list)

    def git_only(self) -> list[float]:
        return [a + c for a, c in zip(self.add_commit, self.reset_clean)]

    def cycle(self) -> list[float]:
        return [a + b + c for a, b, c in zip(self.add_commit, self.changes, self.reset_clean)]


def goex_cycle(root: Path, session: goex.Session, spec: Spec, out: Times) -> None:
    clock = time.perf_counter
    actions = spec.actions()
    t0 = clock()
    cp = session.checkpoint()
    t1 = clock()
    for a in actions:
        r = session.execute(a)
        if not r.ok:
            raise SystemExit(f"goex {a['type']} {a['path']} failed: {r.error}")
    c2, t2 = time.process_time(), clock()
    undone = session.rollback(to=cp)
    t3, c3 = clock(), time.process_time()
    if len(undone) != len(actions):
        raise SystemExit(f"rollback undid {len(undone)} entries, expected {len(actions)}")
    spec.check_restored(root, "goex rollback")
    out.checkpoint.append(t1 - t0)
    out.changes.append(t2 - t1)
    out.rollback.append(t3 - t2)
    out.rollback_cpu.append(c3 - c2)


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, stdout=subprocess.DEVNULL)


def git_init(root: Path) -> None:
    git(root, "init", "-q")
    git(root, "config", "user.email", "bench@example.invalid")
    git(root, "config", "user.name", "goex benchmark")
    with open(root / ".git" / "info" / "exclude", "a") as f:
        f.write("/.goex/\n")  # the goex journal is not part of the tree git checkpoints
    git(root, "config", "gc.auto", "0")  # no background auto-gc while the initial commit is made
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial tree")
    git(root, "gc", "-q")  # pack the initial objects once, as a long-lived repository would have them
    git(root, "config", "--unset", "gc.auto")  # back to git's defaults for the timed cycles


def git_cycle(root: Path, spec: Spec, out: GitTimes) -> None:
    clock = time.perf_counter
    t0 = clock()
    git(root, "add", "-A")
    git(root, "commit", "-q", "--allow-empty", "-m", "checkpoint")  # the tree is clean: an empty commit
    t1 = clock()
    spec.apply_raw(root)
    t2 = clock()
    git(root, "reset", "-q", "--hard")
    git(root, "clean", "-q", "-fd")
    t3 = clock()
    spec.check_restored(root, "git reset/clean")
    out.add_commit.append(t1 - t0)
    out.changes.append(t2 - t1)
    out.reset_clean.append(t3 - t2)


def ms(seconds: float) -> str:
    v = seconds * 1000
    return f"{v:.0f} ms" if v >= 100 else f"{v:.1f} ms" if v >= 1 else f"{v:.2f} ms"


def speed(git_over_goex: float) -> str:
    """git time / goex time, in words."""
    if git_over_goex >= 1:
        return f"goex {git_over_goex:.1f}x faster"
    return f"goex {1 / git_over_goex:.1f}x SLOWER"


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small trees and few cycles, for a smoke run")
    ap.add_argument("--dir", default=None, help="where to build the trees (default: system temp)")
    ap.add_argument("--cycles", type=int, default=None, help="goex cycles per tree and durability (default 15)")
    ap.add_argument("--git-cycles", type=int, default=None, help="git cycles per durability phase (default 6)")
    args = ap.parse_args()
    small_per, big_per = (10, 30) if args.quick else (10, 1000)
    cycles = args.cycles or (3 if args.quick else 15)
    git_cycles = min(args.git_cycles or (2 if args.quick else 6), cycles)
    if shutil.which("git") is None:
        raise SystemExit("git is not installed; it is needed for the comparison")

    base = Path(tempfile.mkdtemp(prefix="goex-bench-rollback-", dir=args.dir))
    small_root, big_root = base / "small", base / "big"
    small_root.mkdir()
    big_root.mkdir()
    n_small, n_big = len(FOLDERS) * small_per, len(FOLDERS) * big_per
    git_version = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.strip()
    print(f"goex {goex.__version__}, Python {platform.python_version()}, {git_version}, "
          f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs, scratch {base}")
    change = f"{N_OVERWRITE} overwrites + {N_DELETE} deletes + {N_CREATE} new files"
    print(f"trees: small {n_small:,} files, big {n_big:,} files (100 folders, ~100-byte files); "
          f"each cycle: {change}")

    try:
        t = time.perf_counter()
        build_tree(small_root, small_per)
        build_tree(big_root, big_per)
        print(f"built the trees in {time.perf_counter() - t:.1f} s", flush=True)
        t = time.perf_counter()
        git_init(big_root)
        print(f"git init + initial commit + gc of the big tree: {time.perf_counter() - t:.1f} s", flush=True)

        summary: list[str] = []
        seed = 0
        for durability in ("process", "fsync"):
            small, big, gt = Times(), Times(), GitTimes()
            rt_small = goex.Runtime(small_root, policy="permissive", durability=durability)
            rt_big = goex.Runtime(big_root, policy="permissive", durability=durability)
            s_small, s_big = rt_small.session(), rt_big.session()
            try:
                # warm-up cycle per tree (not timed)
                goex_cycle(small_root, s_small, Spec.make(small_per, 10_000 + seed), Times())
                goex_cycle(big_root, s_big, Spec.make(big_per, 20_000 + seed), Times())
                for r in range(cycles):
                    seed += 1
                    runs = [lambda: goex_cycle(small_root, s_small, Spec.make(small_per, seed), small),
                            lambda: goex_cycle(big_root, s_big, Spec.make(big_per, seed), big)]
                    if r < git_cycles:
                        runs.append(lambda: git_cycle(big_root, Spec.make(big_per, seed), gt))
                    if r % 2:
                        runs.reverse()
                    for run in runs:
                        os.sync()  # every cycle starts with no writeback pending from the previous one
                        run()
                    print(f"  [{durability}] cycle {r + 1}/{cycles}: rollback small {ms(small.rollback[-1])}, "
                          f"big {ms(big.rollback[-1])}"
                          + (f"; git cycle {ms(gt.git_only()[-1])}" if r < git_cycles else ""), flush=True)
            finally:
                rt_small.close()
                rt_big.close()

            print(f"\ndurability={durability}, medians (goex: {cycles} cycles per tree; git: {git_cycles} cycles)")
            for name, tm, n in (("small", small, n_small), ("big", big, n_big)):
                print(f"  goex {name:5} tree ({n:>7,} files): checkpoint {ms(med(tm.checkpoint))}, "
                      f"100 journaled changes {ms(med(tm.changes))}, rollback {ms(med(tm.rollback))} "
                      f"({med(tm.rollback) / 100 * 1e6:.0f} µs per change; CPU time {ms(med(tm.rollback_cpu))})")
            print(f"  git   big   tree ({n_big:>7,} files): add -A + commit {ms(med(gt.add_commit))}, "
                  f"100 raw changes {ms(med(gt.changes))}, reset --hard + clean -fd {ms(med(gt.reset_clean))}")

            r_small, r_big = med(small.rollback), med(big.rollback)
            scaling = r_big / r_small
            lines = [
                f"rollback of 100 changes, durability={durability}: {scaling:.2f}x in the {n_big:,}-file tree vs "
                f"the {n_small:,}-file tree (big {ms(r_big)}, small {ms(r_small)}, median of {cycles}) "
                f"-- target <= {TARGET_SCALING}x: {'meets' if scaling <= TARGET_SCALING else 'MISSES'}",
            ]
            g_only, g_cycle, x_cycle = med(gt.git_only()), med(gt.cycle()), med(big.cycle())
            vs_git = g_only / r_big
            lines.append(
                f"goex rollback vs git add/commit/reset/clean, {n_big:,} files, durability={durability}: "
                f"{speed(vs_git)} (goex rollback {ms(r_big)} median of {cycles}, "
                f"git {ms(g_only)} median of {git_cycles}) "
                f"-- target >= {TARGET_VS_GIT:.0f}x: {'meets' if vs_git >= TARGET_VS_GIT else 'MISSES'}")
            vs_git_cycle = g_cycle / x_cycle
            lines.append(
                f"goex checkpoint+changes+rollback vs git add/commit+raw changes+reset/clean, {n_big:,} files, "
                f"durability={durability}: {speed(vs_git_cycle)} (goex {ms(x_cycle)} median of {cycles}, "
                f"git {ms(g_cycle)} median of {git_cycles}) "
                f"-- target >= {TARGET_VS_GIT:.0f}x: {'meets' if vs_git_cycle >= TARGET_VS_GIT else 'MISSES'}")
            for line in lines:
                print(line)
            print(flush=True)
            summary += lines
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print("Summary")
    for line in summary:
        print("  " + line)


if __name__ == "__main__":
    sys.exit(main())
