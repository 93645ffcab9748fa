"""The code runs on an overlay of the workspace; goex reads what it changed from the upper layer.

The workspace is the overlay's lower layer and is never written by the code: every file the
code creates or changes lands in the upper directory, every delete becomes a whiteout there.
After the run (every sandboxed process dead) `changes()` walks the upper directory only, so the
scan costs what the code changed, not the size of the tree. goex then journals before-images of
exactly those workspace paths (write-ahead) and only then copies the changes in (`apply`).

The journal folder, when it is inside the workspace, is hidden by a whiteout placed in the
upper layer before the run: the code sees no such folder, and anything it writes under that name
is discarded, never applied.

Only metadata the code cannot forge is read from the upper layer: whiteouts (0/0 character
devices need CAP_MKNOD, and overlayfs refuses to create them through the mount) and the
`trusted.overlay.opaque` marker (trusted.* needs CAP_SYS_ADMIN, and overlayfs refuses its own
xattrs through the mount). `user.overlay.*` xattrs, which any file owner may set, mean nothing
here, as they mean nothing to this mount (no `userxattr`). Modes `fs.chmod` refuses (setuid,
setgid, sticky, other-write) are stripped from what the run adds, and reported.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import fcntl
import hashlib
import os
import queue
import shutil
import stat
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

from ...errors import ActionFailed
from ..fs import tree
from ..fs.workspace import Parts, Workspace, show

_libc = ctypes.CDLL(None, use_errno=True)
MS_BIND, MS_REC, MS_SHARED = 4096, 16384, 1 << 20
MNT_DETACH = 2
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# No `userxattr`: the mount keeps its metadata in trusted.overlay.*, out of the code's reach; it
# follows no redirect, as the reading of the upper layer interprets none. `volatile` (Linux 5.10+):
# no sync of the upper file system, at every fsync the code makes nor when the overlay goes away
# (which otherwise flushes the whole disk the layer is on, several ms per run on a busy machine);
# a layer is read while still cached and never reused, and what lands in the workspace is synced
# by goex's own writes, so nothing depends on the layer being on disk.
OPTIONS = "redirect_dir=nofollow,index=off,metacopy=off,xino=off"
_volatile: list[bool] = [True]  # until the kernel refuses the option
OPAQUE = "trusted.overlay.opaque"
REFUSED_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWOTH  # what fs.chmod's rules refuse


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                   data.encode() if data else None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype or source} on {target}: {os.strerror(err)}")


def umount(target: str) -> None:
    if _libc.umount2(target.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):  # not mounted (any more)
            raise OSError(err, f"umount {target}: {os.strerror(err)}")


def can_mount() -> str | None:
    """None when this process may mount overlays, else why not."""
    if os.geteuid() != 0:
        return "mounting the workspace overlay needs root (CAP_SYS_ADMIN); run goex as root"
    try:
        with open("/proc/filesystems") as f:
            if "overlay" not in f.read():
                return "the kernel has no overlay file system (modprobe overlay)"
    except OSError:
        pass
    return None


def _escape(path: str) -> str:
    return path.replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


def state_dir() -> str:
    """Where run layers live (outside every workspace): $GOEX_SANDBOX_DIR or <tmp>/goex-sandbox."""
    base = os.environ.get("GOEX_SANDBOX_DIR") or os.path.join(tempfile.gettempdir(), "goex-sandbox")
    os.makedirs(base, mode=0o711, exist_ok=True)
    return base


def ensure_shared(path: str) -> None:
    """Make `path` a shared mount (bind it on itself first), so overlays mounted below it later
    propagate into containers that were started with it (the warm pool)."""
    real = os.path.realpath(path)
    with open(os.path.join(os.path.dirname(real), ".goex-sandbox.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        mounted = shared = False
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if fields[4] == real:
                    mounted = True
                    shared = any(x.startswith("shared:") for x in fields[6:fields.index("-")])
        if not mounted:
            mount(real, real, None, MS_BIND, None)
        if not shared:
            mount("none", real, None, MS_SHARED | MS_REC, None)


@dataclass
class Layer:
    """One run's upper/work directories and the merged mount point."""

    dir: str
    upper: str
    work: str
    merged: str
    mounted: bool = False

    @classmethod
    def create(cls, base: str | None = None) -> "Layer":
        d = tempfile.mkdtemp(prefix="run-", dir=base or state_dir())
        os.chmod(d, 0o711)
        layer = cls(d, os.path.join(d, "upper"), os.path.join(d, "work"), os.path.join(d, "merged"))
        for p in (layer.upper, layer.work, layer.merged):
            os.mkdir(p, 0o700)
        return layer

    def prepare(self, ws: Workspace) -> None:
        """Give the upper root the workspace root's owner and mode, and hide the journal."""
        st = os.fstat(ws.root_fd)
        os.chown(self.upper, st.st_uid, st.st_gid)
        os.chmod(self.upper, stat.S_IMODE(st.st_mode))
        hidden = ws._hidden_parts
        if hidden:
            path = self.upper
            for i, name in enumerate(hidden[:-1]):
                path = os.path.join(path, name)
                lst = ws.lstat(hidden[: i + 1])
                os.mkdir(path, 0o700)
                if lst is not None:
                    os.chown(path, lst.st_uid, lst.st_gid)
                    os.chmod(path, stat.S_IMODE(lst.st_mode))
            os.mknod(os.path.join(path, hidden[-1]), stat.S_IFCHR | 0o000, os.makedev(0, 0))

    def mount(self, lower: str, at: str | None = None) -> str:
        target = at or self.merged
        data = f"lowerdir={_escape(lower)},upperdir={_escape(self.upper)},workdir={_escape(self.work)},{OPTIONS}"
        if _volatile[0]:
            try:
                mount("overlay", target, "overlay", 0, data + ",volatile")
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                _volatile[0] = False  # an older kernel: mounted without it from now on
        if not _volatile[0]:
            mount("overlay", target, "overlay", 0, data)
        self.mounted_at = target
        self.mounted = True
        return target

    def unmount(self) -> None:
        if self.mounted:
            umount(self.mounted_at)
            self.mounted = False

    def remove(self) -> None:
        """Unmount now; the folders go in the background (a dozen file system operations, a few
        ms on a busy disk, that the action need not wait for)."""
        self.unmount()
        _discard(self.dir)


_trash: "queue.SimpleQueue[str | None]" = queue.SimpleQueue()
_remover: list[threading.Thread] = []
_remover_lock = threading.Lock()


def _discard(path: str) -> None:
    _trash.put(path)
    with _remover_lock:
        if not _remover or not _remover[0].is_alive():
            _remover[:] = [threading.Thread(target=_empty_trash, name="goex-layer-remover", daemon=True)]
            _remover[0].start()


def _empty_trash() -> None:
    while (path := _trash.get()) is not None:
        shutil.rmtree(path, ignore_errors=True)


@atexit.register
def flush_trash() -> None:
    """Remove every layer still waiting to be (also at exit, so none is left behind)."""
    with _remover_lock:
        thread = _remover[0] if _remover else None
    if thread is not None and thread.is_alive():
        _trash.put(None)
        thread.join(30)
    while True:
        try:
            path = _trash.get_nowait()
        except queue.Empty:
            return
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)


# -- reading the upper layer ---------------------------------------------------------------------


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _opaque(fd: int) -> bool:
    """The kernel's marker of a folder that replaced the lower one (never a user.* look-alike)."""
    try:
        return os.getxattr(fd, OPAQUE) == b"y"
    except OSError:
        return False


@dataclass
class Change:
    """One top-level difference: `path` becomes `node` (a Node without blobs: file nodes carry
    `sha`, `size`, `mode`, `mtime`, and `src`, the upper-layer path to copy from)."""

    parts: Parts
    node: dict[str, Any]
    kind: str  # "created" | "changed" | "deleted" | "replaced" | "mode"


@dataclass
class Diff:
    changes: list[Change] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # special files, the journal folder
    scanned: int = 0  # upper-layer entries looked at
    modes_stripped: list[dict[str, str]] = field(default_factory=list)  # {path, mode, applied}

    @property
    def setuid_removed(self) -> list[str]:
        return [m["path"] for m in self.modes_stripped if int(m["mode"], 8) & 0o6000]

    def allowed(self, here: Parts, mode: int, lower: os.stat_result | None = None) -> int:
        """`mode` without the refused bits the run added (ones the workspace path already had stay)."""
        kept = stat.S_IMODE(lower.st_mode) & REFUSED_BITS if lower is not None else 0
        applied = mode & ~(REFUSED_BITS & ~kept)
        if applied != mode:
            self.modes_stripped.append({"path": show(here), "mode": f"{mode:04o}", "applied": f"{applied:04o}"})
        return applied


def changes(layer: Layer, ws: Workspace) -> Diff:
    """What the run changed, from the upper layer alone (every sandboxed process must be dead)."""
    diff = Diff()
    fd = os.open(layer.upper, _DIR)
    try:
        _walk(fd, layer.upper, (), ws, diff)
    finally:
        os.close(fd)
    return diff


def _walk(ufd: int, upath: str, parts: Parts, ws: Workspace, diff: Diff) -> None:
    for name in sorted(os.listdir(ufd)):
        diff.scanned += 1
        here = parts + (name,)
        st = os.stat(name, dir_fd=ufd, follow_symlinks=False)
        lower = ws.lstat(here)
        if ws._hidden_parts is not None and here == ws._hidden_parts:
            if not _is_whiteout(st):
                diff.skipped.append(f"{show(here)} (the journal folder's name: discarded)")
            continue
        if _is_whiteout(st):
            if lower is not None:
                diff.changes.append(Change(here, dict(tree.ABSENT), "deleted"))
            continue
        if stat.S_ISDIR(st.st_mode):
            dfd = os.open(name, _DIR, dir_fd=ufd)
            try:
                merged = lower is not None and stat.S_ISDIR(lower.st_mode) and not _opaque(dfd)
                if lower is not None and merged and not ws.holds_journal(here):
                    mode = diff.allowed(here, stat.S_IMODE(st.st_mode), lower)
                    if stat.S_IMODE(lower.st_mode) != mode:
                        diff.changes.append(Change(here, {"k": "d", "mode": mode}, "mode"))
                    _walk(dfd, os.path.join(upath, name), here, ws, diff)
                elif merged:  # holds the journal folder: only look inside
                    _walk(dfd, os.path.join(upath, name), here, ws, diff)
                else:
                    node = _node(dfd, os.path.join(upath, name), st, diff, here)
                    diff.changes.append(Change(here, node, "created" if lower is None else "replaced"))
            finally:
                os.close(dfd)
            continue
        same_kind = lower is not None and stat.S_IFMT(lower.st_mode) == stat.S_IFMT(st.st_mode)
        leaf = _leaf(ufd, upath, name, st, diff, here, lower if same_kind else None)
        if leaf is None:
            continue
        if lower is not None and leaf["k"] == "f" and stat.S_ISREG(lower.st_mode) and _same_file(ws, here, lower, leaf):
            continue  # copied up (opened for writing, touched) but left as it was
        diff.changes.append(Change(here, leaf, "created" if lower is None else "changed"))


def _leaf(dfd: int, upath: str, name: str, st: os.stat_result, diff: Diff, here: Parts,
          lower: os.stat_result | None = None) -> dict[str, Any] | None:
    if stat.S_ISLNK(st.st_mode):
        return {"k": "l", "target": os.readlink(name, dir_fd=dfd)}
    if stat.S_ISREG(st.st_mode):
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            h = hashlib.sha256()
            while data := os.read(fd, 1 << 20):
                h.update(data)
        finally:
            os.close(fd)
        mode = diff.allowed(here, stat.S_IMODE(st.st_mode), lower)
        return {"k": "f", "mode": mode, "size": st.st_size, "sha": h.hexdigest(), "mtime": st.st_mtime_ns,
                "src": os.path.join(upath, name)}
    kind = "FIFO" if stat.S_ISFIFO(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode) else "special file"
    diff.skipped.append(f"{show(here)} (a {kind}: not applied)")
    return None


def _node(dfd: int, upath: str, st: os.stat_result, diff: Diff, here: Parts) -> dict[str, Any]:
    """A whole new folder from the upper layer (whiteouts inside it mean nothing)."""
    children: dict[str, Any] = {}
    for child in sorted(os.listdir(dfd)):
        diff.scanned += 1
        cst = os.stat(child, dir_fd=dfd, follow_symlinks=False)
        if _is_whiteout(cst):
            continue
        if stat.S_ISDIR(cst.st_mode):
            cfd = os.open(child, _DIR, dir_fd=dfd)
            try:
                children[child] = _node(cfd, os.path.join(upath, child), cst, diff, here + (child,))
            finally:
                os.close(cfd)
        else:
            leaf = _leaf(dfd, upath, child, cst, diff, here + (child,))
            if leaf is not None:
                children[child] = leaf
    return {"k": "d", "mode": diff.allowed(here, stat.S_IMODE(st.st_mode)), "children": children}


def _same_file(ws: Workspace, parts: Parts, lower: os.stat_result, node: dict[str, Any]) -> bool:
    if lower.st_size != node["size"] or stat.S_IMODE(lower.st_mode) != node["mode"]:
        return False
    try:
        with ws.parent(parts) as dfd:
            fd, _ = tree.open_regular(dfd, parts[-1])
            try:
                return tree.file_sha(fd) == node["sha"]
            finally:
                os.close(fd)
    except OSError:
        return False


def digest(node: dict[str, Any]) -> str:
    """The digest the node will have in the workspace once applied (tree.digest_of's format)."""
    return tree.digest_of(node)


def public(node: dict[str, Any]) -> dict[str, Any]:
    """The node without the upper-layer handles, for the journal."""
    out = {k: v for k, v in node.items() if k not in ("src", "children")}
    if "children" in node:
        out["children"] = {n: public(c) for n, c in node["children"].items()}
    return out


# -- applying ------------------------------------------------------------------------------------


def apply(ws: Workspace, change: Change) -> None:
    """Make the workspace path what the code left in the upper layer (no links followed)."""
    parts, node = change.parts, change.node
    with ws.parent(parts) as dfd:
        if change.kind == "mode":
            tree.set_mode(dfd, parts[-1], node["mode"])
            return
        st = tree._lstat(dfd, parts[-1])
        if node["k"] == "f" and st is not None and stat.S_ISREG(st.st_mode):
            fd = os.open(parts[-1], os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dfd)
            try:
                _fill(fd, node)
            finally:
                os.close(fd)
            return
        tree.remove(dfd, parts[-1])
        _materialize(dfd, parts[-1], node)


def _materialize(dfd: int, name: str, node: dict[str, Any]) -> None:
    k = node["k"]
    if k == "-":
        return
    if k == "l":
        os.symlink(node["target"], name, dir_fd=dfd)
    elif k == "f":
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        try:
            _fill(fd, node)
        finally:
            os.close(fd)
    else:
        os.mkdir(name, 0o700, dir_fd=dfd)
        fd = os.open(name, _DIR, dir_fd=dfd)
        try:
            for child_name, child in node["children"].items():
                _materialize(fd, child_name, child)
            os.fchmod(fd, node["mode"])
        finally:
            os.close(fd)


def _fill(fd: int, node: dict[str, Any]) -> None:
    src = os.open(node["src"], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        h = hashlib.sha256()
        while data := os.read(src, 1 << 20):
            h.update(data)
            tree.write_all(fd, data)
    finally:
        os.close(src)
    if h.hexdigest() != node["sha"]:
        raise ActionFailed(f"a file changed in the sandbox layer after it was scanned (expected {node['sha'][:12]})")
    os.fchmod(fd, node["mode"])
    os.utime(fd, ns=(node["mtime"], node["mtime"]))


def walk_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("children", {}).values():
        yield from walk_nodes(child)

