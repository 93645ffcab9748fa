"""A gym reset (the episode rolled back as one range, the world checked, the `undone` records and
the journal's compaction in one commit) killed at any point is settled exactly by `recover`; a
reset whose check fails keeps the episode's history."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import goex
import goex.gym
from goex.adapters.sql.sqlite import fingerprint_path
from goex.gym.world import ResetDrift
from goex.journal.store import Journal

TASK = """
id: resets
domain: sql
instruction: A world for resets.
files:
  notes/a.txt: "a\\n"
databases:
  main:
    setup: |
      CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER);
      WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100) INSERT INTO t SELECT x, 0 FROM c;
max_steps: 100000
grade:
  - file: {path: notes/a.txt, exists: true}
reference:
  honest: [{type: submit}]
"""

# The child plays one episode, says what the world's start is, then resets when told; `when`
# picks where it dies: "timed" (the parent kills it at a random moment of the reset), "before"
# (right before the commit of the `undone` records and the compaction) or "after" (right after it).
CHILD = """
import json, os, signal, sys
import goex.gym
from goex.journal import store

home, task, when = sys.argv[1], sys.argv[2], sys.argv[3]
env = goex.gym.GoexEnv(task=task, home=home)
env.reset(seed=0)
for i in range(60):
    if i % 2:
        env.step(json.dumps({"type": "fs.write", "path": f"notes/f{i % 7}.txt", "content": f"{i}" * (1 + i)}))
    else:
        env.step(json.dumps({"type": "sql.execute", "db": "main", "sql": "UPDATE t SET v = ? WHERE id = ?",
                             "params": [i + 1, i % 9 + 1]}))
original = store.Journal.append_and_compact


def dying(self, kind, records):
    if when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    out = original(self, kind, records)
    if when == "after":
        os.kill(os.getpid(), signal.SIGKILL)
    return out


store.Journal.append_and_compact = dying
print(json.dumps(env.world.start_parts), flush=True)
sys.stdin.readline()
env.reset()
print("reset", flush=True)
sys.stdin.readline()
"""


def _state(world_home: Path, rt: goex.Runtime) -> dict[str, str]:
    return {"files": rt.fingerprint(), "database main": fingerprint_path(world_home / "databases" / "main.db")}


def _kill_in_reset(tmp_path: Path, name: str, when: str, rng: random.Random,
                   child: str = CHILD) -> tuple[bool, Path, dict[str, str]]:
    """Run the child until it died in its reset (or finished it); returns whether the journal held
    an unfinished undo then, the world's folder and its start."""
    (tmp_path / "task.yaml").write_text(TASK)
    (tmp_path / "child.py").write_text(child)
    home = tmp_path / name
    proc = subprocess.Popen([sys.executable, str(tmp_path / "child.py"), str(home), str(tmp_path / "task.yaml"), when],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    line = proc.stdout.readline()
    assert line, proc.communicate()[1].decode()
    start = json.loads(line)
    proc.stdin.write(b"go\n")
    proc.stdin.flush()
    if when == "timed":
        time.sleep(rng.uniform(0, 0.012))
        proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(b"\n", timeout=60)
    said = [line for line in out.decode().splitlines() if line.startswith('{"held"')]
    if said:
        (tmp_path / "said").write_text(said[-1])
    if when != "timed":
        assert proc.returncode == -signal.SIGKILL, err.decode()
    world = home / "resets"
    with goex.Runtime(world / "workspace", policy="permissive",
                      databases={"main": f"sqlite:///{world / 'databases' / 'main.db'}"}) as rt:
        unfinished = any(e["status"] in ("undoing", "applied") for e in rt.log())
    return unfinished, world, start


def _settle(world: Path, start: dict[str, str]) -> None:
    """Recover, undo what is left: the world is at its start and the journal verifies, and
    compacts (nothing is left open)."""
    with goex.Runtime(world / "workspace", policy="permissive",
                      databases={"main": f"sqlite:///{world / 'databases' / 'main.db'}"}) as rt:
        report = rt.recover()
        assert report.ok, report.outcomes
        rt.rollback_all()
        assert _state(world, rt) == start
        assert {e["status"] for e in rt.log()} <= {"undone"}
        rt.verify()
        if rt.log():
            rt.compact()
            rt.verify()


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_reset_killed_at_its_one_commit_is_settled_exactly(tmp_path: Path, when: str):
    unfinished, world, start = _kill_in_reset(tmp_path, "home", when, random.Random(when))
    assert unfinished == (when == "before")  # before the commit the range is still "undoing"
    _settle(world, start)


def test_a_reset_killed_at_a_random_moment_is_settled_exactly(tmp_path: Path):
    inside = 0
    for i in range(6):
        unfinished, world, start = _kill_in_reset(tmp_path, f"home{i}", "timed", random.Random(f"reset-kill-{i}"))
        inside += unfinished
        _settle(world, start)
    assert inside >= 1, "no kill landed before the reset finished: the test did not test recovery"


# The SQLite part of the range is applied once, in a write transaction held open across the
# `undoing` commit: the child dies with that transaction open before the `undoing` record
# ("unrecorded"), with it open after the record ("recorded"), or right after the database's commit
# ("committed"). Before dying it reports whether the transaction was open and the database as
# another connection sees it then.
HELD_CHILD = CHILD.replace("store.Journal.append_and_compact = dying", """
from goex.adapters.sql import sqlite as engine_module
from goex.journal.store import Journal
database = os.path.join(home, "resets", "databases", "main.db")
end = engine_module.fingerprint_path(engine_module.Path(database))
composes, revert_range, transaction = (engine_module.SqliteEngine._composes_cleanly,
                                       engine_module.SqliteEngine.revert_range, Journal.transaction)


def report_and_die(engine):
    held = engine._undo is not None and not engine._undo[0].get_autocommit()
    seen = engine_module.fingerprint_path(engine_module.Path(database))
    print(json.dumps({"held": held, "unchanged": seen == end}), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def composing(self, *args):
    clean = composes(self, *args)
    if clean and when == "unrecorded":
        report_and_die(self)
    return clean


def reverting(self, *args):
    if when == "recorded":
        report_and_die(self)
    out = revert_range(self, *args)
    if when == "committed":
        report_and_die(self)
    return out


engine_module.SqliteEngine._composes_cleanly = composing
engine_module.SqliteEngine.revert_range = reverting
""")


@pytest.mark.parametrize("when", ["unrecorded", "recorded", "committed"])
def test_a_reset_killed_around_the_held_database_transaction_is_settled_exactly(tmp_path: Path, when: str):
    unfinished, world, start = _kill_in_reset(tmp_path, "home", when, random.Random(when), child=HELD_CHILD)
    said = json.loads((tmp_path / "said").read_text()) if (tmp_path / "said").exists() else None
    assert said == {"held": when != "committed", "unchanged": when != "committed"}
    assert unfinished  # the entries are still applied ("unrecorded") or the range is "undoing"
    with goex.Runtime(world / "workspace", policy="permissive",
                      databases={"main": f"sqlite:///{world / 'databases' / 'main.db'}"}) as rt:
        statuses = {e["status"] for e in rt.log()}
    assert ("undoing" in statuses) == (when != "unrecorded")
    _settle(world, start)


def test_a_reset_whose_check_fails_keeps_the_episode_history(tmp_path: Path):
    (tmp_path / "task.yaml").write_text(TASK)
    env = goex.gym.GoexEnv(task=tmp_path / "task.yaml", home=tmp_path / "home")
    try:
        env.reset(seed=0)
        env.step(json.dumps({"type": "fs.write", "path": "notes/b.txt", "content": "b"}))
        env.step(json.dumps({"type": "sql.execute", "db": "main", "sql": "UPDATE t SET v = 7 WHERE id = 3"}))
        assert env.world is not None
        rt = env.world.runtime
        (env.world.root / "notes" / "a.txt").write_text("changed behind goex's back\n")
        with pytest.raises(ResetDrift, match="files"):
            env.reset()
        assert [e["status"] for e in rt.log()] == ["undone", "undone"]  # undone, recorded, not folded away
        assert rt.verify().records > 2
    finally:
        env.close()


def test_after_a_reset_the_journal_is_one_record_and_verifies_from_disk(tmp_path: Path):
    (tmp_path / "task.yaml").write_text(TASK)
    env = goex.gym.GoexEnv(task=tmp_path / "task.yaml", home=tmp_path / "home")
    try:
        env.reset(seed=0)
        assert env.world is not None
        world, start = env.world, env.world.start
        for episode in range(3):
            for i in range(20):
                env.step(json.dumps({"type": "fs.write", "path": f"notes/f{i % 3}.txt", "content": f"{episode}{i}"}))
                env.step(json.dumps({"type": "sql.execute", "db": "main", "sql": "UPDATE t SET v = ? WHERE id = ?",
                                     "params": [episode * 100 + i, i % 5 + 1]}))
            env.reset()
            assert world.fingerprint() == start
            assert world.runtime.verify().records == 1  # the `compacted` record alone
        journal = Journal.reader(world.root / ".goex")  # a fresh replay, from disk
        try:
            assert journal.verified_head()[0] > 0 and journal.entries() == []
        finally:
            journal.close()
    finally:
        env.close()
