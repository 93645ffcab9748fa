"""The file adapter: fs.* actions inside a confined workspace, each exactly undoable.

An undo plan is a list of ops run in order, each idempotent so recovery can replay it:

- `restore {path, node}`: make the path exactly the captured node (see `tree.py`)
- `truncate {path, size}`: cut an appended file back to its size before the append
- `move_back {from, to}`: rename `from` back to `to`, unless that already happened
- `rmdir {path}`: remove a folder the action created; one that holds unjournaled files stays
"""

from __future__ import annotations

import base64
import difflib
import errno
import hashlib
import itertools
import os
import stat
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ...errors import ActionFailed, JournalCorrupt, PathRefused
from ..base import Adapter, Applied, Coalesced, Context, Damage, GetBlob, Outcome, Prepared, PutBlob
from . import tree
from .actions import FS_ACTIONS, FsChmod, FsDelete, FsList, FsMkdir, FsMove, FsPreview, FsRead, FsWrite
from .workspace import Parts, Workspace, show

if TYPE_CHECKING:
    from ...journal.read import EntryDetail

_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_OPS = {"restore": ("path",), "truncate": ("path",), "move_back": ("from", "to"), "rmdir": ("path",)}  # op -> its paths


def _parts(path: str) -> Parts:
    return tuple(path.split("/"))


class FileAdapter(Adapter):
    prefix = "fs"
    actions = FS_ACTIONS
    preview = FsPreview
    edits_files = True

    @classmethod
    def create(cls, context: Context) -> "FileAdapter":
        return cls(context.workspace)

    def __init__(self, workspace: Workspace, *, max_read_bytes: int = 16 * 1024 * 1024):
        self.ws = workspace
        self.max_read_bytes = max_read_bytes
        # the group `joins` last saw: (group, members counted, their paths, folders above them)
        self._joined: tuple[list[Coalesced], int, set[str], set[str]] | None = None
        self._confined_paths: dict[str, Parts] = {}  # journal paths found confined (a check of spelling only)
        self._confined_items: list[Coalesced] = []  # the range `range_conflicts` last confined
        self._prepare: dict[str, Callable[[Any], Prepared]] = {
            "fs.write": self._prepare_write, "fs.read": self._prepare_read, "fs.list": self._prepare_list,
            "fs.delete": self._prepare_delete, "fs.move": self._prepare_move, "fs.mkdir": self._prepare_mkdir,
            "fs.chmod": self._prepare_chmod,
        }
        self._apply: dict[str, Callable[[Any, dict[str, Any]], Applied]] = {
            "fs.write": self._apply_write, "fs.read": self._apply_read, "fs.list": self._apply_list,
            "fs.delete": self._apply_delete, "fs.move": self._apply_move, "fs.mkdir": self._apply_mkdir,
            "fs.chmod": self._apply_chmod,
        }

    # -- protocol ----------------------------------------------------------------------------

    def prepare(self, action: Any) -> Prepared:
        try:
            return self._prepare[action.type](action)
        except (PathRefused, ActionFailed):
            raise
        except OSError as exc:
            raise ActionFailed(f"{action.type}: {_os_reason(exc)}") from None

    def capture(self, prepared: Prepared, put_blob: PutBlob) -> dict[str, Any]:
        action, state = prepared.action, prepared.state
        ops: list[dict[str, Any]] = []
        expect: dict[str, str] | None = None
        if action.type == "fs.write":
            p = state["path"]
            if action.append and state["size"] is not None:
                ops.append({"op": "truncate", "path": show(p), "size": state["size"], "mtime": state["mtime"]})
            else:
                ops.append({"op": "restore", "path": show(p), "node": self._capture(p, put_blob, state)})
                # what the write leaves there, for `recover` to tell a write that completed
                state["sha"] = hashlib.sha256(state["data"]).hexdigest()
                expect = {"path": show(p), "sha": state["sha"]}
        elif action.type == "fs.delete":
            ops.append({"op": "restore", "path": show(state["path"]), "node": self._capture(state["path"], put_blob)})
        elif action.type == "fs.move":
            src, dst = state["src"], state["dst"]
            ops.append({"op": "move_back", "from": show(dst), "to": show(src)})
            if state["dst_exists"]:
                ops.append({"op": "restore", "path": show(dst), "node": self._capture(dst, put_blob)})
        elif action.type == "fs.chmod":
            p = state["path"]
            with self.ws.parent(p) as dfd:
                ops.append({"op": "restore", "path": show(p), "node": tree.shallow(dfd, p[-1])})
        ops.extend({"op": "rmdir", "path": show(d)} for d in reversed(state.get("created", [])))
        return {"ops": ops, "expect": expect} if expect else {"ops": ops}

    def release(self, prepared: Prepared) -> None:
        fd = prepared.state.pop("dfd", None) if isinstance(prepared.state, dict) else None
        if fd is not None:
            os.close(fd)

    def apply(self, prepared: Prepared) -> Applied:
        try:
            return self._apply[prepared.action.type](prepared.action, prepared.state)
        except (PathRefused, ActionFailed):
            raise
        except OSError as exc:
            raise ActionFailed(f"{prepared.action.type}: {_os_reason(exc)}") from None

    def conflicts(self, plan: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, str]]:
        self.confine_plan(plan)  # before anything is looked at: a forged plan is refused, even forced
        return [found for path, expected in after.items() if (found := self._differs(path, expected, None))]

    def _differs(self, path: str, expected: str, now: str | None) -> tuple[str, str] | None:
        """How `path` differs from `expected`: as it is on disk, or as `now` says it will be."""
        if now is None:
            parts = self._confined(path)
            try:
                with self.ws.parent(parts) as dfd:
                    now = tree.digest_at(dfd, parts[-1], deep=_is_deep(expected))
            except FileNotFoundError:
                now = "-"
            except (PathRefused, OSError) as exc:
                return path, f"cannot be checked ({exc})"
        return None if now == expected else (path, f"expected {tree.describe(expected)}, found {tree.describe(now)}")

    # -- coalesced undo: entries whose ops restore whole nodes or remove created folders --------

    def coalesce(self, plan: dict[str, Any], after: dict[str, Any]) -> Coalesced | None:
        ops = plan.get("ops")
        if not ops or not isinstance(after, dict) or not all(_coalescable(op) for op in ops) \
                or not all(isinstance(v, str) and _is_deep(v) for v in after.values()):
            return None
        return Coalesced(self, "files", plan, after)

    def joins(self, group: list[Coalesced], item: Coalesced) -> bool:
        """Entries join when no path of one lies inside a path of another (equal paths are fine):
        then each path's state across the range follows from the journal alone."""
        known = self._joined
        if known is None or known[0] is not group or known[1] > len(group):  # a new group: start over
            known = self._joined = (group, 0, set(), set())
        _, counted, paths, above = known
        for member in group[counted:]:  # the group only grows: each member is counted once
            for p in _paths(member):
                paths.add(p)
                above.update(p[:i] for i, ch in enumerate(p) if ch == "/")
        self._joined = (group, len(group), paths, above)
        return not any(p in above or any(p[:i] in paths for i, ch in enumerate(p) if ch == "/")
                       for p in _paths(item))

    def range_conflicts(self, items: list[Coalesced]) -> list[list[tuple[str, str]]]:
        """Each entry's after-state is checked against the disk where no newer entry of the range
        restores that path, else against the before-image that newer entry restores."""
        for item in items:
            self.confine_plan(item.plan)
        self._confined_items = list(items)  # `revert_range` of these same items need not check them again
        restored: dict[str, str] = {}  # path -> its digest once the newer entries are undone
        out = []
        with self.ws.reusing_folders():  # no path of the range lies inside another (`joins`)
            for item in items:
                out.append([found for path, expected in item.after.items()
                            if (found := self._differs(path, expected, restored.get(path)))])
                for op in item.plan["ops"]:
                    restored[op["path"]] = tree.digest_of(op["node"]) if op["op"] == "restore" else "-"
        return out

    def revert_range(self, items: list[Coalesced], get_blob: GetBlob) -> None:
        """Each path is restored once, to the before-image of the oldest entry that touched it."""
        checked = {id(c) for c in self._confined_items}  # held in that list: no id was reused
        for item in items:
            if id(item) not in checked:
                self.confine_plan(item.plan)
        self._confined_items = []
        older: set[str] = set()
        runs: list[list[dict[str, Any]]] = []
        for item in reversed(items):
            runs.append([op for op in item.plan["ops"] if op["path"] not in older])
            older.update(op["path"] for op in item.plan["ops"])
        with self.ws.reusing_folders():  # no path of the range lies inside another (`joins`)
            for ops in reversed(runs):
                for op in ops:
                    getattr(self, "_revert_" + op["op"])(op, get_blob)

    def revert(self, plan: dict[str, Any], after: dict[str, Any] | None, get_blob: GetBlob,
               force: bool = False) -> None:
        self.confine_plan(plan)  # every op, before the first one touches anything
        for op in plan.get("ops", []):
            getattr(self, "_revert_" + op["op"])(op, get_blob)

    def settles(self, plan: dict[str, Any]) -> bool:
        return isinstance(plan.get("expect"), dict)

    def recover(self, plan: dict[str, Any], action: dict[str, Any], get_blob: GetBlob) -> Outcome:
        """An interrupted write whose file holds exactly what it wrote completed: kept as applied
        (its result may have been returned). Anything else is reverted from its before-images."""
        expect = plan.get("expect")
        if isinstance(expect, dict):
            self.confine_plan(plan)
            parts = self._confined(expect.get("path"))
            try:
                with self.ws.parent(parts) as dfd:
                    now = tree.digest_at(dfd, parts[-1], deep=True)
            except (PathRefused, OSError):
                now = "-"
            if now.startswith("f") and now.partition(":")[2] == expect.get("sha"):
                after = {show(parts): now}
                created = [self._confined(op["path"]) for op in plan["ops"] if op["op"] == "rmdir"]
                self._after_created(after, created[-1:])
                return "applied", after, ""
        return super().recover(plan, action, get_blob)

    def confine_plan(self, plan: dict[str, Any]) -> None:
        """Raise JournalCorrupt unless every path an undo plan names is one goex could have written:
        canonical, inside the root, not the journal folder (nor holding it), and every name in a
        restored tree a plain name. Symlinks on the way are refused when each op opens its path."""
        for op in plan.get("ops", []):
            kind = op.get("op") if isinstance(op, dict) else None
            if kind not in _OPS:
                raise JournalCorrupt(f"an undo plan holds an unknown op {kind!r}: the journal was forged; "
                                     "nothing was undone. Run `goex verify`")
            for key in _OPS[kind]:
                parts = self._confined(op.get(key))
                if kind == "restore":
                    self._confine_node(parts, op.get("node"))

    def _confined(self, path: Any) -> Parts:
        """The components of a path read from the journal, confined again as an agent's path is.
        Only the spelling is checked here (each op opens its path without following links): the
        answer for a path never changes, so paths found confined are remembered (undo of a range
        checks each several times)."""
        known = self._confined_paths.get(path) if isinstance(path, str) else None
        if known is not None:
            return known
        try:
            parts = self.ws.split(path) if isinstance(path, str) else None
        except PathRefused:
            parts = None
        if not parts or show(parts) != path or self.ws.holds_journal(parts):
            raise JournalCorrupt(f"an undo plan names {path!r}, which is not a path inside the workspace goex "
                                 "could have journaled: the journal was forged; nothing was undone. Run `goex verify`")
        if len(self._confined_paths) >= 4096:
            self._confined_paths.clear()
        self._confined_paths[path] = parts
        return parts

    def _confine_node(self, parts: Parts, node: Any) -> None:
        if not isinstance(node, dict) or node.get("k") not in ("-", "f", "d", "l"):
            raise JournalCorrupt(f"an undo plan holds a malformed node for {show(parts)}: the journal was forged; "
                                 "nothing was undone. Run `goex verify`")
        for name, child in node.get("children", {}).items() if node["k"] == "d" else ():
            if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name:
                raise JournalCorrupt(f"an undo plan restores {show(parts)}/{name!r}, not a plain name: the "
                                     "journal was forged; nothing was undone. Run `goex verify`")
            self._confine_node(parts + (name,), child)

    def summarize(self, prepared: Prepared) -> str:
        """What the action would do, for a person deciding whether to allow it."""
        a, p = prepared.action, prepared.preview
        if a.type == "fs.write":
            return self._write_diff(a, prepared.state["path"])
        if a.type == "fs.delete":
            return f"delete {p['paths'][0]}: {p['files_deleted']:,} files, {p['bytes_deleted']:,} bytes"
        if a.type == "fs.move":
            replaced = f", replacing {p['files_deleted']:,} files" if p.get("overwrites") else ""
            return f"move {p['paths'][0]} to {p['paths'][1]}{replaced}"
        if a.type == "fs.chmod":
            return f"chmod {p['paths'][0]} to {p['mode']}"
        return f"{a.type} {', '.join(p.get('paths', []))}"

    def _write_diff(self, a: FsWrite, parts: Parts) -> str:
        new = a.data()
        try:
            with self.ws.parent(parts) as dfd:
                fd, _ = tree.open_regular(dfd, parts[-1])
                try:
                    old = os.read(fd, 1 << 16)
                finally:
                    os.close(fd)
        except (OSError, PathRefused):
            old = b""
        if a.append:
            new = old + new
        try:
            old_text, new_text = old.decode("utf-8"), new.decode("utf-8")
        except UnicodeDecodeError:
            return f"write {len(new):,} bytes of binary data to {show(parts)}"
        diff = difflib.unified_diff(old_text.splitlines(), new_text.splitlines(), f"a/{show(parts)}",
                                    f"b/{show(parts)}", lineterm="")
        lines = list(itertools.islice(diff, 80))
        return "\n".join(lines) or f"write {show(parts)} (no change)"

    def spends(self, action_type: str, preview: dict[str, Any]) -> dict[str, int]:
        spent = {"files_deleted": int(preview.get("files_deleted") or 0),
                 "bytes_written": int(preview.get("bytes_written") or 0)}
        return {k: v for k, v in spent.items() if v}

    def destroys(self, action_type: str, preview: dict[str, Any]) -> Damage:
        return Damage(files=int(preview.get("files_deleted") or 0))

    def shown_target(self, action_type: str, targets: list[str]) -> str:
        return " -> ".join(targets) if action_type == "fs.move" else ", ".join(targets)

    def describe(self, entry: "EntryDetail") -> str:
        if entry.error:
            return entry.error
        action = entry.action()
        if entry.type == "fs.write":
            return self._written_diff(entry, action)
        if entry.type == "fs.delete":
            p = entry.preview
            return f"deleted {action['path']}: {p.get('files_deleted', '?')} files, {p.get('bytes_deleted', '?')} bytes"
        return f"{entry.type} {entry.target}"

    def _written_diff(self, entry: "EntryDetail", action: dict[str, Any]) -> str:
        if action.get("append"):
            return f"appended {len(action['content'])} characters to {action['path']}"
        node = next((op["node"] for op in entry.plan.get("ops", []) if op["op"] == "restore"), None)
        old = b"".join(entry.read_blob(c) for c in node.get("chunks", [])) if node and node["k"] == "f" else b""
        if action.get("encoding", "utf-8") != "utf-8":
            return f"wrote binary content to {action['path']}"
        try:
            old_text = old.decode("utf-8")
        except UnicodeDecodeError:
            return f"wrote binary content to {action['path']}"
        diff = difflib.unified_diff(old_text.splitlines(), action["content"].splitlines(), f"a/{action['path']}",
                                    f"b/{action['path']}", lineterm="")
        return "\n".join(itertools.islice(diff, 60)) or f"rewrote {action['path']} unchanged"

    def fingerprint(self) -> str:
        """sha256 of the whole workspace (content, modes, symlinks), the journal excluded."""
        return self.ws.fingerprint()

    # -- revert ops ----------------------------------------------------------------------------

    def _revert_restore(self, op: dict[str, Any], get_blob: GetBlob) -> None:
        parts = self._confined(op["path"])
        try:
            with self.ws.parent(parts) as dfd:
                tree.restore(dfd, parts[-1], op["node"], get_blob)
        except FileNotFoundError:
            if op["node"]["k"] != "-" and not tree.is_shallow(op["node"]):
                raise  # a mode-only restore of something gone has nothing left to do

    def _revert_truncate(self, op: dict[str, Any], get_blob: GetBlob) -> None:
        parts = self._confined(op["path"])
        try:
            with self.ws.parent(parts) as dfd:
                fd = os.open(parts[-1], os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
        except FileNotFoundError:
            return
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_size > op["size"]:
                os.ftruncate(fd, op["size"])
                os.utime(fd, ns=(op["mtime"], op["mtime"]))
        finally:
            os.close(fd)

    def _revert_move_back(self, op: dict[str, Any], get_blob: GetBlob) -> None:
        src, dst = self._confined(op["from"]), self._confined(op["to"])
        if self.ws.lstat(dst) is not None or self.ws.lstat(src) is None:
            return  # never moved, or already back
        with self.ws.parent(src) as sfd, self.ws.parent(dst) as dfd:
            os.rename(src[-1], dst[-1], src_dir_fd=sfd, dst_dir_fd=dfd)

    def _revert_rmdir(self, op: dict[str, Any], get_blob: GetBlob) -> None:
        parts = self._confined(op["path"])
        try:
            with self.ws.parent(parts) as dfd:
                os.rmdir(parts[-1], dir_fd=dfd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            # Only a forced undo gets here (a normal one checked the folder is as the action left it):
            # the folder holds files nobody journaled, and losing them is worse than keeping it.
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise

    # -- helpers -------------------------------------------------------------------------------

    @contextmanager
    def _held_parent(self, state: dict[str, Any], parts: Parts) -> Iterator[int]:
        """The folder holding `parts`: the fd `prepare` opened for it (confined, as `Workspace.parent`
        opens every folder) while the action holds it, else opened now."""
        fd = state.get("dfd")
        if fd is not None and state["path"] == parts:
            yield fd
        else:
            with self.ws.parent(parts) as fd:
                yield fd

    def _capture(self, parts: Parts, put_blob: PutBlob, state: dict[str, Any] | None = None) -> tree.Node:
        try:
            with self._held_parent(state, parts) if state is not None else self.ws.parent(parts) as dfd:
                return tree.capture(dfd, parts[-1], put_blob, self.ws.is_hidden)
        except FileNotFoundError:  # its folder is created by the action itself
            return dict(tree.ABSENT)

    def _missing_parents(self, parts: Parts, original: str) -> list[Parts]:
        """Folders to create so that `parts` has a parent; refuses a file in the way."""
        parent = self.ws.lstat(parts[:-1])
        if parent is not None and stat.S_ISDIR(parent.st_mode):
            return []
        for i in range(1, len(parts)):
            st = self.ws.lstat(parts[:i])
            if st is None:
                return [parts[:j] for j in range(i, len(parts))]
            if not stat.S_ISDIR(st.st_mode):
                raise ActionFailed(f"cannot create {original}: {show(parts[:i])} is not a folder")
        return []

    def _existing(self, path: str, *, follow: bool) -> tuple[Parts, os.stat_result]:
        parts = self.ws.resolve(path, follow=follow)
        st = self.ws.lstat(parts)
        if st is None:
            raise ActionFailed(f"no such file or folder: {path}")
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            raise tree._special(path, st)
        return parts, st

    def _make_dirs(self, created: list[Parts]) -> None:
        for d in created:
            with self.ws.parent(d) as dfd:
                try:
                    os.mkdir(d[-1], 0o777, dir_fd=dfd)
                except FileExistsError:
                    pass

    def _after_created(self, after: dict[str, str], created: list[Parts]) -> None:
        if created:
            top = created[0]
            with self.ws.parent(top) as dfd:
                after[show(top)] = tree.digest_at(dfd, top[-1], deep=True)

    def _tree_size(self, parts: Parts, st: os.stat_result) -> tuple[int, int, list[str]]:
        """(files, bytes, every path inside) of what is at `parts`."""
        if not stat.S_ISDIR(st.st_mode):
            return 1, st.st_size if stat.S_ISREG(st.st_mode) else 0, []
        files = size = 0
        inside: list[str] = []
        with self.ws.folder(parts) as fd:
            for top, dirs, names, dfd in os.fwalk(dir_fd=fd):
                base = show(parts) + ("" if top == "." else "/" + top.removeprefix("./"))
                inside.extend(f"{base}/{d}" for d in dirs)
                for name in names:
                    files += 1
                    size += os.stat(name, dir_fd=dfd, follow_symlinks=False).st_size
                    inside.append(f"{base}/{name}")
        return files, size, inside

    # -- fs.write ------------------------------------------------------------------------------

    def _prepare_write(self, a: FsWrite) -> Prepared:
        # the folder the resolution ended in stays open: capture and apply act through it
        parts, dfd = self.ws.resolve_held(a.path, follow=True)
        try:
            if not parts:
                raise ActionFailed("fs.write: the workspace root is a folder; name a file")
            if a.path.endswith("/"):
                raise ActionFailed(f"fs.write: {a.path!r} ends with '/': name a file, not a folder")
            st = tree._lstat(dfd, parts[-1]) if dfd is not None else None
            created: list[Parts] = []
            if st is None:
                created = self._missing_parents(parts, a.path)
            elif stat.S_ISDIR(st.st_mode):
                raise ActionFailed(f"fs.write: {a.path} is a folder")
            elif not stat.S_ISREG(st.st_mode):
                raise tree._special(a.path, st)
            data = a.data()
        except BaseException:
            if dfd is not None:
                os.close(dfd)
            raise
        state = {"path": parts, "created": created, "size": st.st_size if st else None,
                 "mtime": st.st_mtime_ns if st else None, "data": data, "dfd": dfd}
        preview = {"paths": [show(parts)], "bytes_written": len(data), "overwrites": bool(st) and not a.append}
        return Prepared(a, [show(parts)], preview, True, state)

    def _apply_write(self, a: FsWrite, state: dict[str, Any]) -> Applied:
        parts, data = state["path"], state["data"]
        self._make_dirs(state["created"])
        with self._held_parent(state, parts) as dfd:
            st = tree._lstat(dfd, parts[-1])
            if st is not None and not stat.S_ISREG(st.st_mode):
                raise tree._special(a.path, st) if not stat.S_ISLNK(st.st_mode) else PathRefused(
                    a.path, "a symlink was swapped in while the action ran")
            try:
                fd = os.open(parts[-1], _WRITE_FLAGS | (os.O_APPEND if a.append else os.O_TRUNC), 0o666, dir_fd=dfd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise PathRefused(a.path, "a symlink was swapped in while the action ran") from None
                raise
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise tree._special(a.path, st)
                tree.write_all(fd, data)
            finally:
                os.close(fd)
            if a.append:
                digest = tree.digest_at(dfd, parts[-1], deep=True)
            else:
                digest = f"f{stat.S_IMODE(st.st_mode):o}:{state.get('sha') or hashlib.sha256(data).hexdigest()}"
        after = {show(parts): digest}
        self._after_created(after, state["created"])
        return Applied({"path": show(parts), "bytes_written": len(data)}, after)

    # -- fs.read / fs.list ---------------------------------------------------------------------

    def _prepare_read(self, a: FsRead) -> Prepared:
        parts = self.ws.resolve(a.path, follow=True)
        return Prepared(a, [show(parts)], {"paths": [show(parts)]}, False, {"path": parts})

    def _apply_read(self, a: FsRead, state: dict[str, Any]) -> Applied:
        parts = state["path"]
        if not parts:
            raise ActionFailed("fs.read: the workspace root is a folder; use fs.list")
        with self.ws.parent(parts) as dfd:
            try:
                fd, st = tree.open_regular(dfd, parts[-1])
            except FileNotFoundError:
                raise ActionFailed(f"fs.read: no such file: {a.path}") from None
            except IsADirectoryError:
                raise ActionFailed(f"fs.read: {a.path} is a folder; use fs.list") from None
            try:
                if st.st_size > self.max_read_bytes:
                    raise ActionFailed(f"fs.read: {a.path} is {st.st_size:,} bytes, over the read limit of "
                                       f"{self.max_read_bytes:,}")
                data = b"".join(iter(lambda: os.read(fd, 1 << 20), b""))
            finally:
                os.close(fd)
        if a.encoding == "base64":
            text = base64.b64encode(data).decode("ascii")
        else:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raise ActionFailed(f"fs.read: {a.path} is not UTF-8 text; read it with encoding 'base64'") from None
        digest = f"f{stat.S_IMODE(st.st_mode):o}:{hashlib.sha256(data).hexdigest()}"
        return Applied(text, {show(parts): digest})

    def _prepare_list(self, a: FsList) -> Prepared:
        parts = self.ws.resolve(a.path, follow=True)
        return Prepared(a, [show(parts)], {"paths": [show(parts)]}, False, {"path": parts})

    def _apply_list(self, a: FsList, state: dict[str, Any]) -> Applied:
        parts = state["path"]
        try:
            with self.ws.folder(parts) as fd:
                listing = []
                for name in sorted(os.listdir(fd)):
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if self.ws.is_hidden(st):
                        continue
                    item: dict[str, Any] = {"name": name, "kind": _kind(st.st_mode), "size": st.st_size,
                                            "mode": f"{stat.S_IMODE(st.st_mode):04o}"}
                    if stat.S_ISLNK(st.st_mode):
                        item["target"] = os.readlink(name, dir_fd=fd)
                    listing.append(item)
        except FileNotFoundError:
            raise ActionFailed(f"fs.list: no such folder: {a.path}") from None
        except (NotADirectoryError, PathRefused) as exc:
            if isinstance(exc, PathRefused) and "journal" in exc.reason:
                raise
            raise ActionFailed(f"fs.list: {a.path} is not a folder") from None
        return Applied(listing, {})

    # -- fs.delete -----------------------------------------------------------------------------

    def _prepare_delete(self, a: FsDelete) -> Prepared:
        parts = self.ws.resolve(a.path, follow=False)
        if not parts:
            raise PathRefused(a.path, "the workspace root itself cannot be deleted")
        parts, st = self._existing(a.path, follow=False)
        if stat.S_ISDIR(st.st_mode):
            if self.ws.holds_journal(parts):
                raise PathRefused(a.path, "contains the journal folder, which is off limits to actions")
            if not a.recursive:
                with self.ws.folder(parts) as fd:
                    if os.listdir(fd):
                        raise ActionFailed(f"fs.delete: folder {a.path} is not empty; "
                                           "set recursive=true to delete it all")
        files, size, inside = self._tree_size(parts, st)
        preview = {"paths": [show(parts)], "files_deleted": files, "bytes_deleted": size,
                   "folder": stat.S_ISDIR(st.st_mode)}
        return Prepared(a, [show(parts)], preview, True, {"path": parts}, covers=inside)

    def _apply_delete(self, a: FsDelete, state: dict[str, Any]) -> Applied:
        parts = state["path"]
        with self.ws.parent(parts) as dfd:
            tree.remove(dfd, parts[-1])
        return Applied({"deleted": show(parts)}, {show(parts): "-"})

    # -- fs.move -------------------------------------------------------------------------------

    def _prepare_move(self, a: FsMove) -> Prepared:
        src, src_st = self._existing(a.src, follow=False)
        if not src:
            raise PathRefused(a.src, "the workspace root itself cannot be moved")
        if stat.S_ISDIR(src_st.st_mode) and self.ws.holds_journal(src):
            raise PathRefused(a.src, "contains the journal folder, which is off limits to actions")
        dst = self.ws.resolve(a.dst, follow=False)
        if not dst:
            raise PathRefused(a.dst, "the workspace root itself cannot be replaced")
        if dst == src:
            raise ActionFailed(f"fs.move: {a.src} and {a.dst} are the same path")
        if dst[: len(src)] == src:
            raise ActionFailed(f"fs.move: cannot move {a.src} into itself")
        dst_st = self.ws.lstat(dst)
        created: list[Parts] = []
        files = size = 0
        replaced: list[str] = []
        _, _, moved = self._tree_size(src, src_st)
        if dst_st is None:
            created = self._missing_parents(dst, a.dst)
        elif not a.overwrite:
            raise ActionFailed(f"fs.move: {a.dst} exists; set overwrite=true to replace it")
        else:
            _, dst_st = self._existing(a.dst, follow=False)
            if stat.S_ISDIR(dst_st.st_mode) and self.ws.holds_journal(dst):
                raise PathRefused(a.dst, "contains the journal folder, which is off limits to actions")
            files, size, replaced = self._tree_size(dst, dst_st)
        targets = [show(src), show(dst)]
        preview = {"paths": targets, "files_deleted": files, "bytes_deleted": size, "overwrites": dst_st is not None}
        state = {"src": src, "dst": dst, "dst_exists": dst_st is not None, "created": created}
        return Prepared(a, targets, preview, True, state, covers=moved + replaced)

    def _apply_move(self, a: FsMove, state: dict[str, Any]) -> Applied:
        src, dst = state["src"], state["dst"]
        self._make_dirs(state["created"])
        with self.ws.parent(src) as sfd, self.ws.parent(dst) as dfd:
            if state["dst_exists"]:
                tree.remove(dfd, dst[-1])
            os.rename(src[-1], dst[-1], src_dir_fd=sfd, dst_dir_fd=dfd)
            moved = tree.digest_at(dfd, dst[-1], deep=True)
        after = {show(src): "-", show(dst): moved}
        self._after_created(after, state["created"])
        return Applied({"moved": show(src), "to": show(dst)}, after)

    # -- fs.mkdir ------------------------------------------------------------------------------

    def _prepare_mkdir(self, a: FsMkdir) -> Prepared:
        parts = self.ws.resolve(a.path, follow=True)
        st = self.ws.lstat(parts)
        if st is not None:
            if not stat.S_ISDIR(st.st_mode):
                raise ActionFailed(f"fs.mkdir: {a.path} exists and is not a folder")
            return Prepared(a, [show(parts)], {"paths": [show(parts)]}, False, {"path": parts, "created": []})
        created = self._missing_parents(parts, a.path) + [parts]
        return Prepared(a, [show(parts)], {"paths": [show(parts)]}, True, {"path": parts, "created": created})

    def _apply_mkdir(self, a: FsMkdir, state: dict[str, Any]) -> Applied:
        self._make_dirs(state["created"])
        after: dict[str, str] = {}
        self._after_created(after, state["created"])
        return Applied({"path": show(state["path"]), "created": [show(d) for d in state["created"]]}, after)

    # -- fs.chmod ------------------------------------------------------------------------------

    def _prepare_chmod(self, a: FsChmod) -> Prepared:
        parts, st = self._existing(a.path, follow=True)
        if not parts:
            raise PathRefused(a.path, "the workspace root's own mode cannot be changed")
        if stat.S_ISLNK(st.st_mode):
            raise ActionFailed(f"fs.chmod: {a.path} is a symlink to a missing target")
        bits = a.bits()
        preview = {"paths": [show(parts)], "mode": f"{bits:04o}", "world_writable": bool(bits & 0o002),
                   "setuid": bool(bits & 0o6000)}
        return Prepared(a, [show(parts)], preview, True, {"path": parts, "mode": bits})

    def _apply_chmod(self, a: FsChmod, state: dict[str, Any]) -> Applied:
        parts = state["path"]
        with self.ws.parent(parts) as dfd:
            tree.set_mode(dfd, parts[-1], state["mode"])
            digest = tree.digest_at(dfd, parts[-1], deep=False)
        return Applied({"path": show(parts), "mode": f"{state['mode']:04o}"}, {show(parts): digest})


def _coalescable(op: Any) -> bool:
    """An op whose end state the journal alone tells: a whole node restored, a folder removed."""
    if not isinstance(op, dict) or not isinstance(op.get("path"), str):
        return False
    node = op.get("node")
    return op.get("op") == "rmdir" or (op.get("op") == "restore" and isinstance(node, dict)
                                       and not (node.get("k") in ("f", "d") and "chunks" not in node
                                                and "children" not in node))


def _paths(item: Coalesced) -> set[str]:
    return {op["path"] for op in item.plan["ops"]} | set(item.after)


def _is_deep(digest: str) -> bool:
    return not (digest[:1] in ("f", "d") and ":" not in digest)


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "special"


def _os_reason(exc: OSError) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"
