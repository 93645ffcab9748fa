"""Write-ahead durability: real processes are SIGKILLed mid-action and mid-undo; `goex recover`
and `goex undo --all` must always bring the workspace back to exactly where it started.

The workers run as separate processes (sys.executable) that the test kills; the `goex` commands
that settle what they left then run in this process (`goex.cli.main`), and the test compares real
trees on disk. One in-process test injects a fault into the apply step.
"""

from __future__ import annotations

import base64
import errno
import os
import random
import select
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import goex
from conftest import CliRun, run_cli
from goex.adapters.fs import tree

WORKER = r'''
import base64, os, random, stat, sys
import goex

root, seed, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])  # count 0: run until killed
rng = random.Random(seed)
rt = goex.Runtime(root, policy="permissive")
session = rt.session(actor="crash-worker")
MODES = ["0600", "0644", "0640", "0700", "0750", "0755"]


def nodes():
    files, dirs, links = [], [], []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel == ".":
            dirnames[:] = [d for d in dirnames if d != ".goex"]
        for name in dirnames + filenames:
            p = name if rel == "." else rel + "/" + name
            mode = os.lstat(os.path.join(root, p)).st_mode
            (links if stat.S_ISLNK(mode) else dirs if stat.S_ISDIR(mode) else files).append(p)
    return sorted(files), sorted(dirs), sorted(links)


def new_path(dirs):
    base = rng.choice([""] + dirs)
    extra = "/".join(f"n{rng.randrange(1000)}" for _ in range(rng.choice([0, 0, 1, 2])))
    name = f"f{rng.randrange(10**6)}" + rng.choice(["", ".txt", ".bin"])
    return "/".join(p for p in (base, extra, name) if p)


def data():
    return rng.randbytes(rng.choice([0, 1, 100, 5000, 70000, 300000]))


def action():
    files, dirs, links = nodes()
    anything = files + dirs + links
    kind = rng.choice(["write", "write", "binary", "append", "append", "mkdir", "move", "move_over",
                       "delete", "chmod", "chmod", "via_link"])
    if kind == "write":
        path = rng.choice(files) if files and rng.random() < 0.6 else new_path(dirs)
        return {"type": "fs.write", "path": path, "content": f"text {rng.random()}\n" * rng.randrange(1, 50)}
    if kind == "binary":
        path = rng.choice(files) if files and rng.random() < 0.6 else new_path(dirs)
        return {"type": "fs.write", "path": path, "encoding": "base64", "content": base64.b64encode(data()).decode()}
    if kind == "append":
        path = rng.choice(files) if files and rng.random() < 0.8 else new_path(dirs)
        return {"type": "fs.write", "path": path, "append": True, "content": f"line {rng.random()}\n"}
    if kind == "mkdir":
        return {"type": "fs.mkdir", "path": new_path(dirs)}
    if kind == "via_link" and links:
        return {"type": "fs.write", "path": rng.choice(links), "content": "through the link\n", "append": True}
    if not anything:
        return {"type": "fs.write", "path": new_path(dirs), "content": "restart\n"}
    src = rng.choice(anything)
    if kind == "move":
        return {"type": "fs.move", "src": src, "dst": new_path([d for d in dirs if not (d + "/").startswith(src + "/")])}
    if kind == "move_over":
        others = [p for p in anything if not (p + "/").startswith(src + "/") and not (src + "/").startswith(p + "/")]
        if others:
            return {"type": "fs.move", "src": src, "dst": rng.choice(others), "overwrite": True}
    if kind == "chmod" and (files or dirs):
        return {"type": "fs.chmod", "path": rng.choice(files + dirs), "mode": rng.choice(MODES)}
    return {"type": "fs.delete", "path": src, "recursive": True}


print("ready", flush=True)
done = 0
while count == 0 or done < count:
    session.execute(action())
    done += 1
rt.close()
print("done", done, flush=True)
'''


# -- helpers -----------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple]:
    """Names, kinds, bytes, permission bits and symlink targets of a tree (the journal excluded)."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d != ".goex"]
        for name in dirnames + filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            path = Path(dirpath, name)
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
            else:
                out[rel] = ("special", st.st_mode)
    return out


def seed_tree(root: Path) -> None:
    blobs = random.Random(7)
    root.mkdir(parents=True)

    def put(rel: str, content: bytes, mode: int) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        os.chmod(path, mode)

    put("docs/readme.txt", b"read me\n" * 20, 0o644)
    put("docs/notes/todo.md", b"- nothing\n", 0o600)
    put("src/app/main.py", b"#!/usr/bin/env python3\nprint('hi')\n", 0o755)
    put("src/app/util.py", b"def f():\n    return 1\n", 0o644)
    put("src/lib/core.c", b"int main(void) { return 0; }\n", 0o640)
    os.chmod(root / "src/lib", 0o700)
    put("bin/run.sh", b"#!/bin/sh\nexec true\n", 0o755)
    put("data/blob.bin", blobs.randbytes(200_000), 0o644)
    put("big/huge.bin", blobs.randbytes(1_300_000), 0o600)  # two journal chunks
    put("secret.key", b"k3y\n", 0o600)
    put("empty.txt", b"", 0o644)
    (root / "empty").mkdir(mode=0o755)
    (root / "locked").mkdir()
    os.chmod(root / "locked", 0o700)
    os.symlink("docs/readme.txt", root / "link")
    os.symlink("src/app", root / "dirlink")
    os.symlink("no/such/target", root / "dangling")


def goex_cli(*args: str) -> CliRun:
    return run_cli(*args)


def start_worker(script: Path, root: Path, seed: int, count: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, str(script), str(root), str(seed), str(count)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else b""  # type: ignore[union-attr]
    if line.strip() != b"ready":
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"worker did not start: {line!r}\n{err.decode(errors='replace')}")
    return proc


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        _, err = proc.communicate()
        pytest.fail(f"process ended by itself (exit {proc.returncode}) before it was killed:\n"
                    f"{err.decode(errors='replace')[-3000:]}")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    if proc.stdout:
        proc.stdout.close()
    if proc.stderr:
        proc.stderr.close()


def recover_undo_and_check(root: Path, before: dict[str, tuple]) -> dict[str, str]:
    """`goex recover`, `goex undo --all`, then the tree must be `before` exactly and verify pass.
    Recovery reverts an interrupted action, finishes an interrupted undo, or keeps a write that
    completed before its `applied` record was written (the undo then takes it back like any other)."""
    rec = goex_cli("recover", "--root", str(root))
    assert rec.returncode == 0, rec.out + rec.err
    outcomes = dict(line.split(": ", 1) for line in rec.out.splitlines() if line.startswith("e"))
    assert all(o in ("reverted", "undone", "applied") for o in outcomes.values()), rec.out
    undo = goex_cli("undo", "--root", str(root), "--all")
    assert undo.returncode == 0, undo.out + undo.err
    after = snapshot(root)
    if after != before:
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        pytest.fail(f"tree not restored in {root}: {len(changed)} paths differ, e.g. "
                    + "; ".join(f"{k}: {str(before.get(k))[:60]} != {str(after.get(k))[:60]}" for k in changed[:5]))
    ver = goex_cli("verify", "--root", str(root))
    assert ver.returncode == 0, ver.out + ver.err
    with goex.Runtime(root, policy="permissive") as rt:
        statuses = {r["status"] for r in rt.log()}
        assert statuses <= {"applied", "failed", "undone", "denied"}, statuses  # none pending or undoing
        assert rt.rollback_all() == []  # nothing undoable is left
    return outcomes


@pytest.fixture(scope="module")
def worker_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("worker") / "worker.py"
    path.write_text(WORKER)
    return path


# -- killed mid-action -------------------------------------------------------------------------

ITERATIONS = int(os.environ.get("GOEX_CRASH_ITERATIONS", "27"))  # raise it for a longer soak


def test_killed_worker_is_recovered_and_undone_exactly(tmp_path: Path, worker_script: Path):
    def iteration(i: int) -> tuple[int, dict[str, str]]:
        rng = random.Random(f"kill-{i}")
        root = tmp_path / f"it{i}" / "root"
        seed_tree(root)
        before = snapshot(root)
        proc = start_worker(worker_script, root, seed=i, count=0)
        time.sleep(rng.uniform(0.02, 0.4))
        kill(proc)
        with goex.Runtime(root, policy="permissive") as rt:
            entries = len(rt.log())
            rt.verify()  # the chain is whole even before recovery: each append is atomic
        outcomes = recover_undo_and_check(root, before)
        return entries, outcomes

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(iteration, range(ITERATIONS)))
    entries = [n for n, _ in results]
    interrupted = [o for _, o in results if {"reverted", "applied"} & set(o.values())]
    print(f"\nentries journaled per run: {entries}; runs killed inside an action: {len(interrupted)}/{ITERATIONS}")
    assert sum(entries) > ITERATIONS * 3, "the workers barely ran before being killed"
    assert len(interrupted) >= 3, "no kill landed inside an action: the test did not test recovery"


# -- killed mid-undo ---------------------------------------------------------------------------


def _undone_count(db: Path) -> int:
    """How far a running undo got (read-only peek at the journal index, for timing the kill)."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT count(*) FROM entries WHERE status IN ('undoing', 'undone')").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:
        return 0


UNDO_ITERATIONS = int(os.environ.get("GOEX_CRASH_UNDO_ITERATIONS", "4"))


def test_undo_killed_midway_is_finished_by_recover_and_undo(tmp_path: Path, worker_script: Path):
    def iteration(i: int) -> tuple[int, int, int, bool]:
        rng = random.Random(f"undo-kill-{i}")
        root = tmp_path / f"u{i}" / "root"
        seed_tree(root)
        before = snapshot(root)
        worker = start_worker(worker_script, root, seed=100 + i, count=120)
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0 and b"done 120" in out, err.decode(errors="replace")[-3000:]
        with goex.Runtime(root, policy="permissive") as rt:
            applied = sum(1 for r in rt.log() if r["status"] == "applied" and r["type"] not in ("fs.read", "fs.list"))
        assert applied > 20
        target = rng.randrange(1, applied - 10)  # kill once this many are undone (or being undone)
        undo = subprocess.Popen([sys.executable, "-m", "goex.cli", "undo", "--root", str(root), "--all"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        db = root / ".goex" / "journal.db"
        deadline = time.monotonic() + 60
        while _undone_count(db) < target and undo.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.01))
        killed = undo.poll() is None
        if killed:
            kill(undo)
        else:
            undo.communicate()
        with goex.Runtime(root, policy="permissive") as rt:  # opening it recovers nothing by itself
            statuses = [r["status"] for r in rt.log() if r["type"] not in ("fs.read", "fs.list")]
        assert "pending" not in statuses
        recover_undo_and_check(root, before)
        return statuses.count("undone"), statuses.count("undoing"), statuses.count("applied"), killed

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(iteration, range(UNDO_ITERATIONS)))
    print(f"\n(undone, undoing, still applied, killed) at the kill: {results}")
    midway = [r for r in results if r[3] and r[0] + r[1] > 0 and r[2] > 0]  # killed with work done and left
    assert len(midway) >= UNDO_ITERATIONS - 1, "the undo was not killed midway"


# -- a fault inside apply (deterministic) ------------------------------------------------------


class Fault:
    """tree.write_all that writes half of its data and then fails, for the next `times` calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, times: int):
        self.left = times
        self.partial_sizes: list[int] = []
        real = tree.write_all

        def write_all(fd: int, data: bytes) -> None:
            if self.left <= 0:
                return real(fd, data)
            self.left -= 1
            os.write(fd, data[: len(data) // 2])
            self.partial_sizes.append(os.fstat(fd).st_size)
            raise OSError(errno.EIO, "injected fault")

        monkeypatch.setattr(tree, "write_all", write_all)


@pytest.fixture
def ws(tmp_path: Path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.txt").write_text("original content\n" * 100)
    os.chmod(root / "a.txt", 0o640)
    os.utime(root / "a.txt", ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    (root / "dir").mkdir()
    rt = goex.Runtime(root, policy="permissive")
    yield root, rt
    rt.close()


def _file_state(path: Path, *, mtime: bool) -> tuple | None:
    if not os.path.lexists(path):
        return None
    st = path.lstat()
    return (stat.S_IMODE(st.st_mode), st.st_mtime_ns if mtime else None, path.read_bytes())


@pytest.mark.parametrize("action", [
    {"type": "fs.write", "path": "a.txt", "content": "replacement\n" * 500},
    {"type": "fs.write", "path": "a.txt", "content": "appended\n" * 500, "append": True},
    {"type": "fs.write", "path": "a.txt", "encoding": "base64", "content": base64.b64encode(bytes(range(256)) * 40).decode()},
    {"type": "fs.write", "path": "new/deep/file.txt", "content": "fresh\n" * 500},
    {"type": "fs.write", "path": "dir/file.txt", "content": "fresh\n" * 500},
], ids=["overwrite", "append", "binary", "new-in-new-folders", "new"])
def test_apply_failing_midway_is_recorded_failed_and_reverted(ws, monkeypatch: pytest.MonkeyPatch, action):
    root, rt = ws
    before = snapshot(root)
    mtime = not action.get("append")  # a reverted append is cut back (truncate): its mtime moves
    target_before = _file_state(root / action["path"], mtime=mtime)
    fault = Fault(monkeypatch, times=1)
    session = rt.session()
    result = session.execute(action)
    assert fault.partial_sizes and fault.partial_sizes[0] > 0, "the fault did not hit mid-write"
    assert not result.ok and result.status == "failed", result
    assert "injected fault" in (result.error or "")
    assert _file_state(root / action["path"], mtime=mtime) == target_before  # bytes, mode (and mtime)
    assert snapshot(root) == before  # and created folders are gone
    log = rt.log()
    assert [(r["id"], r["status"]) for r in log] == [(result.entry_id, "failed")]
    rt.verify()
    assert goex_cli("verify", "--root", str(root)).returncode == 0
    # a failed entry is not undoable; the same action without the fault works and undoes alone
    again = session.execute(action)
    assert again.ok, again.error
    assert snapshot(root) != before
    assert session.undo(5) == [again.entry_id]
    assert snapshot(root) == before
    rt.verify()


def test_revert_failing_too_leaves_it_pending_until_recover(ws, monkeypatch: pytest.MonkeyPatch):
    root, rt = ws
    before = snapshot(root)
    Fault(monkeypatch, times=2)  # the apply and the revert both fail
    session = rt.session()
    with pytest.raises(goex.GoexError, match="could not be reverted"):
        session.execute({"type": "fs.write", "path": "a.txt", "content": "replacement\n"})
    assert [r["status"] for r in rt.log()] == ["pending"]
    rt.verify()
    # the cause is gone (the fault was transient): recovery reverts it
    report = rt.recover()
    assert report.ok and list(report.outcomes.values()) == ["reverted"]
    assert snapshot(root) == before
    assert [r["status"] for r in rt.log()] == ["failed"]
    rt.verify()


def test_action_after_an_unrevertable_one_is_not_lost_by_recovery(ws, monkeypatch: pytest.MonkeyPatch):
    """An entry left pending (its revert failed) must not let a later applied action be silently
    undone by recovery: either goex refuses new actions until recovered, or the later one stays."""
    root, rt = ws
    Fault(monkeypatch, times=2)
    session = rt.session()
    with pytest.raises(goex.GoexError, match="could not be reverted"):
        session.execute({"type": "fs.write", "path": "a.txt", "content": "broken\n"})
    later = session.execute({"type": "fs.write", "path": "a.txt", "content": "v2\n"})
    rt.recover()
    if later.ok:  # journaled as applied: its effect must still be there after recovery
        assert (root / "a.txt").read_text() == "v2\n", "recovery reverted over a later applied action"
        assert session.undo() == [later.entry_id]
    else:  # refused until recovered: recovery then puts the original back
        assert (root / "a.txt").read_text() == "original content\n" * 100
    rt.verify()


def test_no_action_runs_while_an_entry_cannot_be_reverted(ws, monkeypatch: pytest.MonkeyPatch):
    root, rt = ws
    fault = Fault(monkeypatch, times=1000)  # the disk keeps failing
    session = rt.session()
    with pytest.raises(goex.RecoveryNeeded):
        session.execute({"type": "fs.write", "path": "a.txt", "content": "broken\n"})
    with pytest.raises(goex.RecoveryNeeded, match="goex recover"):
        session.execute({"type": "fs.write", "path": "b.txt", "content": "later\n"})
    assert not (root / "b.txt").exists()
    assert not rt.recover().ok
    fault.left = 0  # the disk is fixed
    assert rt.recover().ok
    assert (root / "a.txt").read_text() == "original content\n" * 100
    assert session.execute({"type": "fs.write", "path": "b.txt", "content": "later\n"}).ok
    rt.verify()


# -- the applied record written with the next commit ---------------------------------------------

DEFERRING = r'''
import sqlite3, sys, time
import goex
from goex.journal import store

root, bound, count, sql = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "sql"
defers = sys.argv[5] == "defers"
store.DEFER_BOUND = bound  # how long the last applied record may wait for a next commit
rt = goex.Runtime(root, policy="permissive", databases={"main": "sqlite:///app.db"} if sql else None)
rt.journal.defers = defers
session = rt.session(actor="deferring")
for i in range(count):
    action = ({"type": "sql.execute", "db": "main", "sql": "UPDATE t SET v = ? WHERE id = 1", "params": [i + 1]}
              if sql else {"type": "fs.write", "path": f"f{i % 3}.txt", "content": f"version {i}\n"})
    result = session.execute(action)
    assert result.ok, result.error
print("acted", result.entry_id, flush=True)
time.sleep(120)
'''


def start_deferring(tmp_path: Path, root: Path, bound: float, count: int,
                    sql: bool = False, defers: bool = True) -> tuple[subprocess.Popen[bytes], str]:
    script = tmp_path / "deferring.py"
    script.write_text(DEFERRING)
    proc = subprocess.Popen([sys.executable, str(script), str(root), str(bound), str(count), "sql" if sql else "fs",
                             "defers" if defers else "commits"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ready, _, _ = select.select([proc.stdout], [], [], 120)
    line = proc.stdout.readline().decode() if ready else ""  # type: ignore[union-attr]
    if not line.startswith("acted "):
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"worker did not act: {line!r}\n{err.decode(errors='replace')}")
    return proc, line.split()[1]


def test_by_default_an_action_that_returned_survives_a_kill_right_after(tmp_path: Path):
    """A write's `applied` record may wait for the next commit (recovery keeps a write that
    completed: `Adapter.settles`): a process killed at once after its last action leaves that
    entry pending, and recovery keeps it applied, with the content it wrote; nothing reverted."""
    root = tmp_path / "root"
    root.mkdir()
    before = snapshot(root)
    proc, last = start_deferring(tmp_path, root, bound=3600, count=3, defers=False)
    kill(proc)
    with goex.Runtime(root, policy="permissive") as rt:
        statuses = {r["id"]: r["status"] for r in rt.log()}
        assert [s for e, s in statuses.items() if e != last] == ["applied"] * 2
        assert rt.recover().outcomes == {last: "applied"}
        assert {r["id"]: r["status"] for r in rt.log()}[last] == "applied"
        rt.verify()
    assert (root / "f2.txt").read_text() == "version 2\n"
    assert recover_undo_and_check(root, before) == {}


def test_killed_before_its_deferred_applied_record_is_written_keeps_the_completed_write(tmp_path: Path):
    """The last action returned, its `applied` record waits for the next commit, the process dies:
    its entry is pending; the file holds what it wrote, so recovery keeps it (applied) and the
    undo takes it back exactly like every earlier action."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "f1.txt").write_text("first\n")
    before = snapshot(root)
    proc, last = start_deferring(tmp_path, root, bound=3600, count=5)
    kill(proc)
    with goex.Runtime(root, policy="permissive") as rt:
        statuses = {r["id"]: r["status"] for r in rt.log()}
        rt.verify()
    assert statuses[last] == "pending"
    assert [s for e, s in statuses.items() if e != last] == ["applied"] * 4
    rec = goex_cli("recover", "--root", str(root))
    assert rec.returncode == 0 and rec.out.strip() == f"{last}: applied", rec.out + rec.err
    assert (root / "f1.txt").read_text() == "version 4\n"
    assert (root / "f0.txt").read_text() == "version 3\n"
    with goex.Runtime(root, policy="permissive") as rt:  # its `after` was read off the disk: undo checks it
        (root / "f1.txt").write_text("changed outside\n")
        with pytest.raises(goex.UndoConflict, match="f1.txt"):
            rt.rollback_all()  # the newest entry first: nothing is undone
        (root / "f1.txt").write_text("version 4\n")
    outcomes = recover_undo_and_check(root, before)
    assert outcomes == {}


TORN = r'''
import os, signal, sys
import goex
from goex.adapters.fs import tree

root, torn = sys.argv[1], sys.argv[2] == "torn"
real = tree.write_all

def write_then_die(fd, data):
    real(fd, data[: len(data) // 2] if torn else data)
    os.kill(os.getpid(), signal.SIGKILL)

rt = goex.Runtime(root, policy="permissive")
tree.write_all = write_then_die
rt.session().execute({"type": "fs.write", "path": "deep/er/a.txt", "content": "new content " * 1000})
'''


@pytest.mark.parametrize("torn", [True, False], ids=["torn-write", "whole-write"])
def test_a_write_killed_in_the_middle_is_reverted_and_a_whole_one_kept(tmp_path: Path, torn: bool):
    """Killed inside the write itself: half the content written is reverted (the file and the
    folders it created go); all of it written is kept as applied, with an `after` read off the
    disk that undo checks and restores from."""
    root = tmp_path / "root"
    (root / "deep").mkdir(parents=True)
    before = snapshot(root)
    script = tmp_path / "torn.py"
    script.write_text(TORN)
    proc = subprocess.run([sys.executable, str(script), str(root), "torn" if torn else "whole"],
                          capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode(errors="replace")
    target = root / "deep" / "er" / "a.txt"
    assert target.exists()
    rec = goex_cli("recover", "--root", str(root))
    assert rec.returncode == 0 and rec.out.strip() == f"e1: {'reverted' if torn else 'applied'}", rec.out + rec.err
    if torn:
        assert snapshot(root) == before
    else:
        assert target.read_text() == "new content " * 1000
    assert recover_undo_and_check(root, before) == {}


def test_a_second_process_waits_for_a_deferred_record_and_never_reverts_it(tmp_path: Path):
    """While a live process keeps its last `applied` record for its next commit it keeps the lock:
    `goex recover` and another runtime wait for the record, then find the entry applied."""
    root = tmp_path / "root"
    root.mkdir()
    proc, last = start_deferring(tmp_path, root, bound=1.0, count=2)
    try:
        started = time.monotonic()
        rec = subprocess.run([sys.executable, "-m", "goex.cli", "recover", "--root", str(root)],
                             capture_output=True, text=True, timeout=120)
        assert rec.returncode == 0 and "nothing to recover" in rec.stdout, rec.stdout + rec.stderr
        with goex.Runtime(root, policy="permissive") as rt:
            assert rt.recover().outcomes == {}
            assert [r["status"] for r in rt.log()] == ["applied", "applied"]
            rt.verify()
        assert (root / "f1.txt").read_text() == "version 1\n"
        assert time.monotonic() - started < 60
    finally:
        kill(proc)
    with goex.Runtime(root, policy="permissive") as rt:  # written before the kill: nothing to settle
        assert rt.recover().outcomes == {}
        assert {r["id"]: r["status"] for r in rt.log()}[last] == "applied"
    assert (root / "f1.txt").read_text() == "version 1\n"


def test_killed_sqlite_action_with_its_applied_record_deferred_is_settled_from_the_database(tmp_path: Path):
    """A SQLite action's commit happened and its `applied` record had not been written when the
    process died: recovery reads the database, finds the commit, and records it applied."""
    root = tmp_path / "root"
    root.mkdir()
    con = sqlite3.connect(root / "app.db")
    con.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER); INSERT INTO t VALUES (1, 0);")
    con.close()
    proc, last = start_deferring(tmp_path, root, bound=3600, count=3, sql=True)
    kill(proc)
    with goex.Runtime(root, policy="permissive", databases={"main": "sqlite:///app.db"}) as rt:
        assert {r["id"]: r["status"] for r in rt.log()}[last] == "pending"
        report = rt.recover()
        assert report.outcomes == {last: "applied"}
        assert [r["status"] for r in rt.log()] == ["applied"] * 3
        rt.verify()
        read = rt.session().execute({"type": "sql.execute", "db": "main", "sql": "SELECT v FROM t"})
        assert read.ok and read.output["rows"] == [[3]], read
        assert len(rt.rollback_all()) == 3
    con = sqlite3.connect(root / "app.db")
    assert con.execute("SELECT v FROM t").fetchall() == [(0,)]
    con.close()
