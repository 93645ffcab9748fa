"""The journal: an append-only, hash-chained record log with content-addressed blobs.

Stored in one SQLite database (`journal.db`, WAL mode) inside the journal folder:

- `records`: the log itself. Each row is one canonical-JSON record; its hash is
  `sha256(previous hash + body)`, so editing, removing or reordering a record breaks the chain.
- `blobs`: before-image content, keyed by the sha256 of the raw bytes, zlib-compressed.
- `head`: the last record's seq and hash, written with every append, so a truncated tail shows.
- `entries`, `checkpoints`: an index derived from the records (status of each entry), kept in the
  same transactions for fast queries; `verify` rebuilds it from the records and compares.

Every process appends under one exclusive lock (`lock` file, flock), held across an action's
capture, apply and record, so concurrent sessions on one root never interleave inside an action.
See docs/journal.md for the format.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sqlite3
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..errors import JournalBusy, JournalCorrupt, JournalUnavailable

FORMAT_VERSION = 1
GENESIS = "0" * 64
CHUNK = 1 << 20  # before-images are stored in 1 MiB content-addressed chunks

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records(seq INTEGER PRIMARY KEY, body TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blobs(
    id INTEGER PRIMARY KEY, hash TEXT NOT NULL UNIQUE, size INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS head(id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries(
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL, session TEXT NOT NULL, actor TEXT NOT NULL,
    type TEXT NOT NULL, target TEXT NOT NULL, decision TEXT NOT NULL, status TEXT NOT NULL,
    time REAL NOT NULL, undoable INTEGER NOT NULL, after_seq INTEGER, reviewed TEXT);
CREATE INDEX IF NOT EXISTS entries_session ON entries(session, seq);
CREATE INDEX IF NOT EXISTS entries_open ON entries(seq) WHERE status IN ('pending', 'undoing');
CREATE INDEX IF NOT EXISTS entries_undoable ON entries(seq) WHERE status IN ('applied', 'undo_failed') AND undoable = 1;
CREATE TABLE IF NOT EXISTS checkpoints(
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, session TEXT NOT NULL, label TEXT, time REAL NOT NULL);
"""

#: Entry states, as `goex log` shows them.
PENDING, APPLIED, FAILED, DENIED, UNDOING, UNDONE = "pending", "applied", "failed", "denied", "undoing", "undone"
UNDO_FAILED, NEEDS_REVIEW = "undo_failed", "needs_review"


def canonical(obj: Any) -> str:
    # ASCII-only: file names that are not UTF-8 (surrogate escapes) survive as \udcXX
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def chain(prev: str, body: str) -> str:
    return hashlib.sha256(prev.encode() + body.encode()).hexdigest()


def entry_id(seq: int) -> str:
    return f"e{seq}"


def entry_seq(eid: str) -> int:
    """The record seq an entry id names (`e12` -> 12); -1 when it is not an entry id."""
    return int(eid[1:]) if eid[:1] == "e" and eid[1:].isdigit() else -1


def checkpoint_id(seq: int) -> str:
    return f"c{seq}"


class Transaction:
    """One atomic append: blobs and records become visible (and durable) together."""

    def __init__(self, journal: "Journal", cur: sqlite3.Cursor):
        self._journal = journal
        self._cur = cur
        row = cur.execute("SELECT seq, hash FROM head WHERE id = 1").fetchone()
        self.seq, self.hash = row if row else (0, GENESIS)

    def put_blob(self, data: bytes) -> str:
        """Store bytes (at most one chunk) content-addressed; returns their sha256."""
        digest = hashlib.sha256(data).hexdigest()
        if self._cur.execute("SELECT 1 FROM blobs WHERE hash = ?", (digest,)).fetchone() is None:
            # zlib's set-up costs more than it saves on small chunks: those are stored as they are
            packed = zlib.compress(data, 1) if len(data) >= 4096 else data
            stored = b"z" + packed if len(packed) < len(data) else b"r" + data
            # appended in rowid order; only the small hash index takes a random insert
            self._cur.execute("INSERT INTO blobs(hash, size, data) VALUES (?, ?, ?)", (digest, len(data), stored))
        return digest

    def append(self, kind: str, **fields: Any) -> tuple[int, str]:
        """Append one record; returns its (seq, hash)."""
        seq = self.seq + 1
        record = {"seq": seq, "kind": kind, "time": round(time.time(), 6), **fields}
        body = canonical(record)
        digest = chain(self.hash, body)
        self._cur.execute("INSERT INTO records VALUES (?, ?, ?)", (seq, body, digest))
        index_record(self._cur, record)
        self.seq, self.hash = seq, digest
        return seq, digest


class Journal:
    """The append-only store of one workspace. Thread-safe; one instance per process and root."""

    def __init__(self, folder: str | os.PathLike[str], *, durability: str = "fsync"):
        if durability not in ("fsync", "process"):
            raise ValueError("durability is 'fsync' (survives power loss) or 'process' (survives a killed process)")
        self.folder = Path(folder)
        self.durability = durability
        self._thread_lock = threading.RLock()
        self._lock_depth = 0
        self._data_version = -1
        self._checked: dict[str, bytes] = {}
        self._lock_fd = -1
        self._db = None  # type: ignore[assignment]
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock_fd = os.open(self.folder / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._db = sqlite3.connect(
                self.folder / "journal.db", isolation_level=None, check_same_thread=False, timeout=60.0
            )
        except OSError as exc:
            self.close()
            raise JournalUnavailable(f"cannot open the journal in {self.folder}: {exc.strerror}; it needs a "
                                     "writable folder (choose one with journal= / --journal)") from None
        self._identity: tuple[int, int] | None = None  # (dev, ino) of journal.db once set up
        self._synchronous = ""
        try:
            with self.exclusive():  # a new journal is set up by one process at a time
                self._db.execute("PRAGMA journal_mode=WAL")
                self._set_sync(durable=True)
                self._db.executescript(_SCHEMA)
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (str(FORMAT_VERSION),))
                version = self._db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()[0]
        except sqlite3.OperationalError as exc:
            self.close()
            if "readonly" in str(exc) or "read-only" in str(exc) or "unable to open" in str(exc):
                raise JournalUnavailable(f"cannot write the journal in {self.folder}: {exc}; it needs a "
                                         "writable folder") from None
            if "locked" in str(exc) or "busy" in str(exc):
                raise JournalBusy(f"journal {self.folder} stayed locked by another program for 60 s: {exc}") from None
            raise JournalCorrupt(f"journal database {self.folder / 'journal.db'} cannot be opened: {exc}") from None
        except sqlite3.DatabaseError as exc:
            self.close()
            raise JournalCorrupt(f"journal database {self.folder / 'journal.db'} cannot be opened: {exc}") from None
        if version != str(FORMAT_VERSION):
            self.close()
            raise JournalCorrupt(f"journal format {version} is not supported (expected {FORMAT_VERSION})")
        self._identity = _identity(self.folder / "journal.db")

    def close(self) -> None:
        if getattr(self, "_db", None) is not None:
            self._db.close()
            self._db = None  # type: ignore[assignment]
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- locking -----------------------------------------------------------------------------

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the workspace lock: no other process or thread appends or acts meanwhile.

        Waiting is a blocking flock(), so waiters queue in the kernel and take turns with a busy
        process; the kernel drops the lock of a process that dies.
        """
        with self._thread_lock:
            if self._lock_depth == 0:
                if self._lock_fd < 0:
                    raise JournalUnavailable("this runtime is closed; open a new goex.Runtime")
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
                if self._identity is not None and _identity(self.folder / "journal.db") != self._identity:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                    raise JournalUnavailable(f"the journal {self.folder / 'journal.db'} was deleted or replaced "
                                             "while this runtime had it open; nothing more is recorded there")
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    # -- writing -----------------------------------------------------------------------------

    @contextmanager
    def transaction(self, *, durable: bool) -> Iterator[Transaction]:
        """Append atomically. `durable=True` makes the records survive power loss (in 'fsync' mode)
        before this returns; otherwise they survive a killed process but may wait for the next sync."""
        with self.exclusive():
            try:
                self._set_sync(durable=durable)
                cur = self._db.cursor()
                cur.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise JournalUnavailable(f"cannot write the journal in {self.folder}: {exc}") from None
            try:
                tx = Transaction(self, cur)
                yield tx
                cur.execute(
                    "INSERT INTO head VALUES (1, ?, ?) ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                    (tx.seq, tx.hash),
                )
                cur.execute("COMMIT")
            except sqlite3.OperationalError as exc:  # disk full, read-only file system, I/O error
                if self._db.in_transaction:
                    cur.execute("ROLLBACK")
                raise JournalUnavailable(f"cannot write the journal in {self.folder}: {exc}; nothing of this "
                                         "step was recorded or applied") from None
            except BaseException:
                if self._db.in_transaction:
                    cur.execute("ROLLBACK")
                raise

    def append(self, kind: str, *, durable: bool = False, **fields: Any) -> tuple[int, str]:
        with self.transaction(durable=durable) as tx:
            return tx.append(kind, **fields)

    def _set_sync(self, *, durable: bool) -> None:
        level = "FULL" if durable and self.durability == "fsync" else "NORMAL"
        if level != self._synchronous:
            self._db.execute(f"PRAGMA synchronous={level}")
            self._synchronous = level

    # -- reading -----------------------------------------------------------------------------

    def read_blob(self, digest: str) -> bytes:
        if digest in self._checked:
            return self._checked.pop(digest)
        row = self._db.execute("SELECT data FROM blobs WHERE hash = ?", (digest,)).fetchone()
        if row is None:
            raise JournalCorrupt(f"before-image blob {digest[:16]} is missing from the journal; run `goex verify`")
        data = unpack_blob(row[0])
        if hashlib.sha256(data).hexdigest() != digest:
            raise JournalCorrupt(f"before-image blob {digest[:16]} does not match its hash; run `goex verify`")
        return data

    def check_blobs(self, obj: Any) -> None:
        """Raise `JournalCorrupt` unless every blob `obj` references is present and intact.
        Small checked blobs are kept for the next `read_blob` of them (undo reads each right after)."""
        self._checked.clear()
        room = 8 << 20
        for digest in set(referenced_chunks(obj)):
            data = self.read_blob(digest)
            if len(data) <= room:
                self._checked[digest] = data
                room -= len(data)

    def record(self, seq: int) -> dict[str, Any]:
        """One record, checked against its hash and its predecessor's before anyone acts on it."""
        with self._thread_lock:
            rows = self._db.execute("SELECT seq, body, hash FROM records WHERE seq IN (?, ?) ORDER BY seq",
                                    (seq - 1, seq)).fetchall()
        if not rows or rows[-1][0] != seq:
            raise JournalCorrupt(f"record {seq} is missing from the journal; run `goex verify`", seq=seq)
        prev = rows[0][2] if len(rows) == 2 else GENESIS if seq == 1 else None
        body, digest = rows[-1][1], rows[-1][2]
        if prev is None or chain(prev, body) != digest:
            raise JournalCorrupt(f"record {seq} does not match its hash chain (edited); nothing was undone from it. "
                                 "Run `goex verify`", seq=seq)
        return json.loads(body)

    def records(self, after: int = 0) -> Iterator[tuple[int, str, str]]:
        yield from self._db.execute("SELECT seq, body, hash FROM records WHERE seq > ? ORDER BY seq", (after,))

    def head(self) -> tuple[int, str]:
        row = self._db.execute("SELECT seq, hash FROM head WHERE id = 1").fetchone()
        return row if row else (0, GENESIS)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._thread_lock:
            cur = self._db.cursor()
            cur.row_factory = sqlite3.Row
            return cur.execute(sql, params).fetchall()

    def changed_elsewhere(self) -> bool:
        """Whether another connection committed since the last call (SQLite's data_version)."""
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        changed, self._data_version = version != self._data_version, version
        return changed

    def entry(self, eid: str) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM entries WHERE seq = ?", (entry_seq(eid),))
        return rows[0] if rows else None

    def raw(self) -> sqlite3.Connection:
        """The underlying connection, for `verify` and tests."""
        return self._db


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def referenced_chunks(obj: Any) -> Iterator[str]:
    """Every blob hash named under a "chunks" key anywhere in a record."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "chunks" and isinstance(value, list):
                yield from (v for v in value if isinstance(v, str))
            else:
                yield from referenced_chunks(value)
    elif isinstance(obj, list):
        for item in obj:
            yield from referenced_chunks(item)


def unpack_blob(stored: bytes) -> bytes:
    codec, payload = stored[:1], stored[1:]
    if codec == b"z":
        return zlib.decompress(payload)
    if codec == b"r":
        return bytes(payload)
    raise JournalCorrupt(f"blob has an unknown codec {codec!r}")


_STATUS_OF = {"applied": APPLIED, "failed": FAILED, "undoing": UNDOING, "undone": UNDONE,
              "undo_failed": UNDO_FAILED, "review": NEEDS_REVIEW, "approved": "approved", "rejected": "rejected"}


def index_record(cur: sqlite3.Cursor, record: dict[str, Any]) -> None:
    """Apply one record to the derived index (entries and checkpoints)."""
    kind, seq = record["kind"], record["seq"]
    if kind == "entry":
        cur.execute(
            "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
            (
                seq, entry_id(seq), record["session"], record["actor"], record["action"]["type"],
                record["target"], record["decision"]["verdict"], record["status"], record["time"],
                int(bool(record.get("plan", {}).get("ops"))),
            ),
        )
    elif kind == "checkpoint":
        cur.execute(
            "INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?)",
            (checkpoint_id(seq), seq, record["session"], record.get("label"), record["time"]),
        )
    elif kind == "captured":  # undo data read inside an open transaction, journaled before its commit
        if not isinstance(record.get("entry"), str):
            raise JournalCorrupt(f"record {seq} (captured) names no entry", seq=seq)
    elif kind == "reviewed":
        for eid in record["entries"]:
            cur.execute("UPDATE entries SET reviewed = ? WHERE seq = ?", (record["by"], entry_seq(eid)))
            if cur.rowcount != 1:
                raise JournalCorrupt(f"record {seq} (reviewed) names unknown entry {eid}", seq=seq)
    elif kind in _STATUS_OF:
        status = _STATUS_OF[kind]
        target = entry_seq(record["entry"])
        if kind == "applied":
            cur.execute("UPDATE entries SET status = ?, after_seq = ? WHERE seq = ?", (status, seq, target))
        else:
            cur.execute("UPDATE entries SET status = ? WHERE seq = ?", (status, target))
        if cur.rowcount != 1:
            raise JournalCorrupt(f"record {seq} ({kind}) names unknown entry {record['entry']}", seq=seq)
    else:
        raise JournalCorrupt(f"record {seq} has unknown kind {kind!r}", seq=seq)
