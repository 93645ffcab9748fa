"""Two real processes, each with its own session, acting on one root at the same time."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import select
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import goex
from conftest import run_cli

WORKER = r'''
import os, sys, time
import goex

root, session_id, name, files, appends, go = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
append_to = sys.argv[7] if len(sys.argv) > 7 else f"{name}.log"
rt = goex.Runtime(root, policy="permissive")
session = rt.session(actor=name, session_id=session_id)
print("ready", flush=True)
while not os.path.exists(go):  # start together with the other process
    time.sleep(0.001)
for i in range(max(files, appends)):
    if i < files:
        result = session.execute({"type": "fs.write", "path": f"{name}/f{i:03d}.txt", "content": f"{name} file {i}\n" * (i % 7 + 1)})
        assert result.ok, result.error
    if i < appends:
        result = session.execute({"type": "fs.write", "path": append_to, "content": f"{name} line {i}\n", "append": True})
        assert result.ok, result.error
rt.close()
print("done", flush=True)
'''

FILES, APPENDS = 200, 100


@pytest.fixture
def worker_script(tmp_path: Path) -> Path:
    path = tmp_path / "worker.py"
    path.write_text(WORKER)
    return path


def run_together(script: Path, root: Path, jobs: list[tuple[str, str, int, int, str | None]], go: Path) -> None:
    """Start one worker per job, wait until all are ready, release them at once, wait for all.

    The journal is created first: two processes creating it at once is tested on its own below."""
    goex.Runtime(root, policy="permissive").close()
    procs = []
    for session_id, name, files, appends, append_to in jobs:
        args = [sys.executable, str(script), str(root), session_id, name, str(files), str(appends), str(go)]
        procs.append(subprocess.Popen(args + ([append_to] if append_to else []),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for proc in procs:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        if not (ready and proc.stdout.readline().strip() == b"ready"):  # type: ignore[union-attr]
            for p in procs:
                p.kill()
            pytest.fail(f"worker did not start:\n{proc.communicate()[1].decode(errors='replace')[-3000:]}")
    go.touch()

    def finish(proc: subprocess.Popen[bytes]) -> tuple[int, bytes, bytes]:
        out, err = proc.communicate(timeout=120)
        return proc.returncode, out, err

    with ThreadPoolExecutor(len(procs)) as pool:
        for code, out, err in pool.map(finish, procs):
            assert code == 0 and b"done" in out, err.decode(errors="replace")[-3000:]


def _interleavings(log: list[dict]) -> int:
    """How many times the session changes along the journal: 1 means one ran after the other."""
    sessions = [r["session"] for r in log]
    return sum(1 for a, b in zip(sessions, sessions[1:]) if a != b)


def test_two_processes_on_one_root(tmp_path: Path, worker_script: Path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "README").write_text("untouched\n")
    run_together(worker_script, root, [("s-alpha", "alpha", FILES, APPENDS, None),
                                       ("s-beta", "beta", FILES, APPENDS, None)], tmp_path / "go")

    with goex.Runtime(root, policy="permissive") as rt:
        log = rt.log()
        by_session: dict[str, list[dict]] = {}
        for row in log:
            by_session.setdefault(row["session"], []).append(row)
        assert sorted(by_session) == ["s-alpha", "s-beta"]
        for sid, name in [("s-alpha", "alpha"), ("s-beta", "beta")]:
            rows = by_session[sid]
            assert len(rows) == FILES + APPENDS
            assert {r["actor"] for r in rows} == {name}
            assert all(r["status"] == "applied" for r in rows), {r["status"] for r in rows}
            assert sorted(r["target"] for r in rows if r["target"] != f"{name}.log") == \
                [f"{name}/f{i:03d}.txt" for i in range(FILES)]
        assert not [r for r in log if r["status"] == "pending"]
        assert len({r["id"] for r in log}) == len(log) == 2 * (FILES + APPENDS)
        print(f"\nsession switches along the journal: {_interleavings(log)}")
        rt.verify()

        for name in ("alpha", "beta"):
            assert sorted(os.listdir(root / name)) == [f"f{i:03d}.txt" for i in range(FILES)]
            for i in range(FILES):
                assert (root / name / f"f{i:03d}.txt").read_text() == f"{name} file {i}\n" * (i % 7 + 1)
            assert (root / f"{name}.log").read_text() == "".join(f"{name} line {i}\n" for i in range(APPENDS))

        undone = rt.session(session_id="s-alpha").rollback()
        assert len(undone) == FILES + APPENDS
        assert not (root / "alpha").exists() and not (root / "alpha.log").exists()
        assert sorted(os.listdir(root / "beta")) == [f"f{i:03d}.txt" for i in range(FILES)]
        for i in range(FILES):
            assert (root / "beta" / f"f{i:03d}.txt").read_text() == f"beta file {i}\n" * (i % 7 + 1)
        assert (root / "beta.log").read_text() == "".join(f"beta line {i}\n" for i in range(APPENDS))
        assert (root / "README").read_text() == "untouched\n"
        statuses = {sid: {r["status"] for r in rt.log(sid)} for sid in ("s-alpha", "s-beta")}
        assert statuses == {"s-alpha": {"undone"}, "s-beta": {"applied"}}
        rt.verify()

    ver = run_cli("verify", "--root", str(root))
    assert ver.returncode == 0, ver.err


def test_two_processes_appending_to_one_file_lose_nothing(tmp_path: Path, worker_script: Path):
    root = tmp_path / "root"
    root.mkdir()
    run_together(worker_script, root, [("s-left", "left", 0, 150, "shared.log"),
                                       ("s-right", "right", 0, 150, "shared.log")], tmp_path / "go")
    lines = (root / "shared.log").read_text().splitlines()
    assert sorted(lines) == sorted([f"left line {i}" for i in range(150)] + [f"right line {i}" for i in range(150)])
    for name in ("left", "right"):  # each process's lines in its own order, none torn
        assert [ln for ln in lines if ln.startswith(name)] == [f"{name} line {i}" for i in range(150)]
    with goex.Runtime(root, policy="permissive") as rt:
        rt.verify()
        assert len(rt.rollback_all()) == 300
    assert not (root / "shared.log").exists()


def test_busy_sessions_take_turns(tmp_path: Path, worker_script: Path):
    """The lock is released between actions: a process acting back to back must not keep the other
    waiting until it is done (a waiter that only polls now and then never gets its turn, and after
    60 s of that fails with JournalBusy although nobody held the lock that long)."""
    root = tmp_path / "root"
    root.mkdir()
    run_together(worker_script, root, [("s-one", "one", 150, 0, None), ("s-two", "two", 150, 0, None)],
                 tmp_path / "go")
    with goex.Runtime(root, policy="permissive") as rt:
        log = rt.log()
    assert len(log) == 300
    switches = _interleavings(log)
    longest = max(len(list(run)) for _, run in itertools.groupby(r["session"] for r in log))
    print(f"\nsession switches: {switches}, longest run of one session: {longest}")
    assert switches >= 10, f"one process kept the lock for runs of up to {longest} actions while the other waited"


def _open_runtime(root: str, barrier: "multiprocessing.synchronize.Barrier", results: "multiprocessing.Queue[str]") -> None:
    barrier.wait()
    try:
        goex.Runtime(root, policy="permissive").close()
        results.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported by the test
        results.put(f"{type(exc).__name__}: {exc}")


def test_two_processes_opening_a_new_root_at_once(tmp_path: Path):
    """Two agents started together on a fresh root both create the journal: neither may fail (and a
    lock held for a moment is not corruption). Forked processes, released by a barrier, many times."""
    ctx = multiprocessing.get_context("fork")
    failures = []
    for trial in range(100):
        root = tmp_path / f"r{trial}"
        root.mkdir()
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_open_runtime, args=(str(root), barrier, results)) for _ in range(2)]
        for proc in procs:
            proc.start()
        outcomes = [results.get(timeout=60) for _ in procs]
        for proc in procs:
            proc.join(timeout=60)
            assert proc.exitcode == 0
        failures += [f"trial {trial}: {o}" for o in outcomes if o != "ok"]
        with goex.Runtime(root, policy="permissive") as rt:
            rt.verify()
    assert not failures, f"{len(failures)}/100 trials failed, e.g. {failures[0]}"


def _exec(root: Path, session: str, actions: list[dict]) -> list[dict]:
    """`goex exec` in its own process, actions as JSON Lines on stdin; returns the results."""
    proc = subprocess.run([sys.executable, "-m", "goex.cli", "exec", "--root", str(root), "--session", session,
                           "--policy", "permissive", "-"], input="\n".join(json.dumps(a) for a in actions),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == len(actions) and all(r["ok"] and r["session"] == session for r in results), results
    return results


def test_rolling_back_the_earlier_session_over_a_later_write_conflicts(tmp_path: Path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "shared.txt").write_text("original\n")
    os.chmod(root / "shared.txt", 0o640)
    # two processes, one session each: A writes the shared file (and one of its own), then B writes it
    a = _exec(root, "s-A", [{"type": "fs.write", "path": "shared.txt", "content": "from A\n"},
                            {"type": "fs.write", "path": "a-only.txt", "content": "A's own\n"}])
    b = _exec(root, "s-B", [{"type": "fs.write", "path": "shared.txt", "content": "from B\n"}])
    a_shared, a_own = (r["entry_id"] for r in a)
    assert (root / "shared.txt").read_text() == "from B\n"

    with goex.Runtime(root, policy="permissive") as rt:
        session_a = rt.session(session_id="s-A")
        with pytest.raises(goex.UndoConflict) as caught:
            session_a.rollback()
        exc = caught.value
        assert exc.entry_id == a_shared
        assert [path for path, _ in exc.conflicts] == ["shared.txt"]
        assert "shared.txt" in str(exc)
        assert getattr(exc, "undone", None) == [a_own]  # the newer, unconflicted entry was undone first
        assert (root / "shared.txt").read_text() == "from B\n"  # nothing of the conflicting entry undone
        assert not (root / "a-only.txt").exists()
        assert {r["id"]: r["status"] for r in rt.log("s-A")} == {a_shared: "applied", a_own: "undone"}

        assert session_a.rollback(force=True) == [a_shared]
        assert (root / "shared.txt").read_text() == "original\n"
        assert oct(os.stat(root / "shared.txt").st_mode & 0o777) == oct(0o640)
        assert [(r["id"], r["status"]) for r in rt.log("s-B")] == [(b[0]["entry_id"], "applied")]
        rt.verify()
