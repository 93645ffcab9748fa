"""The journal's head, kept outside the workspace: a rewrite of the journal cannot move it.

A hash chain shows an edited record, but not a tail rewritten with recomputed hashes and a new
head. The anchor is a small file in the user's state folder, out of any workspace's reach:

    $GOEX_STATE_DIR/anchors/<sha256 of the journal folder's real path>
    (default $XDG_STATE_HOME/goex, else ~/.local/state/goex)

It holds `SEQ:HASH` of the last record appended, rewritten in place (one pwrite, no rename) after
every commit, under the journal's lock. A journal is sound only if the anchor's record is still in
its chain with that hash; an anchor beyond the last record means the journal was truncated.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from ..errors import JournalCorrupt

_LINE = 20 + 1 + 64 + 1  # "SEQ:HASH\n", SEQ zero-padded: every write has the same length


def state_dir() -> Path:
    """Where goex keeps per-user state: GOEX_STATE_DIR, else $XDG_STATE_HOME/goex, else ~/.local/state/goex."""
    if os.environ.get("GOEX_STATE_DIR"):
        return Path(os.environ["GOEX_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "goex"


def anchor_path(folder: str | os.PathLike[str]) -> Path:
    key = hashlib.sha256(os.path.realpath(folder).encode("utf-8", "surrogateescape")).hexdigest()
    return state_dir() / "anchors" / key


def forget_anchor(folder: str | os.PathLike[str]) -> None:
    """Remove the anchor of a journal folder that is being deleted with its workspace."""
    anchor_path(folder).unlink(missing_ok=True)


class Anchor:
    """The anchor file of one journal folder. `note` says why it is missing or was reset, if so."""

    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = os.path.realpath(folder)
        self.path = anchor_path(folder)
        self.note: str | None = None
        self._fd = -1

    def open(self, head: tuple[int, str], *, new_journal: bool) -> None:
        """Open (or create) the anchor; call under the journal's lock with the journal's head."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self.note = (f"the journal has no anchor: {self.path} cannot be written ({exc.strerror}); a journal "
                         "rewritten consistently would go unnoticed (set GOEX_STATE_DIR to a writable folder)")
            return
        kept = self.read()
        if kept is None:  # the folder it anchors, after the fixed-size line, for whoever looks at it
            os.pwrite(self._fd, self.folder.encode("utf-8", "surrogateescape") + b"\n", _LINE)
            if head[0] > 0:
                self.note = (f"the journal had no anchor on this machine (first use here, moved or copied): "
                             f"anchored now at record {head[0]}; what came before is vouched for by the chain only")
            self.write(*head)
        elif new_journal and kept[0] > 0 and head[0] == 0:
            self.note = (f"a new journal was created where one anchored at record {kept[0]} was (deleted); "
                         "anchored anew")
            self.write(*head)

    def open_readonly(self) -> None:
        """Open the anchor to read it only (a reader never creates nor moves it)."""
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            self.note = f"the journal has no anchor here ({self.path}: {exc.strerror}); verified by the chain only"

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:  # an anchor nobody closed: its descriptor goes with it
        with contextlib.suppress(OSError, AttributeError):
            self.close()

    def write(self, seq: int, digest: str) -> None:
        """Move the anchor to the journal's new head: one in-place write, cheap enough for every commit."""
        if self._fd < 0:
            return
        try:
            os.pwrite(self._fd, f"{seq:020d}:{digest}\n".encode(), 0)
        except OSError as exc:  # the journal stays the truth; losing the anchor only weakens detection
            self.note = f"the anchor {self.path} could not be updated ({exc.strerror}); it lags the journal"
            self.close()

    def read(self) -> tuple[int, str] | None:
        """The kept (seq, hash), None when there is none yet. Raises JournalCorrupt on a damaged file."""
        if self._fd < 0:
            return None
        data = os.pread(self._fd, _LINE, 0)
        if not data:
            return None
        seq, sep, digest = data.decode("ascii", "replace").strip().partition(":")
        if not sep or not seq.isdigit() or len(digest) != 64:
            raise JournalCorrupt(f"the anchor {self.path} is damaged; if you trust the journal, delete that file "
                             "to anchor it anew")
        return int(seq), digest
