"""Before-images of files, folders and symlinks: capture, fingerprint, and put back exactly.

A node is plain JSON, stored in the journal:

- `{"k": "-"}`: nothing at that path
- `{"k": "f", "mode": 420, "size": 3, "sha": "…", "chunks": ["…"], "mtime": ns}`: a file and its bytes
- `{"k": "d", "mode": 493, "children": {"name": node, …}}`: a folder and everything in it
- `{"k": "l", "target": "…"}`: a symlink (never followed)

A *shallow* node (`"f"` or `"d"` without `chunks` / `children`) records the mode only; it is
what `fs.chmod` needs. A digest is a short string describing a state at the same depth, used
to check that nothing changed since an action before undoing it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from typing import Any, Callable

from ...errors import PathRefused
from ...journal.store import CHUNK

Node = dict[str, Any]
PutBlob = Callable[[bytes], str]
GetBlob = Callable[[str], bytes]

ABSENT: Node = {"k": "-"}
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _special(name: str, st: os.stat_result) -> PathRefused:
    kind = ("FIFO" if stat.S_ISFIFO(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode) else "device file")
    return PathRefused(name, f"is a {kind}; goex only acts on regular files, folders and symlinks")


def open_regular(dfd: int, name: str) -> tuple[int, os.stat_result]:
    """Open a regular file for reading without following links or blocking on FIFOs."""
    fd = os.open(name, _READ_FLAGS, dir_fd=dfd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _special(name, st) if not stat.S_ISDIR(st.st_mode) else IsADirectoryError(f"{name} is a folder")
    return fd, st


def _lstat(dfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


# -- capture -----------------------------------------------------------------------------------


def capture(dfd: int, name: str, put: PutBlob, is_hidden: Callable[[os.stat_result], bool]) -> Node:
    """The deep node at `name` (content stored with `put`)."""
    st = _lstat(dfd, name)
    if st is None:
        return dict(ABSENT)
    if is_hidden(st):
        raise PathRefused(name, "contains the journal folder, which is off limits to actions")
    if stat.S_ISLNK(st.st_mode):
        return {"k": "l", "target": os.readlink(name, dir_fd=dfd)}
    if stat.S_ISREG(st.st_mode):
        fd, st = open_regular(dfd, name)
        try:
            return _capture_file(fd, st, put)
        finally:
            os.close(fd)
    if stat.S_ISDIR(st.st_mode):
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            children = {child: capture(fd, child, put, is_hidden) for child in sorted(os.listdir(fd))}
            return {"k": "d", "mode": stat.S_IMODE(os.fstat(fd).st_mode), "children": children}
        finally:
            os.close(fd)
    raise _special(name, st)


def _capture_file(fd: int, st: os.stat_result, put: PutBlob) -> Node:
    whole = hashlib.sha256()
    chunks = []
    size = 0
    while True:
        data = os.read(fd, CHUNK)
        if not data:
            break
        whole.update(data)
        size += len(data)
        chunks.append(put(data))
    return {"k": "f", "mode": stat.S_IMODE(st.st_mode), "size": size, "sha": whole.hexdigest(),
            "chunks": chunks, "mtime": st.st_mtime_ns}


def shallow(dfd: int, name: str) -> Node:
    """The mode-only node at `name`."""
    st = _lstat(dfd, name)
    if st is None:
        return dict(ABSENT)
    if stat.S_ISREG(st.st_mode):
        return {"k": "f", "mode": stat.S_IMODE(st.st_mode)}
    if stat.S_ISDIR(st.st_mode):
        return {"k": "d", "mode": stat.S_IMODE(st.st_mode)}
    if stat.S_ISLNK(st.st_mode):
        return {"k": "l", "target": os.readlink(name, dir_fd=dfd)}
    raise _special(name, st)


def count(node: Node) -> tuple[int, int]:
    """(files, bytes) held by a deep node."""
    if node["k"] == "f":
        return 1, node.get("size", 0)
    if node["k"] == "l":
        return 1, 0
    files = size = 0
    for child in node.get("children", {}).values():
        f, s = count(child)
        files, size = files + f, size + s
    return files, size


# -- digests -----------------------------------------------------------------------------------


def digest_of(node: Node) -> str:
    """The digest of a captured node."""
    k = node["k"]
    if k == "-":
        return "-"
    if k == "l":
        return "l:" + node["target"]
    if k == "f":
        return f"f{node['mode']:o}:{node['sha']}" if "sha" in node else f"f{node['mode']:o}"
    if "children" not in node:
        return f"d{node['mode']:o}"
    h = hashlib.sha256()
    for child_name, child in sorted(node["children"].items()):
        h.update(child_name.encode("utf-8", "surrogateescape") + b"\0" + digest_of(child).encode() + b"\n")
    return f"d{node['mode']:o}:{h.hexdigest()}"


def listing_line(dfd: int, name: str) -> bytes:
    """One entry of a folder's digest: its name and the deep digest of what is at it."""
    return name.encode("utf-8", "surrogateescape") + b"\0" + digest_at(dfd, name, deep=True).encode() + b"\n"


def digest_at(dfd: int, name: str, *, deep: bool) -> str:
    """The digest of what is at `name` now."""
    st = _lstat(dfd, name)
    if st is None:
        return "-"
    if stat.S_ISLNK(st.st_mode):
        return "l:" + os.readlink(name, dir_fd=dfd)
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISREG(st.st_mode):
        if not deep:
            return f"f{mode:o}"
        fd, _ = open_regular(dfd, name)
        try:
            return f"f{mode:o}:{file_sha(fd)}"
        finally:
            os.close(fd)
    if stat.S_ISDIR(st.st_mode):
        if not deep:
            return f"d{mode:o}"
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            h = hashlib.sha256()
            for child in sorted(os.listdir(fd)):
                h.update(listing_line(fd, child))
            return f"d{mode:o}:{h.hexdigest()}"
        finally:
            os.close(fd)
    return f"x{stat.S_IFMT(st.st_mode):o}"


def file_sha(fd: int) -> str:
    h = hashlib.sha256()
    while data := os.read(fd, CHUNK):
        h.update(data)
    return h.hexdigest()


def describe(digest: str) -> str:
    """A digest in words, for conflict messages."""
    if digest == "-":
        return "nothing"
    if digest.startswith("l:"):
        return f"a symlink to {digest[2:]}"
    kind = {"f": "a file", "d": "a folder", "x": "a special file"}.get(digest[0], "something")
    mode, _, sha = digest[1:].partition(":")
    return f"{kind} (mode {int(mode, 8):04o}" + (f", content {sha[:12]}…)" if sha else ")")


# -- restore -----------------------------------------------------------------------------------


def remove(dfd: int, name: str) -> None:
    """Remove whatever is at `name` (a whole tree for a folder); nothing if absent."""
    st = _lstat(dfd, name)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dfd)
    else:
        os.unlink(name, dir_fd=dfd)


def materialize(dfd: int, name: str, node: Node, get: GetBlob) -> None:
    """Create `node` at `name`, which must be absent."""
    k = node["k"]
    if k == "-":
        return
    if k == "l":
        os.symlink(node["target"], name, dir_fd=dfd)
    elif k == "f":
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        try:
            _fill(fd, node, get)
        finally:
            os.close(fd)
    else:
        os.mkdir(name, 0o700, dir_fd=dfd)
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            for child_name, child in node.get("children", {}).items():
                materialize(fd, child_name, child, get)
            os.fchmod(fd, node["mode"])
        finally:
            os.close(fd)


def is_shallow(node: Node) -> bool:
    return node["k"] in ("f", "d") and "chunks" not in node and "children" not in node


def restore(dfd: int, name: str, node: Node, get: GetBlob) -> None:
    """Make `name` exactly `node` again. A shallow node only resets the mode of what is there."""
    if is_shallow(node):
        set_mode(dfd, name, node["mode"])
        return
    if node["k"] == "f" and (st := _lstat(dfd, name)) is not None and stat.S_ISREG(st.st_mode):
        _rewrite(dfd, name, node, get)  # in place: far cheaper than unlink + create on most filesystems
        return
    remove(dfd, name)
    materialize(dfd, name, node, get)


def _rewrite(dfd: int, name: str, node: Node, get: GetBlob) -> None:
    # written over, then cut to length: no O_TRUNC, whose truncation to zero of a file with data
    # makes ext4 allocate and write its blocks out at once (auto_da_alloc), some 0.4 ms a file
    fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _special(name, st)
        _fill(fd, node, get, st)
    finally:
        os.close(fd)


def _fill(fd: int, node: Node, get: GetBlob, st: os.stat_result | None = None) -> None:
    """Write `node`'s content from the start of `fd`, then its mode and mtime. `st`: the file was
    there, as `st` says: it is cut after the content if it was longer, its mode set if it differs
    (or holds set-user/group-ID bits)."""
    size = 0
    for chunk in node["chunks"]:
        data = get(chunk)
        write_all(fd, data)
        size += len(data)
    if st is not None and st.st_size > size:
        os.ftruncate(fd, size)
    if st is None or stat.S_IMODE(st.st_mode) != node["mode"] or node["mode"] & (stat.S_ISUID | stat.S_ISGID):
        os.fchmod(fd, node["mode"])  # (a write clears set-user/group-ID bits: those are set again)
    os.utime(fd, ns=(node["mtime"], node["mtime"]))


def set_mode(dfd: int, name: str, mode: int) -> None:
    """chmod without following a symlink at `name` (Linux has no lchmod: go through O_PATH)."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    try:
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise _special(name, st)
        os.chmod(f"/proc/self/fd/{fd}", mode)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
