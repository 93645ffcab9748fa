"""Confinement: no action reads or changes anything outside the workspace root, or the journal.

Every test keeps a sibling folder `outside/` next to the root, holding a secret, and checks at
the end that it is exactly as it was (names, kinds, bytes, modes, mtimes, symlink targets), that
refused actions were journaled as denied, and that the journal still verifies.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import random
import stat
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import goex

SECRET = "top secret: the launch codes\n"


# -- helpers -----------------------------------------------------------------------------------


def tree_state(top: Path, *, times: bool = True) -> dict[str, tuple]:
    """Everything observable about a tree, `top` itself included: kind, mode, mtime, bytes, target.

    `times=False` leaves mtimes out (undo restores content and modes, not folder mtimes)."""
    out: dict[str, tuple] = {}

    def visit(path: Path, rel: str) -> None:
        st = path.lstat()
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", mode, st.st_mtime_ns if times else None)
            for name in sorted(os.listdir(path)):
                visit(path / name, f"{rel}/{name}" if rel != "." else name)
        elif stat.S_ISREG(st.st_mode):
            out[rel] = ("file", mode, st.st_mtime_ns if times else None, path.read_bytes())
        else:
            out[rel] = ("special", stat.S_IFMT(st.st_mode), mode, st.st_rdev)

    visit(top, ".")
    return out


@dataclass
class Env:
    root: Path
    outside: Path
    rt: goex.Runtime
    session: goex.Session
    outside_before: dict[str, tuple]

    def refused(self, action: dict[str, Any], *why: str) -> goex.Result:
        """Run `action`; it must be refused (denied), say why, and be journaled as a deny."""
        result = self.session.execute(action)
        assert not result.ok, f"{action} was not refused: {result}"
        assert result.status == "denied", (action, result)
        assert result.error, action
        for fragment in why:
            assert fragment in result.error, (action, result.error)
        assert SECRET.strip() not in str(result.output or "") + result.error, "the secret leaked"
        assert result.output is None
        assert result.entry_id
        row = next(r for r in self.rt.log() if r["id"] == result.entry_id)
        assert (row["decision"], row["status"]) == ("deny", "denied"), row
        return result

    def ok(self, action: dict[str, Any]) -> goex.Result:
        result = self.session.execute(action)
        assert result.ok, (action, result.error)
        return result

    def check(self, *, pending_ok: bool = False) -> None:
        """Nothing outside changed, and the journal (with its deny entries) verifies."""
        assert tree_state(self.outside) == self.outside_before
        self.rt.verify()
        assert all(r["decision"] == "deny" for r in self.rt.log() if r["status"] == "denied")
        if not pending_ok:
            assert not [r for r in self.rt.log() if r["status"] == "pending"]


def _make_outside(outside: Path) -> None:
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    os.chmod(outside / "secret.txt", 0o640)
    (outside / "x").write_text("outside x\n")
    os.chmod(outside / "x", 0o600)
    (outside / "sub").mkdir()
    (outside / "sub" / "inner.txt").write_text("inner\n")
    os.chmod(outside / "sub", 0o750)
    # mtimes in the past, so any write or directory change shows even on coarse clocks
    for p in [outside / "secret.txt", outside / "x", outside / "sub" / "inner.txt", outside / "sub", outside]:
        os.utime(p, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000), follow_symlinks=False)


@pytest.fixture
def env(tmp_path: Path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "inside.txt").write_text("inside\n")
    (root / "real").mkdir()
    (root / "real" / "target.txt").write_text("target\n")
    outside = tmp_path / "outside"
    _make_outside(outside)
    rt = goex.Runtime(root, policy="permissive")
    e = Env(root, outside, rt, rt.session(), tree_state(outside))
    yield e
    rt.close()


def _every_action_on(path: str) -> list[dict[str, Any]]:
    return [
        {"type": "fs.write", "path": path, "content": "pwned\n"},
        {"type": "fs.write", "path": path, "content": "pwned\n", "append": True},
        {"type": "fs.read", "path": path},
        {"type": "fs.list", "path": path},
        {"type": "fs.delete", "path": path},
        {"type": "fs.delete", "path": path, "recursive": True},
        {"type": "fs.chmod", "path": path, "mode": "0777"},
        {"type": "fs.mkdir", "path": path + "/newdir"},
        {"type": "fs.move", "src": path, "dst": "stolen"},
        {"type": "fs.move", "src": "inside.txt", "dst": path, "overwrite": True},
        {"type": "fs.move", "src": "inside.txt", "dst": path + "/planted.txt"},
    ]


DOTDOT_PATHS = ["../outside/secret.txt", "../outside", "real/../../outside/x", "..", "./../outside/x",
                "a/../inside.txt"]


# -- '..' and absolute paths --------------------------------------------------------------------


@pytest.mark.parametrize("path", DOTDOT_PATHS)
def test_dotdot_paths_are_refused(env: Env, path: str):
    for action in _every_action_on(path):
        env.refused(action, "'..' is not allowed")
    assert (env.root / "inside.txt").read_text() == "inside\n"
    assert not (env.root / "stolen").exists()
    env.check()


def test_absolute_paths_are_refused(env: Env):
    for path in [str(env.outside / "secret.txt"), str(env.outside), str(env.outside / "sub" / "inner.txt"),
                 str(env.outside / "new.txt"), str(env.root / "inside.txt"), "/"]:
        for action in _every_action_on(path):
            env.refused(action, "absolute paths are not allowed")
    assert not (env.outside / "new.txt").exists()
    assert (env.root / "inside.txt").read_text() == "inside\n"
    env.check()


# -- symlinks leading out -----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["absolute", "relative", "relative-deep"])
def test_intermediate_symlink_pointing_outside_is_refused(env: Env, how: str):
    if how == "absolute":
        os.symlink(str(env.outside), env.root / "esc")
        link = "esc"
    elif how == "relative":
        os.symlink("../outside", env.root / "esc")
        link = "esc"
    else:
        (env.root / "a" / "b").mkdir(parents=True)
        os.symlink("../../../outside", env.root / "a" / "b" / "esc")
        link = "a/b/esc"
    for rest in ["secret.txt", "sub/inner.txt", "sub", "brand-new.txt", "new/dir/file.txt"]:
        for action in _every_action_on(f"{link}/{rest}"):
            env.refused(action, "points outside the workspace")
    assert not (env.outside / "brand-new.txt").exists()
    assert (env.root / "inside.txt").read_text() == "inside\n"
    env.check()


@pytest.mark.parametrize("target_kind", ["absolute", "relative", "dangling-absolute", "dangling-relative"])
def test_final_symlink_pointing_outside_is_refused_for_write_read_chmod(env: Env, target_kind: str):
    target = {
        "absolute": str(env.outside / "secret.txt"),
        "relative": "../outside/secret.txt",
        "dangling-absolute": str(env.outside / "created-through-link.txt"),
        "dangling-relative": "../outside/created-through-link.txt",
    }[target_kind]
    os.symlink(target, env.root / "lnk")
    os.symlink("../lnk", env.root / "real" / "hop")  # inside -> inside -> outside
    for path in ["lnk", "real/hop"]:
        env.refused({"type": "fs.write", "path": path, "content": "pwned\n"}, "points outside the workspace")
        env.refused({"type": "fs.read", "path": path}, "points outside the workspace")
        env.refused({"type": "fs.chmod", "path": path, "mode": "0777"}, "points outside the workspace")
    env.refused({"type": "fs.write", "path": "lnk", "content": "pwned\n"}, "points outside the workspace")
    env.refused({"type": "fs.write", "path": "lnk", "content": "pwned\n", "append": True}, "points outside")
    env.refused({"type": "fs.write", "path": "lnk", "encoding": "base64", "content": "cHduZWQ="}, "points outside")
    env.refused({"type": "fs.read", "path": "lnk"}, "points outside the workspace")
    env.refused({"type": "fs.read", "path": "lnk", "encoding": "base64"}, "points outside the workspace")
    env.refused({"type": "fs.chmod", "path": "lnk", "mode": "0777"}, "points outside the workspace")
    env.refused({"type": "fs.chmod", "path": "lnk", "mode": "0000"}, "points outside the workspace")
    env.refused({"type": "fs.mkdir", "path": "lnk"}, "points outside the workspace")
    env.refused({"type": "fs.list", "path": "lnk"}, "points outside the workspace")
    # the link itself is untouched
    assert os.readlink(env.root / "lnk") == target
    assert not (env.outside / "created-through-link.txt").exists()
    env.check()


@pytest.mark.parametrize("target_kind", ["file-absolute", "file-relative", "folder-absolute", "folder-relative"])
def test_deleting_a_symlink_pointing_outside_deletes_only_the_link_and_undo_brings_it_back(env: Env, target_kind: str):
    target = {
        "file-absolute": str(env.outside / "secret.txt"),
        "file-relative": "../outside/secret.txt",
        "folder-absolute": str(env.outside),
        "folder-relative": "../outside",
    }[target_kind]
    os.symlink(target, env.root / "lnk")
    for recursive in (False, True):
        env.ok({"type": "fs.delete", "path": "lnk", "recursive": recursive})
        assert not os.path.lexists(env.root / "lnk")
        assert tree_state(env.outside) == env.outside_before
        assert env.session.undo() != []
        assert os.readlink(env.root / "lnk") == target
        assert stat.S_ISLNK(os.lstat(env.root / "lnk").st_mode)
    env.check()


def test_recursive_delete_of_a_folder_holding_links_outside_leaves_the_outside_alone(env: Env):
    box = env.root / "box"
    box.mkdir()
    (box / "own.txt").write_text("own\n")
    os.symlink(str(env.outside), box / "abs-dir")
    os.symlink("../../outside/secret.txt", box / "rel-file")
    (box / "deeper").mkdir()
    os.symlink(str(env.outside / "sub"), box / "deeper" / "abs-sub")
    before = tree_state(box, times=False)
    env.ok({"type": "fs.delete", "path": "box", "recursive": True})
    assert not box.exists()
    assert tree_state(env.outside) == env.outside_before
    env.session.undo()
    assert tree_state(box, times=False) == before
    env.check()


def test_symlinks_pointing_inside_the_root_work(env: Env):
    root = env.root
    (root / "sub").mkdir()
    os.symlink("real/target.txt", root / "file-link")
    os.symlink("real", root / "dir-link")
    os.symlink("../real", root / "sub" / "up-link")
    os.symlink("real/not-yet.txt", root / "dangling-inside")
    os.symlink("dir-link/target.txt", root / "chained")

    assert env.ok({"type": "fs.read", "path": "file-link"}).output == "target\n"
    env.ok({"type": "fs.write", "path": "file-link", "content": "via file link\n"})
    assert (root / "real" / "target.txt").read_text() == "via file link\n"
    assert os.readlink(root / "file-link") == "real/target.txt"  # still a link, not replaced

    env.ok({"type": "fs.write", "path": "dir-link/new.txt", "content": "via dir link\n"})
    assert (root / "real" / "new.txt").read_text() == "via dir link\n"
    env.ok({"type": "fs.write", "path": "sub/up-link/deep/x.txt", "content": "via ../ link\n"})
    assert (root / "real" / "deep" / "x.txt").read_text() == "via ../ link\n"
    env.ok({"type": "fs.write", "path": "dangling-inside", "content": "created at the target\n"})
    assert (root / "real" / "not-yet.txt").read_text() == "created at the target\n"
    assert os.path.islink(root / "dangling-inside")
    env.ok({"type": "fs.write", "path": "chained", "content": "two hops\n", "append": True})
    assert (root / "real" / "target.txt").read_text() == "via file link\ntwo hops\n"

    env.ok({"type": "fs.chmod", "path": "file-link", "mode": "0600"})
    assert stat.S_IMODE(os.stat(root / "real" / "target.txt").st_mode) == 0o600
    listing = env.ok({"type": "fs.list", "path": "dir-link"}).output
    assert [item["name"] for item in listing] == ["deep", "new.txt", "not-yet.txt", "target.txt"]

    # all of it lands inside and is undone exactly
    env.session.rollback()
    assert (root / "real" / "target.txt").read_text() == "target\n"
    assert sorted(os.listdir(root / "real")) == ["target.txt"]
    assert os.readlink(root / "dangling-inside") == "real/not-yet.txt"
    env.check()


def test_absolute_symlink_pointing_inside_the_root_works(env: Env):
    """An absolute symlink whose target is inside the root leads inside: it must not be refused."""
    os.symlink(str(env.root / "real"), env.root / "abs-in")
    result = env.session.execute({"type": "fs.write", "path": "abs-in/new.txt", "content": "in\n"})
    assert result.ok, result.error
    assert (env.root / "real" / "new.txt").read_text() == "in\n"
    env.check()


def test_symlink_into_the_journal_is_refused(env: Env):
    os.symlink(".goex", env.root / "j")
    os.symlink("../.goex/journal.db", env.root / "real" / "db")
    for action in [
        {"type": "fs.read", "path": "j/journal.db", "encoding": "base64"},
        {"type": "fs.list", "path": "j"},
        {"type": "fs.write", "path": "j/journal.db", "content": ""},
        {"type": "fs.write", "path": "j/new", "content": "x"},
        {"type": "fs.delete", "path": "j/journal.db"},
        {"type": "fs.chmod", "path": "j", "mode": "0777"},
        {"type": "fs.read", "path": "real/db", "encoding": "base64"},
        {"type": "fs.write", "path": "real/db", "content": ""},
        {"type": "fs.move", "src": "inside.txt", "dst": "j/inside.txt"},
    ]:
        env.refused(action, "journal")
    env.check()


def test_undo_after_a_folder_was_swapped_for_an_outside_symlink_stays_inside(env: Env):
    root = env.root
    (root / "d").mkdir()
    (root / "d" / "x").write_text("inside x\n")
    (root / "d" / "secret.txt").write_text("inside secret\n")
    env.ok({"type": "fs.write", "path": "d/x", "content": "new x\n"})
    env.ok({"type": "fs.delete", "path": "d/secret.txt"})
    env.ok({"type": "fs.chmod", "path": "d/x", "mode": "0600"})
    os.rename(root / "d", root / "d.real")  # someone else puts a link to the outside in its place
    os.symlink(str(env.outside), root / "d")

    with pytest.raises(goex.UndoConflict, match="d/x"):
        env.session.undo(3)
    with pytest.raises(goex.GoexError):  # forcing it must still not follow the link
        env.session.undo(3, force=True)
    assert tree_state(env.outside) == env.outside_before
    env.rt.recover()
    assert tree_state(env.outside) == env.outside_before

    os.unlink(root / "d")  # the folder comes back: recovery and undo finish, inside
    os.rename(root / "d.real", root / "d")
    assert env.rt.recover().ok
    env.session.rollback()
    assert (root / "d" / "x").read_text() == "inside x\n"
    assert (root / "d" / "secret.txt").read_text() == "inside secret\n"
    assert stat.S_IMODE(os.stat(root / "d" / "x").st_mode) == 0o644
    env.check()


# -- FIFOs and device files ---------------------------------------------------------------------


def _make_special(path: Path, kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(path, 0o644)
    else:
        try:
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a /dev/null
        except PermissionError:
            pytest.skip("creating a device file needs root (CAP_MKNOD)")
        os.chmod(path, 0o666)  # mknod applies the umask


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_special_files_are_refused(env: Env, kind: str):
    root = env.root
    _make_special(root / "special", kind)
    (root / "box" / "inner").mkdir(parents=True)
    (root / "box" / "keep.txt").write_text("keep\n")
    _make_special(root / "box" / "inner" / "special", kind)
    os.symlink("special", root / "to-special")
    box_before = tree_state(root / "box")
    what = "FIFO" if kind == "fifo" else "device file"

    start = time.monotonic()
    for path in ["special", "to-special", "box/inner/special"]:
        env.refused({"type": "fs.read", "path": path}, what)
        env.refused({"type": "fs.read", "path": path, "encoding": "base64"}, what)
        env.refused({"type": "fs.write", "path": path, "content": "x"}, what)
        env.refused({"type": "fs.write", "path": path, "content": "x", "append": True}, what)
        env.refused({"type": "fs.chmod", "path": path, "mode": "0600"}, what)
    for path in ["special", "box/inner/special"]:
        env.refused({"type": "fs.delete", "path": path}, what)
        env.refused({"type": "fs.move", "src": path, "dst": "moved"}, what)
        env.refused({"type": "fs.move", "src": "box/keep.txt", "dst": path, "overwrite": True}, what)
    # a folder holding one: the recursive delete is refused as a whole, nothing is removed
    env.refused({"type": "fs.delete", "path": "box", "recursive": True}, what)
    env.refused({"type": "fs.delete", "path": "box/inner", "recursive": True}, what)
    (root / "other").mkdir()
    env.refused({"type": "fs.move", "src": "other", "dst": "box", "overwrite": True}, what)
    assert time.monotonic() - start < 20, "an action blocked on the special file"

    assert tree_state(root / "box") == box_before
    assert stat.S_IFMT(os.lstat(root / "special").st_mode) == (stat.S_IFIFO if kind == "fifo" else stat.S_IFCHR)
    assert stat.S_IMODE(os.lstat(root / "special").st_mode) == (0o644 if kind == "fifo" else 0o666)
    # deleting the symlink to it deletes the link only
    env.ok({"type": "fs.delete", "path": "to-special"})
    assert os.path.exists(root / "special") and not os.path.lexists(root / "to-special")
    env.check()


# -- the journal folder -------------------------------------------------------------------------


def test_journal_folder_is_off_limits(env: Env):
    journal = env.root / ".goex"
    assert journal.is_dir()
    files_before = sorted(os.listdir(journal))
    for path in [".goex", ".goex/journal.db", ".goex/lock", "./.goex/journal.db", ".goex/"]:
        env.refused({"type": "fs.read", "path": path}, "journal")
        env.refused({"type": "fs.write", "path": path, "content": ""}, "journal")
        env.refused({"type": "fs.list", "path": path}, "journal")
        env.refused({"type": "fs.delete", "path": path}, "journal")
        env.refused({"type": "fs.delete", "path": path, "recursive": True}, "journal")
        env.refused({"type": "fs.chmod", "path": path, "mode": "0777"}, "journal")
        env.refused({"type": "fs.move", "src": path, "dst": "stolen"}, "journal")
    env.refused({"type": "fs.write", "path": ".goex/new.txt", "content": "x"}, "journal")
    env.refused({"type": "fs.mkdir", "path": ".goex/new"}, "journal")
    env.refused({"type": "fs.move", "src": "inside.txt", "dst": ".goex/inside.txt"}, "journal")
    env.refused({"type": "fs.move", "src": "real", "dst": ".goex/real"}, "journal")
    env.refused({"type": "fs.move", "src": "inside.txt", "dst": ".goex", "overwrite": True}, "journal")
    env.refused({"type": "fs.move", "src": "real", "dst": ".goex", "overwrite": True}, "journal")
    env.refused({"type": "fs.move", "src": ".goex", "dst": "real/.goex"}, "journal")

    os.symlink(".", env.root / "self")
    env.refused({"type": "fs.read", "path": "self/.goex/journal.db"}, "journal")
    env.refused({"type": "fs.list", "path": "self/.goex"}, "journal")
    env.refused({"type": "fs.move", "src": "self/.goex", "dst": "stolen"}, "journal")
    env.ok({"type": "fs.delete", "path": "self", "recursive": True})  # the link only
    assert not os.path.lexists(env.root / "self") and journal.is_dir()
    for path in [".", "./"]:
        env.refused({"type": "fs.delete", "path": path, "recursive": True}, "workspace root itself")
        env.refused({"type": "fs.move", "src": path, "dst": "elsewhere"}, "workspace root itself")
        env.refused({"type": "fs.chmod", "path": path, "mode": "0777"}, "workspace root")

    listing = env.ok({"type": "fs.list", "path": "."}).output
    names = [item["name"] for item in listing]
    assert ".goex" not in names
    assert names == ["inside.txt", "real"]
    assert journal.is_dir() and sorted(os.listdir(journal)) == files_before
    assert (env.root / "inside.txt").read_text() == "inside\n"
    env.check()


def test_nested_journal_folder_and_its_parents_are_off_limits(tmp_path: Path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "work.txt").write_text("work\n")
    (root / "other").mkdir()
    (root / "file.txt").write_text("file\n")
    outside = tmp_path / "outside"
    _make_outside(outside)
    rt = goex.Runtime(root, policy="permissive", journal=root / "sub" / ".j")
    try:
        env = Env(root, outside, rt, rt.session(), tree_state(outside))
        journal = root / "sub" / ".j"
        assert (journal / "journal.db").exists()
        assert not (root / ".goex").exists()
        env.refused({"type": "fs.delete", "path": "sub", "recursive": True}, "journal")
        env.refused({"type": "fs.delete", "path": "sub/.j", "recursive": True}, "journal")
        env.refused({"type": "fs.read", "path": "sub/.j/journal.db", "encoding": "base64"}, "journal")
        env.refused({"type": "fs.write", "path": "sub/.j/journal.db", "content": ""}, "journal")
        env.refused({"type": "fs.list", "path": "sub/.j"}, "journal")
        env.refused({"type": "fs.move", "src": "sub", "dst": "moved"}, "journal")
        env.refused({"type": "fs.move", "src": "sub/.j", "dst": "moved"}, "journal")
        env.refused({"type": "fs.move", "src": "other", "dst": "sub", "overwrite": True}, "journal")
        env.refused({"type": "fs.move", "src": "file.txt", "dst": "sub/.j/file.txt"}, "journal")
        env.refused({"type": "fs.chmod", "path": "sub/.j", "mode": "0777"}, "journal")
        # the rest of the folder holding it is still usable, and its listing hides the journal
        env.ok({"type": "fs.write", "path": "sub/new.txt", "content": "new\n"})
        env.ok({"type": "fs.delete", "path": "sub/work.txt"})
        assert [item["name"] for item in env.ok({"type": "fs.list", "path": "sub"}).output] == ["new.txt"]
        assert [item["name"] for item in env.ok({"type": "fs.list", "path": "."}).output] == ["file.txt", "other", "sub"]
        assert (journal / "journal.db").exists()
        env.session.rollback()
        assert (root / "sub" / "work.txt").read_text() == "work\n" and not (root / "sub" / "new.txt").exists()
        env.check()
    finally:
        rt.close()


# -- a symlink swapped in while actions run -----------------------------------------------------

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)


def _exchange(a: Path, b: Path) -> None:
    """Atomically swap two names (renameat2 RENAME_EXCHANGE)."""
    if _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _have_exchange(tmp: Path) -> bool:
    if not hasattr(_libc, "renameat2"):
        return False
    (tmp / "xa").mkdir()
    (tmp / "xb").mkdir()
    try:
        _exchange(tmp / "xa", tmp / "xb")
        return True
    except OSError:
        return False
    finally:
        os.rmdir(tmp / "xa")
        os.rmdir(tmp / "xb")


@pytest.mark.parametrize("swap", ["rename", "exchange"])
@pytest.mark.parametrize("link_target", ["absolute", "relative"])
def test_folder_swapped_for_a_symlink_outside_during_actions(env: Env, tmp_path: Path, swap: str, link_target: str):
    if swap == "exchange" and not _have_exchange(tmp_path):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    root, outside = env.root, env.outside
    d, real_stash, link_stash = root / "d", root / "d.real", root / "d.link"
    d.mkdir()
    (d / "x").write_text("inside x\n")
    os.symlink(str(outside) if link_target == "absolute" else "../outside", link_stash)

    stop = threading.Event()
    swaps = [0, 0]  # [swaps done, folders goex created in a gap and the swapper moved aside]
    swapper_errors: list[BaseException] = []
    junk = itertools.count()

    def put(src: Path, dst: Path) -> None:
        """rename src to dst; if goex created a folder at dst in the gap, move that aside first."""
        while True:
            try:
                os.rename(src, dst)
                return
            except OSError as exc:
                if exc.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                    raise
                aside(dst)
                swaps[1] += 1

    def aside(path: Path) -> None:
        try:
            os.rename(path, root / f"d.junk{next(junk)}")
        except FileNotFoundError:  # goex removed a folder it had created: fine
            pass

    def to_link() -> None:
        """d (a folder: the real one, or one goex made in a gap) goes aside; the link comes in."""
        if os.path.lexists(real_stash):
            aside(d)
        else:
            try:
                os.rename(d, real_stash)
            except FileNotFoundError:  # d is missing (goex removed a folder it had created): fine
                pass
        put(link_stash, d)

    def to_real() -> None:
        os.rename(d, link_stash)  # goex never removes the link: it does not act on d itself
        if os.path.lexists(real_stash):
            put(real_stash, d)

    def swapper() -> None:
        try:
            while not stop.is_set():
                if swap == "exchange":
                    _exchange(d, link_stash)  # both names always exist; d flips between folder and link
                elif os.path.islink(d):
                    to_real()
                else:
                    to_link()
                swaps[0] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            swapper_errors.append(exc)

    rng = random.Random(f"race-{swap}-{link_target}")
    outcomes: dict[str, int] = {}
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so the swaps land inside actions
    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            action = rng.choice([
                {"type": "fs.write", "path": "d/x", "content": f"pwned {rng.random()}\n"},
                {"type": "fs.write", "path": "d/x", "content": "pwned\n", "append": True},
                {"type": "fs.write", "path": "d/secret.txt", "content": "pwned\n"},
                {"type": "fs.write", "path": "d/sub/new.txt", "content": "pwned\n"},
                {"type": "fs.read", "path": "d/x"},
                {"type": "fs.read", "path": "d/secret.txt"},
                {"type": "fs.delete", "path": "d/x"},
                {"type": "fs.delete", "path": "d/secret.txt"},
                {"type": "fs.delete", "path": "d/sub", "recursive": True},
                {"type": "fs.chmod", "path": "d/x", "mode": "0777"},
                {"type": "fs.chmod", "path": "d/secret.txt", "mode": "0777"},
                {"type": "fs.list", "path": "d"},
                {"type": "fs.mkdir", "path": "d/sub"},
                {"type": "fs.move", "src": "d/x", "dst": "d/x2", "overwrite": True},
                {"type": "fs.move", "src": "d/secret.txt", "dst": "got-it.txt", "overwrite": True},
            ])
            try:
                result = env.session.execute(action)
            except goex.GoexError as exc:  # a revert that could not run (the folder is a link now)
                key = f"raised {type(exc).__name__}"
            else:
                key = "ok" if result.ok else result.status
                if result.ok and action["type"] == "fs.read":
                    assert SECRET.strip() not in result.output and "outside x" not in result.output
            outcomes[key] = outcomes.get(key, 0) + 1
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(old_interval)

    print(f"\nswaps {swaps}, outcomes {outcomes}")
    assert swaps[0] > 100, swaps
    assert outcomes.get("ok", 0) > 0 and outcomes.get("denied", 0) > 0, outcomes  # both states were seen

    assert tree_state(outside) == env.outside_before  # the crux: outside untouched, byte for byte
    assert not swapper_errors, swapper_errors
    if os.path.islink(d):  # put the real folder back, then finish what was left pending
        if swap == "exchange":
            _exchange(d, link_stash)
        else:
            to_real()
    if not os.path.lexists(d):
        d.mkdir()
    assert d.is_dir() and not d.is_symlink()
    report = env.rt.recover()
    stuck = {eid: why for eid, why in report.outcomes.items() if why.startswith("error")}
    print(f"recovery: {len(report.outcomes)} pending entries, {len(stuck)} could not be reverted: "
          f"{sorted(set(stuck.values()))[:3]}")
    # Recovery runs actions' reverts: it must not reach outside either. (Entries stuck pending
    # after an action raised mid-race are reported separately; confinement is what counts here.)
    env.check(pending_ok=True)
    got = root / "got-it.txt"
    assert not got.exists() or SECRET not in got.read_text()
