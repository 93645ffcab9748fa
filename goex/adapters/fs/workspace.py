"""Confinement of every path to the workspace root, with directory file descriptors.

The kernel is never asked to follow a symlink: each component is opened relative to the
already-opened parent with O_NOFOLLOW. Symlinks inside the workspace are resolved here, by
reading them and re-walking from the root, and refused when they lead outside or into the
journal. A symlink swapped in while an action runs makes the no-follow open fail (ELOOP)
instead of escaping.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from contextlib import contextmanager
from typing import Iterator

from ...errors import ActionFailed, PathRefused

Parts = tuple[str, ...]
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_LINKS = 40


def show(parts: Parts) -> str:
    return "/".join(parts) or "."


class Workspace:
    """The root an agent may touch, minus the journal folder."""

    def __init__(self, root: str | os.PathLike[str], hidden: str | os.PathLike[str] | None = None):
        self.root = os.path.realpath(root)
        try:
            self.root_fd = os.open(self.root, _DIR_FLAGS)
        except FileNotFoundError:
            raise FileNotFoundError(f"workspace root {self.root} does not exist; create it first") from None
        except NotADirectoryError:
            raise NotADirectoryError(f"workspace root {self.root} is not a folder") from None
        self._hidden: tuple[int, int] | None = None
        self._hidden_parts: Parts | None = None
        self._folders: dict[Parts, int] | None = None  # folders kept open by `reusing_folders`
        self.hidden = os.path.realpath(hidden) if hidden is not None else None  # goex's own state lives here
        if hidden is not None and os.path.isdir(hidden):
            st = os.stat(hidden)
            self._hidden = (st.st_dev, st.st_ino)
            real = os.path.realpath(hidden)
            if real.startswith(self.root.rstrip("/") + "/"):
                self._hidden_parts = tuple(os.path.relpath(real, self.root).split("/"))

    def fingerprint(self) -> str:
        """sha256 of the whole workspace (content, modes, symlinks), the journal excluded."""
        from . import tree

        h = hashlib.sha256()
        with self.folder(()) as fd:
            for name in sorted(os.listdir(fd)):
                if self.is_hidden(os.stat(name, dir_fd=fd, follow_symlinks=False)):
                    continue
                h.update(tree.listing_line(fd, name))
        return h.hexdigest()

    def close(self) -> None:
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1

    def __del__(self) -> None:  # a workspace nobody closed: its folder's descriptor goes with it
        if getattr(self, "root_fd", -1) >= 0:
            self.close()

    # -- names --------------------------------------------------------------------------------

    def split(self, path: str) -> Parts:
        """Check the spelling of a path and split it into components (no filesystem access)."""
        if "\0" in path:
            raise PathRefused(path, "contains a NUL byte")
        if path.startswith("/"):
            raise PathRefused(path, "absolute paths are not allowed; give a path relative to the workspace root")
        parts = tuple(p for p in path.split("/") if p not in ("", "."))
        if ".." in parts:
            raise PathRefused(path, "'..' is not allowed; give a path inside the workspace root")
        return parts

    def holds_journal(self, parts: Parts) -> bool:
        """Whether the folder `parts` is, or contains, the journal folder."""
        return self._hidden_parts is not None and self._hidden_parts[: len(parts)] == parts

    def is_hidden(self, st: os.stat_result) -> bool:
        return self._hidden is not None and (st.st_dev, st.st_ino) == self._hidden

    # -- resolution ---------------------------------------------------------------------------

    def resolve(self, path: str, *, follow: bool) -> Parts:
        """The canonical (symlink-free) components of `path` inside the root.

        Intermediate symlinks are always resolved (inside the root only); the last component
        is resolved too when `follow` is true. Missing components are allowed: they are returned
        as spelled, for actions that create them.
        """
        return self.resolve_held(path, follow=follow, hold=False)[0]

    def resolve_held(self, path: str, *, follow: bool, hold: bool = True) -> tuple[Parts, int | None]:
        """`resolve`, and with `hold` an open fd of the folder holding what it returns (the one the
        walk ended in, each folder opened from its parent without following links, as `parent`
        opens them): the caller closes it. None when that folder does not exist (yet) or the
        path is the root."""
        todo = list(self.split(path))
        done: list[str] = []
        hops = 0
        fd = os.dup(self.root_fd)
        kept = -1
        try:
            while todo:
                name = todo.pop(0)
                last = not todo
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    if hold and last:
                        kept, fd = fd, -1
                    return tuple(done + [name] + todo), (kept if kept >= 0 else None)
                except NotADirectoryError:
                    raise ActionFailed(f"{path}: {show(tuple(done))} is not a folder") from None
                if self.is_hidden(st):
                    raise PathRefused(path, "the journal folder is off limits to actions")
                if stat.S_ISLNK(st.st_mode) and (follow or not last):
                    hops += 1
                    if hops > _MAX_LINKS:
                        raise PathRefused(path, "too many levels of symbolic links")
                    target = os.readlink(name, dir_fd=fd)
                    todo = self._through_link(path, done, target) + todo
                    done = []
                    os.close(fd)
                    fd = os.dup(self.root_fd)
                    continue
                if last:
                    if hold:
                        kept, fd = fd, -1
                    return tuple(done + [name]), (kept if kept >= 0 else None)
                if not stat.S_ISDIR(st.st_mode):
                    raise ActionFailed(f"{path}: {show(tuple(done + [name]))} is not a folder")
                nfd = self._open_dir(fd, name, path)
                os.close(fd)
                fd = nfd
                done.append(name)
            return tuple(done), None
        finally:
            if fd >= 0:
                os.close(fd)

    def _through_link(self, path: str, done: list[str], target: str) -> list[str]:
        """The components a symlink at `done` + [link] leads to, resolved as text inside the root."""
        if target.startswith("/"):
            target = os.path.normpath(target)
            inside = os.path.relpath(target, self.root)
            if inside == ".." or inside.startswith("../"):
                where = show(tuple(done)) + "/…" if done else "a symlink"
                raise PathRefused(path, f"{where} points outside the workspace ({target})")
            parts: list[str] = []
            target = inside
        else:
            parts = list(done)
        for piece in target.split("/"):
            if piece in ("", "."):
                continue
            if piece == "..":
                if not parts:
                    raise PathRefused(path, f"a symlink on the way points outside the workspace ({target})")
                parts.pop()
            else:
                parts.append(piece)
        return parts

    def _open_dir(self, fd: int, name: str, path: str) -> int:
        try:
            nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise PathRefused(path, f"{name} changed into a symlink or file while the action ran") from None
            raise
        if self.is_hidden(os.fstat(nfd)):
            os.close(nfd)
            raise PathRefused(path, "the journal folder is off limits to actions")
        return nfd

    @contextmanager
    def reusing_folders(self) -> Iterator[None]:
        """Within it, `parent` opens each folder once (each from its own parent, without following
        links, as always) and hands out that fd again. Only for operations on many paths none of
        which lies inside another (a coalesced undo): none of them changes a folder they open."""
        if self._folders is not None:
            yield
            return
        self._folders = {}
        try:
            yield
        finally:
            folders, self._folders = self._folders, None
            for fd in folders.values():
                os.close(fd)

    def _kept_folder(self, parts: Parts, path: str) -> int:
        assert self._folders is not None
        if not parts:
            return self.root_fd
        fd = self._folders.get(parts)
        if fd is None:
            fd = self._folders[parts] = self._open_dir(self._kept_folder(parts[:-1], path), parts[-1], path)
        return fd

    @contextmanager
    def parent(self, parts: Parts) -> Iterator[int]:
        """An open fd of the folder holding `parts` (canonical), opened without following links."""
        if self._folders is not None:
            yield self._kept_folder(parts[:-1], show(parts))
            return
        fd = self.open_parent(parts)
        try:
            yield fd
        finally:
            os.close(fd)

    def open_parent(self, parts: Parts) -> int:
        """A new fd of the folder holding `parts` (canonical), opened from the root one folder at a
        time without following links (as `parent`); the caller closes it."""
        fd = os.dup(self.root_fd)
        try:
            for name in parts[:-1]:
                nfd = self._open_dir(fd, name, show(parts))
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    @contextmanager
    def folder(self, parts: Parts) -> Iterator[int]:
        """An open fd of the folder `parts` itself (the root for ())."""
        with self.parent(parts + ("",)) as fd:
            yield fd

    def lstat(self, parts: Parts) -> os.stat_result | None:
        if not parts:
            return os.fstat(self.root_fd)
        try:
            with self.parent(parts) as fd:
                return os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    # -- database files -----------------------------------------------------------------------

    def regular_file(self, path: str) -> tuple[Parts, os.stat_result | None]:
        """The canonical components of a file a library will open by name (a SQLite database),
        and its status (None when absent). Intermediate folders resolve inside the root only;
        the file itself must be a regular file, never a symlink, so nothing it names can lead out."""
        parts = self.resolve(path, follow=False)
        if not parts:
            raise PathRefused(path, "the workspace root is a folder, not a file")
        st = self.lstat(parts)
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise PathRefused(path, "it is a symbolic link; goex opens it only as a regular file inside the "
                                    "workspace (put the file itself there, not a link)")
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise PathRefused(path, "it is not a regular file")
        if st is not None and st.st_nlink > 1:  # another name of it may be the journal, or outside
            raise PathRefused(path, "it has other hard links; give the file a single name (copy it)")
        return parts, st

    def read_head(self, parts: Parts, size: int) -> bytes:
        """The first `size` bytes of the regular file `parts`, opened without following links."""
        with self.parent(parts) as fd:
            ffd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=fd)
        try:
            if not stat.S_ISREG(os.fstat(ffd).st_mode):
                raise PathRefused(show(parts), "it is not a regular file")
            return os.pread(ffd, size, 0)
        finally:
            os.close(ffd)

    def unlink_file(self, parts: Parts) -> None:
        """Remove the file (or link) `parts` itself, never what a link points to; absent is fine."""
        try:
            with self.parent(parts) as fd:
                os.unlink(parts[-1], dir_fd=fd)
        except FileNotFoundError:
            pass
