"""Every file action, applied through a session and undone exactly (content, modes, kinds)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

import goex
from conftest import seed_tree, snapshot


@pytest.fixture
def seeded(root: Path, rt: goex.Runtime):
    seed_tree(root)
    return rt, snapshot(root)


def run(session: goex.Session, **action) -> goex.Result:
    result = session.execute(action)
    assert result.ok, result.error
    return result


@pytest.mark.parametrize(
    "action",
    [
        {"type": "fs.write", "path": "src/main.py", "content": "print('bye')\n"},
        {"type": "fs.write", "path": "new/deep/dir/file.txt", "content": "fresh"},
        {"type": "fs.write", "path": "blob.bin", "encoding": "base64", "content": base64.b64encode(b"\0\xff" * 999).decode()},
        {"type": "fs.write", "path": "src/main.py", "content": "more\n", "append": True},
        {"type": "fs.write", "path": "link-to-main", "content": "through a link inside the root\n"},
        {"type": "fs.delete", "path": "src", "recursive": True},
        {"type": "fs.delete", "path": "empty"},
        {"type": "fs.delete", "path": "secret.txt"},
        {"type": "fs.delete", "path": "link-to-main"},
        {"type": "fs.delete", "path": "dangling"},
        {"type": "fs.move", "src": "src", "dst": "lib/src"},
        {"type": "fs.move", "src": "secret.txt", "dst": "blob.bin", "overwrite": True},
        {"type": "fs.move", "src": "bin", "dst": "src", "overwrite": True},
        {"type": "fs.move", "src": "link-to-main", "dst": "renamed-link"},
        {"type": "fs.mkdir", "path": "a/b/c"},
        {"type": "fs.chmod", "path": "secret.txt", "mode": "0644"},
        {"type": "fs.chmod", "path": "src", "mode": "0700"},
    ],
    ids=lambda a: a["type"] + ":" + (a.get("path") or a["src"]),
)
def test_each_action_is_undone_exactly(seeded, action):
    rt, before = seeded
    session = rt.session()
    run(session, **action)
    assert snapshot(rt.root) != before, "the action should have changed something"
    assert session.undo() != []
    assert snapshot(rt.root) == before


def test_write_output_and_read_back(root: Path, rt: goex.Runtime):
    s = rt.session()
    r = run(s, type="fs.write", path="notes/today.md", content="héllo\n")
    assert r.output == {"path": "notes/today.md", "bytes_written": 7}
    assert (root / "notes/today.md").read_text() == "héllo\n"
    assert run(s, type="fs.read", path="notes/today.md").output == "héllo\n"
    (root / "raw.bin").write_bytes(b"\xff\x00")
    assert not s.execute({"type": "fs.read", "path": "raw.bin"}).ok
    assert run(s, type="fs.read", path="raw.bin", encoding="base64").output == base64.b64encode(b"\xff\x00").decode()


def test_list_shows_kinds_and_hides_the_journal(root: Path, rt: goex.Runtime):
    seed_tree(root)
    listing = run(rt.session(), type="fs.list", path=".").output
    names = [e["name"] for e in listing]
    assert ".goex" not in names
    assert names == sorted(n for n in os.listdir(root) if n != ".goex")
    kinds = {e["name"]: e["kind"] for e in listing}
    assert kinds["src"] == "folder" and kinds["blob.bin"] == "file" and kinds["dangling"] == "symlink"
    assert {e["name"]: e["mode"] for e in listing}["secret.txt"] == "0600"


def test_reads_are_journaled_but_not_undone(root: Path, rt: goex.Runtime):
    (root / "a.txt").write_text("a")
    s = rt.session()
    read = run(s, type="fs.read", path="a.txt")
    write = run(s, type="fs.write", path="a.txt", content="b")
    assert [e["id"] for e in s.log()] == [read.entry_id, write.entry_id]
    assert s.undo(steps=5) == [write.entry_id]
    assert (root / "a.txt").read_text() == "a"
    assert {e["id"]: e["status"] for e in s.log()} == {read.entry_id: "applied", write.entry_id: "undone"}


def test_checkpoints_and_partial_rollback(root: Path, rt: goex.Runtime):
    s = rt.session()
    run(s, type="fs.write", path="f", content="1")
    one = snapshot(root)
    cp = s.checkpoint("one")
    run(s, type="fs.write", path="f", content="2")
    run(s, type="fs.write", path="g", content="2")
    two = snapshot(root)
    s.checkpoint("two")
    run(s, type="fs.delete", path="f")
    assert len(s.rollback(to="two")) == 1
    assert snapshot(root) == two
    assert len(s.rollback(to=cp)) == 2
    assert snapshot(root) == one
    s.rollback()
    assert snapshot(root) == {}
    with pytest.raises(goex.GoexError, match="no checkpoint 'nope'"):
        s.rollback(to="nope")


def test_undo_steps_counts_changing_actions(root: Path, rt: goex.Runtime):
    s = rt.session()
    for i in range(4):
        run(s, type="fs.write", path=f"f{i}", content=str(i))
        run(s, type="fs.read", path=f"f{i}")
    assert len(s.undo(steps=2)) == 2
    assert sorted(os.listdir(root)) == [".goex", "f0", "f1"]


def test_rollback_all_undoes_every_session_newest_first(root: Path, rt: goex.Runtime):
    (root / "shared.txt").write_text("start")
    before = snapshot(root)
    a, b = rt.session(actor="a"), rt.session(actor="b")
    run(a, type="fs.write", path="shared.txt", content="a")
    run(b, type="fs.write", path="shared.txt", content="b")
    run(a, type="fs.write", path="a-only", content="a")
    assert len(rt.rollback_all()) == 3
    assert snapshot(root) == before


def test_session_can_be_resumed_by_id(root: Path, rt: goex.Runtime):
    s = rt.session(session_id="fixed-id")
    run(s, type="fs.write", path="x", content="1")
    again = rt.session(session_id="fixed-id")
    run(again, type="fs.write", path="y", content="2")
    assert len(again.rollback()) == 2
    assert snapshot(root) == {}


def test_session_context_manager_does_not_undo(root: Path, rt: goex.Runtime):
    with rt.session() as s:
        run(s, type="fs.write", path="kept", content="yes")
    assert (root / "kept").read_text() == "yes"


def test_failures_are_clear_and_change_nothing(root: Path, rt: goex.Runtime):
    seed_tree(root)
    before = snapshot(root)
    s = rt.session()
    cases = [
        ({"type": "fs.delete", "path": "src"}, "not empty"),
        ({"type": "fs.delete", "path": "nope"}, "no such file"),
        ({"type": "fs.move", "src": "secret.txt", "dst": "blob.bin"}, "set overwrite=true"),
        ({"type": "fs.move", "src": "src", "dst": "src/pkg/inner"}, "into itself"),
        ({"type": "fs.write", "path": "src", "content": "x"}, "is a folder"),
        ({"type": "fs.write", "path": "secret.txt/x", "content": "x"}, "not a folder"),
        ({"type": "fs.read", "path": "src"}, "is a folder"),
        ({"type": "fs.mkdir", "path": "secret.txt"}, "not a folder"),
        ({"type": "fs.list", "path": "secret.txt"}, "not a folder"),
        ({"type": "fs.chmod", "path": "nope", "mode": "0644"}, "no such file"),
        ({"type": "fs.write", "path": "trailing/", "content": "x"}, "ends with '/'"),
    ]
    for action, words in cases:
        result = s.execute(action)
        assert not result.ok and result.status == "failed", action
        assert words in result.error, (action, result.error)
    assert snapshot(root) == before
    assert all(e["status"] == "failed" for e in s.log())
    rt.verify()


def test_raise_for_error(root: Path, rt: goex.Runtime):
    s = rt.session()
    with pytest.raises(goex.ActionFailed):
        s.execute({"type": "fs.read", "path": "missing"}).raise_for_error()
    strict = goex.Runtime(root, policy="default")
    try:
        with pytest.raises(goex.PolicyDenied) as info:
            strict.session().execute({"type": "fs.write", "path": ".env", "content": "x"}).raise_for_error()
        assert info.value.rules == ["fs.env-files"]
    finally:
        strict.close()


def test_large_file_spans_several_chunks(root: Path, rt: goex.Runtime):
    big = os.urandom(3 * 1024 * 1024 + 17)
    (root / "big.bin").write_bytes(big)
    before = snapshot(root)
    s = rt.session()
    run(s, type="fs.write", path="big.bin", content="small now")
    run(s, type="fs.delete", path="big.bin")
    s.rollback()
    assert snapshot(root) == before
    rt.verify()


def test_identical_before_images_are_stored_once(root: Path, rt: goex.Runtime):
    for i in range(20):
        (root / f"copy{i}.txt").write_text("same content\n" * 100)
    s = rt.session()
    for i in range(20):
        run(s, type="fs.delete", path=f"copy{i}.txt")
    assert rt.verify().blobs == 1


def test_mtime_of_restored_files_is_kept(root: Path, rt: goex.Runtime):
    (root / "old.txt").write_text("old")
    os.utime(root / "old.txt", ns=(1_000_000_000, 1_000_000_000))
    s = rt.session()
    run(s, type="fs.write", path="old.txt", content="new")
    s.undo()
    assert (root / "old.txt").stat().st_mtime_ns == 1_000_000_000


def test_forced_undo_keeps_files_nobody_journaled(root: Path, rt: goex.Runtime):
    s = rt.session()
    run(s, type="fs.write", path="made/by/goex.txt", content="x")
    (root / "made/by/human.txt").write_text("precious")
    with pytest.raises(goex.UndoConflict) as info:
        s.undo()
    assert "made" in str(info.value)
    assert info.value.forceable and "--force" in str(info.value)  # forcing is the way to take it back anyway
    assert s.undo(force=True)
    assert not (root / "made/by/goex.txt").exists()
    assert (root / "made/by/human.txt").read_text() == "precious"
    assert [e["status"] for e in s.log()] == ["undone"]


def test_a_conflict_names_who_changed_the_target_since(root: Path):
    """The exception itself says which later entry (and session) changed what the undo would
    overwrite, or that nothing goex journaled did."""
    with goex.Runtime(root, policy="permissive", durability="process") as rt:
        first, second = rt.session(session_id="first"), rt.session(session_id="second")
        assert run(first, type="fs.write", path="f", content="1").ok
        later = run(second, type="fs.write", path="f", content="2").entry_id
        with pytest.raises(goex.UndoConflict) as caught:
            first.rollback()
        assert caught.value.changed_by == [f"f was changed since by entry {later} of session second (fs.write by agent)"]
        assert f"entry {later} of session second" in str(caught.value)
        assert run(first, type="fs.write", path="g", content="1").ok
        (root / "g").write_text("by hand")
        with pytest.raises(goex.UndoConflict) as caught:
            first.undo()
        assert "outside goex" in str(caught.value) and caught.value.undone == []
