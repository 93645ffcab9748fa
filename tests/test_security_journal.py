"""Undo reads only what the hash chain vouches for, and never leaves the workspace.

An attacker with write access to `.goex/journal.db` (a hostile agent that found a way to it)
edits the derived index, rewrites the tail with recomputed hashes, or truncates it. Each attack
goes through the public API or the CLI and checks the files, not goex's wording.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

import goex
from goex.journal.anchor import anchor_path
from goex.journal.store import GENESIS, canonical, chain, index_record

from conftest import CliRun, run_cli, snapshot



@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Anchors go to a folder of this test (read by the CLI commands it runs)."""
    state = tmp_path / "state"
    monkeypatch.setenv("GOEX_STATE_DIR", str(state))
    return state


def db(root: Path) -> sqlite3.Connection:
    return sqlite3.connect(root / ".goex" / "journal.db", isolation_level=None)


def cli(*args: str) -> CliRun:
    return run_cli(*args)


def history(root: Path) -> str:
    """One session: three writes (one overwrites a user's file), a read; returns the session id."""
    (root / "user.txt").write_text("the user's own notes\n")
    with goex.Runtime(root, policy="permissive") as rt:
        s = rt.session()
        s.execute({"type": "fs.write", "path": "user.txt", "content": "agent was here\n"}).raise_for_error()
        s.execute({"type": "fs.write", "path": "notes.txt", "content": "agent notes\n"}).raise_for_error()
        s.execute({"type": "fs.read", "path": "notes.txt"}).raise_for_error()
        s.execute({"type": "fs.write", "path": "later.txt", "content": "later work\n"}).raise_for_error()
        return s.id


def entry_seq(root: Path, path: str) -> int:
    with db(root) as c:
        return c.execute("SELECT seq FROM entries WHERE target = ? AND type = 'fs.write'", (path,)).fetchone()[0]


def rewrite(root: Path, edit: Callable[[dict[str, Any]], dict[str, Any]], *, upto: int | None = None) -> None:
    """Rewrite the journal consistently: every record through `edit`, the chain recomputed, the
    head moved, the index rebuilt. Records after `upto` are dropped (a truncation)."""
    c = db(root)
    rows = c.execute("SELECT seq, body FROM records ORDER BY seq").fetchall()
    rows = [r for r in rows if upto is None or r[0] <= upto]
    c.execute("BEGIN")
    if upto is not None:
        c.execute("DELETE FROM records WHERE seq > ?", (upto,))
    c.execute("DELETE FROM entries")
    c.execute("DELETE FROM checkpoints")
    cur = c.cursor()
    prev = GENESIS
    for seq, body in rows:
        record = edit(json.loads(body))
        body = canonical(record)
        prev = chain(prev, body)
        c.execute("UPDATE records SET body = ?, hash = ? WHERE seq = ?", (body, prev, seq))
        index_record(cur, record)
    c.execute("UPDATE head SET seq = ?, hash = ?", (rows[-1][0], prev))
    c.execute("COMMIT")
    c.close()


def fingerprint(path: Path) -> str:
    return f"f{path.stat().st_mode & 0o7777:o}:{hashlib.sha256(path.read_bytes()).hexdigest()}"


def forge_plan(root: Path, victim_path: str, victim: Path, *, node: dict[str, Any] | None = None) -> Callable:
    """An edit making the `notes.txt` entry's undo delete `victim_path`, its `after` matching the victim."""
    target = entry_seq(root, "notes.txt")

    def edit(record: dict[str, Any]) -> dict[str, Any]:
        if record["seq"] == target:
            record["plan"] = {"ops": [{"op": "restore", "path": victim_path, "node": node or {"k": "-"}}]}
        if record["kind"] == "applied" and record["entry"] == f"e{target}":
            record["after"] = {victim_path: fingerprint(victim)}
        return record
    return edit


# -- (a) the derived index is checked against the records before it selects anything -----------


INDEX_EDITS = {
    "undoable=0 skips an entry": "UPDATE entries SET undoable = 0 WHERE target = 'notes.txt'",
    "status=undone skips an entry": "UPDATE entries SET status = 'undone' WHERE target = 'notes.txt'",
    "status=failed skips an entry": "UPDATE entries SET status = 'failed' WHERE target = 'user.txt'",
    "status=pending reverts by recovery": "UPDATE entries SET status = 'pending' WHERE target = 'later.txt'",
    "after_seq points at another entry": "UPDATE entries SET after_seq = (SELECT after_seq FROM entries "
                                         "WHERE target = 'later.txt') WHERE target = 'user.txt'",
    "another session's entry pulled in": "UPDATE entries SET session = 'other' WHERE target = 'later.txt'",
}


@pytest.mark.parametrize("sql", INDEX_EDITS.values(), ids=INDEX_EDITS.keys())
def test_edited_index_makes_rollback_refuse(root: Path, sql: str):
    sid = history(root)
    before = snapshot(root)
    with db(root) as c:
        c.execute(sql)
    with goex.Runtime(root, policy="permissive") as rt:
        with pytest.raises(goex.JournalCorrupt):
            rt.session(session_id=sid).rollback()
        with pytest.raises(goex.JournalCorrupt):
            rt.rollback_all()
    assert snapshot(root) == before  # nothing skipped, nothing later deleted: nothing at all


def test_undone_entry_marked_applied_again_cannot_delete_later_work(root: Path):
    with goex.Runtime(root, policy="permissive") as rt:
        s = rt.session()
        s.execute({"type": "fs.write", "path": "a.txt", "content": "first"}).raise_for_error()
        s.undo()
        s.execute({"type": "fs.write", "path": "a.txt", "content": "later work"}).raise_for_error()
        sid = s.id
    with db(root) as c:
        c.execute("UPDATE entries SET status = 'applied' WHERE seq = 1")
    with goex.Runtime(root, policy="permissive") as rt, pytest.raises(goex.JournalCorrupt):
        rt.session(session_id=sid).rollback(force=True)
    assert (root / "a.txt").read_text() == "later work"


def test_edited_index_is_caught_by_a_runtime_already_open(root: Path):
    with goex.Runtime(root, policy="permissive") as rt:
        s = rt.session()
        s.execute({"type": "fs.write", "path": "a.txt", "content": "1"}).raise_for_error()
        s.execute({"type": "fs.write", "path": "b.txt", "content": "2"}).raise_for_error()
        assert [e["status"] for e in rt.log()] == ["applied", "applied"]  # the verified watermark moved past both
        with db(root) as c:
            c.execute("UPDATE entries SET undoable = 0 WHERE seq = 1")
        with pytest.raises(goex.JournalCorrupt):
            s.rollback()
        assert (root / "a.txt").read_text() == "1" and (root / "b.txt").read_text() == "2"


def test_record_edited_after_this_runtime_verified_it_makes_rollback_refuse(root: Path):
    """The runtime keeps the records it verified parsed; undo still reads each body again and
    checks it against the verified hash before using the parsed record."""
    with goex.Runtime(root, policy="permissive") as rt:
        s = rt.session()
        for name in ("a.txt", "b.txt", "c.txt"):
            s.execute({"type": "fs.write", "path": name, "content": "new"}).raise_for_error()
        assert len(rt.log()) == 3  # verified, and parsed, by this runtime
        with db(root) as c:
            body = c.execute("SELECT body FROM records WHERE seq = 1").fetchone()[0]
            c.execute("UPDATE records SET body = ? WHERE seq = 1", (body.replace('"a.txt"', '"z.txt"'),))
        with pytest.raises(goex.JournalCorrupt, match="record 1 does not match its hash chain"):
            s.rollback()
        assert [(root / n).read_text() for n in ("a.txt", "b.txt", "c.txt")] == ["new"] * 3


# -- (b) a tail rewritten consistently: the anchor catches it; plan paths are confined anyway --


def test_consistent_rewrite_with_an_outside_path_is_caught_and_never_deletes_outside(root: Path, state_dir: Path):
    victim = root.parent / "victim.txt"
    victim.write_bytes(b"outside the workspace\n")
    sid = history(root)
    rewrite(root, forge_plan(root, "../victim.txt", victim))
    before = snapshot(root)

    done = cli("verify", "--root", str(root))
    assert done.returncode != 0 and "anchor" in done.err, (done.out, done.err)
    with goex.Runtime(root, policy="permissive") as rt:
        with pytest.raises(goex.JournalCorrupt):
            rt.session(session_id=sid).rollback()
        with pytest.raises(goex.JournalCorrupt):
            rt.session(session_id=sid).rollback(force=True)
    assert victim.read_bytes() == b"outside the workspace\n"
    assert snapshot(root) == before

    # the anchor gone too (a journal moved here, say): the chain alone vouches for the forgery,
    # and the plan's path is confined again before anything is touched
    anchor_path(root / ".goex").unlink()
    done = cli("verify", "--root", str(root))
    assert done.returncode == 0 and "no anchor" in done.err, (done.out, done.err)
    with goex.Runtime(root, policy="permissive") as rt:
        with pytest.raises(goex.JournalCorrupt):
            rt.session(session_id=sid).rollback(force=True)
        with pytest.raises(goex.JournalCorrupt):
            rt.rollback_all(force=True)
    assert victim.read_bytes() == b"outside the workspace\n"
    assert (root / "notes.txt").read_text() == "agent notes\n"  # its undo was refused whole
    done = cli("undo", "--root", str(root), "--all", "--force")
    assert victim.read_bytes() == b"outside the workspace\n"


FORGED = {
    "dot-dot": ("../victim.txt", None),
    "deep dot-dot": ("sub/../../victim.txt", None),
    "absolute": ("{victim}", None),
    "the journal folder": (".goex", None),
    "a child named ..": ("newdir", {"k": "d", "mode": 0o755, "children": {"..": {"k": "-"}}}),
}


@pytest.mark.parametrize("path, node", FORGED.values(), ids=FORGED.keys())
def test_forged_plan_paths_are_confined_even_forced(root: Path, path: str, node: dict | None):
    victim = root.parent / "victim.txt"
    victim.write_bytes(b"precious")
    sid = history(root)
    path = path.format(victim=victim)
    rewrite(root, forge_plan(root, path, victim, node=node))
    anchor_path(root / ".goex").unlink()  # the anchor cannot help: confinement alone must hold
    with goex.Runtime(root, policy="permissive") as rt:
        with pytest.raises(goex.JournalCorrupt):
            rt.session(session_id=sid).rollback(force=True)
    assert victim.read_bytes() == b"precious"
    assert (root / ".goex" / "journal.db").exists()


def test_forged_plan_through_a_symlink_never_touches_outside(root: Path):
    outside = root.parent / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_bytes(b"precious")
    sid = history(root)
    (root / "link").symlink_to(outside)
    rewrite(root, forge_plan(root, "link/victim.txt", victim))
    anchor_path(root / ".goex").unlink()
    with goex.Runtime(root, policy="permissive") as rt:
        with pytest.raises(goex.GoexError):
            rt.session(session_id=sid).rollback()
    with goex.Runtime(root, policy="permissive") as rt:
        with pytest.raises(goex.GoexError):
            rt.session(session_id=sid).rollback(force=True)
    assert victim.read_bytes() == b"precious"


def test_rewrite_under_a_runtime_already_open_is_caught(root: Path):
    victim = root.parent / "victim.txt"
    victim.write_bytes(b"precious")
    (root / "user.txt").write_text("mine")
    with goex.Runtime(root, policy="permissive") as rt:
        s = rt.session()
        s.execute({"type": "fs.write", "path": "notes.txt", "content": "agent notes\n"}).raise_for_error()
        s.execute({"type": "fs.write", "path": "later.txt", "content": "later\n"}).raise_for_error()
        rt.log()
        rewrite(root, forge_plan(root, "../victim.txt", victim))
        with pytest.raises(goex.JournalCorrupt):
            s.rollback(force=True)
    assert victim.read_bytes() == b"precious"
    assert (root / "later.txt").read_text() == "later\n"


# -- (c) truncation ----------------------------------------------------------------------------


def test_truncated_journal_is_caught_by_the_anchor(root: Path):
    sid = history(root)
    before = snapshot(root)
    last_entry = entry_seq(root, "later.txt")
    rewrite(root, lambda r: r, upto=last_entry - 1)  # the last write's records gone, head rewound
    done = cli("verify", "--root", str(root))
    assert done.returncode != 0 and "truncated" in done.err, (done.out, done.err)
    with goex.Runtime(root, policy="permissive") as rt, pytest.raises(goex.JournalCorrupt):
        rt.session(session_id=sid).rollback()
    assert snapshot(root) == before


def test_truncation_under_a_runtime_already_open_is_caught(root: Path):
    with goex.Runtime(root, policy="permissive") as rt:
        s = rt.session()
        for i in range(3):
            s.execute({"type": "fs.write", "path": f"f{i}.txt", "content": str(i)}).raise_for_error()
        rt.log()
        rewrite(root, lambda r: r, upto=2)
        with pytest.raises(goex.JournalCorrupt):
            s.rollback()
        with pytest.raises(goex.JournalCorrupt):
            rt.verify()
    assert [(root / f"f{i}.txt").read_text() for i in range(3)] == ["0", "1", "2"]


# -- (d) normal work verifies and undoes; concurrent appenders keep the anchor at the head -----


def test_normal_workload_verifies_and_undoes(root: Path, state_dir: Path):
    (root / "keep.txt").write_text("kept")
    before = snapshot(root)
    with goex.Runtime(root, policy="permissive") as rt:
        s = rt.session()
        s.execute({"type": "fs.mkdir", "path": "d/e"}).raise_for_error()
        s.execute({"type": "fs.write", "path": "d/e/x.txt", "content": "x" * 10_000}).raise_for_error()
        cp = s.checkpoint("mid")
        s.execute({"type": "fs.move", "src": "keep.txt", "dst": "d/kept.txt"}).raise_for_error()
        s.execute({"type": "fs.write", "path": "d/kept.txt", "content": "+", "append": True}).raise_for_error()
        report = rt.verify()
        assert report.warnings == ()
        assert len(s.rollback(to=cp)) == 2
        assert rt.checkpoints(s.id)[0]["label"] == "mid"
        assert len(s.review()) == 4
        s.rollback()
        assert rt.verify().warnings == ()
    assert snapshot(root) == before
    seq, digest = anchor_path(root / ".goex").read_text().splitlines()[0].split(":")
    assert (int(seq), digest) == tuple(db(root).execute("SELECT seq, hash FROM head").fetchone())
    done = cli("verify", "--root", str(root))
    assert done.returncode == 0 and done.err == "", done.err


WORKER = r'''
import os, sys, time
import goex
root, name, go = sys.argv[1], sys.argv[2], sys.argv[3]
rt = goex.Runtime(root, policy="permissive", durability="process")
s = rt.session(actor=name, session_id=name)
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.001)
for i in range(40):
    s.execute({"type": "fs.write", "path": f"{name}-{i % 5}.txt", "content": f"{name} {i}"}).raise_for_error()
    if i % 10 == 9:
        s.undo()
rt.close()
'''


def test_two_processes_appending_keep_the_anchor_at_the_head(root: Path, tmp_path: Path):
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(root), name, str(go)], stdout=subprocess.PIPE,
                              text=True) for name in ("p1", "p2")]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    go.touch()
    for p in procs:
        assert p.wait(timeout=300) == 0
    head = db(root).execute("SELECT seq, hash FROM head").fetchone()
    seq, digest = anchor_path(root / ".goex").read_text().splitlines()[0].split(":")
    assert (int(seq), digest) == tuple(head)
    done = cli("verify", "--root", str(root))
    assert done.returncode == 0 and done.err == "", done.err
    with goex.Runtime(root, policy="permissive") as rt:
        for name in ("p1", "p2"):
            rt.session(session_id=name).rollback()
    assert sorted(p.name for p in root.iterdir()) == [".goex"]


def test_a_journal_without_anchor_here_is_reported_not_refused(root: Path, state_dir: Path, tmp_path: Path):
    history(root)
    anchor_path(root / ".goex").unlink()  # as on a machine the journal was moved to
    with goex.Runtime(root, policy="permissive") as rt:
        report = rt.verify()
        assert report.warnings and "no anchor" in report.warnings[0]
        rt.rollback_all()
    assert not (root / "notes.txt").exists() and (root / "user.txt").read_text() == "the user's own notes\n"
    done = cli("verify", "--root", str(root))  # anchored again: no warning any more
    assert done.returncode == 0 and done.err == "", done.err
