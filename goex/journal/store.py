"""The journal: an append-only, hash-chained record log with content-addressed blobs.

Stored in one SQLite database (`journal.db`, WAL mode) inside the journal folder:

- `records`: the log itself. Each row is one canonical-JSON record; its hash is
  `sha256(previous hash + body)`, so editing, removing or reordering a record breaks the chain.
- `blobs`: before-image content, keyed by the sha256 of the raw bytes, zlib-compressed.
- `head`: the last record's seq and hash, written with every append, so a truncated tail shows.
- `entries`, `checkpoints`: an index derived from the records (status of each entry), kept in the
  same transactions for fast queries; `verify` rebuilds it from the records and compares.

What undo, recovery, approval and review act on is read through `select` and `record`: records are
chain-verified once, from a watermark kept in memory, into an in-memory replay of the index, and
the stored index must agree with that replay before it selects anything. The head is also kept
outside the workspace (`anchor.py`), so a tail rewritten with recomputed hashes shows too.

Every process appends under one exclusive lock (`lock` file, flock), held across an action's
capture, apply and record, so concurrent sessions on one root never interleave inside an action.
Where `Journal.defers` is set (the gym's worlds), an action's `applied` record is written with the
next commit (`Journal.defer`), and the lock stays held until it is: at most DEFER_BOUND seconds,
or not at all when another process waits. Otherwise it is committed before the action returns.
See docs/journal.md for the format.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import sqlite3
import threading
import time
import weakref
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..errors import CompactionRefused, JournalBusy, JournalCorrupt, JournalUnavailable
from .anchor import Anchor
from .read import Reads

FORMAT_VERSION = 1
GENESIS = "0" * 64
CHUNK = 1 << 20  # before-images are stored in 1 MiB content-addressed chunks
#: How long (seconds) a deferred record (an action's `applied`) may wait for the next commit; the
#: journal's lock stays held meanwhile, so no other process acts or recovers before it is written.
DEFER_BOUND = 0.005
_WITH_DEFERRED: "weakref.WeakSet[Journal]" = weakref.WeakSet()  # written out at interpreter exit
_PARSED_KEPT = 4096  # records kept parsed after their verification, for undo to read without parsing again
_PARSED_BYTES = 8 << 20  # ... and at most this much of their text (a record over a 16th of it is not kept)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records(seq INTEGER PRIMARY KEY, body TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blobs(
    id INTEGER PRIMARY KEY, hash TEXT NOT NULL UNIQUE, size INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS head(id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS base(id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash TEXT NOT NULL);
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


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))  # json.dumps with these, made once


def canonical(obj: Any) -> str:
    # ASCII-only: file names that are not UTF-8 (surrogate escapes) survive as \udcXX
    return _CANONICAL.encode(obj)


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
        self.seq: int
        self.hash: str
        self.seq, self.hash = row if row else (0, GENESIS)
        self.start, self.start_hash = self.seq, self.hash
        self.written: list[tuple[int, str, dict[str, Any]]] = []  # (seq, hash, record) appended here
        self.bodies: list[str] = []  # the text of each written record

    def put_blob(self, data: bytes) -> str:
        """Store bytes (at most one chunk) content-addressed; returns their sha256."""
        digest = hashlib.sha256(data).hexdigest()
        if len(data) < 4096:  # stored as it is: one statement, which keeps a row already there
            self._cur.execute("INSERT OR IGNORE INTO blobs(hash, size, data) VALUES (?, ?, ?)",
                              (digest, len(data), b"r" + data))
        elif self._cur.execute("SELECT 1 FROM blobs WHERE hash = ?", (digest,)).fetchone() is None:
            # zlib's set-up costs more than it saves on small chunks: those (above) are stored as they are
            packed = zlib.compress(data, 1)
            stored = b"z" + packed if len(packed) < len(data) else b"r" + data
            # appended in rowid order; only the small hash index takes a random insert
            self._cur.execute("INSERT INTO blobs(hash, size, data) VALUES (?, ?, ?)", (digest, len(data), stored))
        return digest

    def fold(self, upto: int, digest: str, referenced: list[str]) -> int:
        """Remove the records up to `upto` (a `compacted` record naming it was just appended) and the
        blobs not in `referenced`; the chain now goes on from (`upto`, `digest`). Blobs removed."""
        self._cur.execute("DELETE FROM records WHERE seq <= ?", (upto,))
        self._cur.execute("INSERT INTO base VALUES (1, ?, ?) ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, "
                          "hash = excluded.hash", (upto, digest))
        self._cur.execute("DELETE FROM blobs WHERE hash NOT IN (SELECT value FROM json_each(?))",
                          (json.dumps(referenced),))
        return self._cur.rowcount

    def append(self, kind: str, **fields: Any) -> tuple[int, str]:
        """Append one record; returns its (seq, hash)."""
        seq = self.seq + 1
        record = {"seq": seq, "kind": kind, "time": round(time.time(), 6), **fields}
        body = canonical(record)
        digest = chain(self.hash, body)
        self._cur.execute("INSERT INTO records VALUES (?, ?, ?)", (seq, body, digest))
        index_record(self._cur, record)
        self.seq, self.hash = seq, digest
        self.written.append((seq, digest, record))
        self.bodies.append(body)
        return seq, digest


class Journal(Reads):
    """The append-only store of one workspace. Thread-safe; one instance per process and root.

    `Journal(folder)` opens it to append (creating it when missing); `Journal.reader(folder)`
    opens an existing one to read only: no lock is taken and nothing is created."""

    _identity: tuple[int, int] | None  # (dev, ino) of journal.db once set up
    _connection: sqlite3.Connection | None  # set once opened; None once closed

    def __init__(self, folder: str | os.PathLike[str], *, durability: str = "fsync"):
        if durability not in ("fsync", "process"):
            raise ValueError("durability is 'fsync' (survives power loss) or 'process' (survives a killed process)")
        self._setup(folder, durability)
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock_fd = os.open(self.folder / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            # a process waiting for the lock holds this one shared: the holder then keeps nothing back
            self._wait_fd = os.open(self.folder / "lock.waiting", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._connection = sqlite3.connect(
                self.folder / "journal.db", isolation_level=None, check_same_thread=False, timeout=60.0
            )
        except OSError as exc:
            self.close()
            raise JournalUnavailable(f"cannot open the journal in {self.folder}: {exc.strerror}; it needs a "
                                     "writable folder (choose one with journal= / --journal)") from None
        try:
            with self.exclusive():  # a new journal is set up by one process at a time
                new_journal = not (self.folder / "journal.db").exists() or self.db.execute(
                    "SELECT count(*) FROM sqlite_master WHERE name = 'records'").fetchone()[0] == 0
                self.db.execute("PRAGMA journal_mode=WAL")
                self._set_sync(durable=True)
                self.db.executescript(_SCHEMA)
                self.db.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (str(FORMAT_VERSION),))
                version = self.db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()[0]
                self.anchor.open(self.head(), new_journal=new_journal)
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
        self._identity = _identity(self._db_file)

    def _setup(self, folder: str | os.PathLike[str], durability: str) -> None:
        self.folder = Path(folder)
        self._db_file = os.fspath(self.folder / "journal.db")  # checked before every action: made once
        self.durability = durability
        self.readonly = False
        self._thread_lock = threading.RLock()
        self._lock_depth = 0
        self._data_version = -1
        self._version_held = 0  # pid holding the lock without a break since it read `_data_version`; 0: none
        self._checked: dict[str, bytes] = {}
        self._lock_fd = -1
        self._wait_fd = -1
        self._connection = None
        self.anchor = Anchor(self.folder)
        self._replay = Replay()
        self._identity = None
        self._synchronous = ""
        # called after each commit with the head it started from and the records appended
        self.listeners: list[Callable[[int, list[dict[str, Any]]], None]] = []
        # `defer` keeps records for the next commit only when this is set (the gym's worlds): an
        # action's result then survives a killed process only once its record is written
        self.defers = False
        self._deferred: list[tuple[str, dict[str, Any]]] = []  # records for the next commit (`defer`)
        self._deferred_at = 0.0
        self._deferred_pid = 0
        self._holding = False  # the lock is kept past the action for the deferred records
        self._wake = threading.Condition(self._thread_lock)
        self._flusher: threading.Thread | None = None
        self._flusher_idle = False

    @classmethod
    def reader(cls, folder: str | os.PathLike[str]) -> "Journal":
        """The journal in `folder`, to read: reads verify as always, but take no lock (a reader
        never waits for a busy writer) and create nothing. Raises `JournalUnavailable` when there
        is no journal there."""
        journal = cls.__new__(cls)
        journal._setup(folder, "process")
        journal.readonly = True
        path = journal.folder / "journal.db"
        if not path.is_file():
            raise JournalUnavailable(f"there is no journal in {journal.folder}: nothing was recorded there yet "
                                     "(give the journal folder with --journal if it is elsewhere)")
        try:
            journal._connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                          check_same_thread=False, timeout=60.0)
            journal.db.execute("SELECT count(*) FROM records").fetchone()
        except sqlite3.DatabaseError as exc:
            journal.close()
            raise JournalCorrupt(f"journal database {path} cannot be read: {exc}") from None
        journal.anchor.open_readonly()
        return journal

    def close(self) -> None:
        if getattr(self, "_wake", None) is not None:
            with self._wake:
                try:
                    self.flush()
                except Exception:  # noqa: BLE001 - unwritten, the entry stays pending: recovery settles it
                    pass
                self._deferred.clear()
                self._wake.notify_all()
        if getattr(self, "anchor", None) is not None:
            self.anchor.close()
        if getattr(self, "_connection", None) is not None:
            self.db.close()
            self._connection = None  # closed: any later use fails loudly
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        if self._wait_fd >= 0:
            os.close(self._wait_fd)
            self._wait_fd = -1

    def __del__(self) -> None:
        """A journal nobody closed (its runtime dropped without `close`): its own descriptors go
        with it; SQLite closes its connection itself. A deferred record keeps its journal alive
        (the helper thread holds it) until it is written."""
        for name in ("_lock_fd", "_wait_fd"):
            fd = getattr(self, name, -1)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, -1)

    # -- locking -----------------------------------------------------------------------------

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the workspace lock: no other process or thread appends or acts meanwhile.

        Waiting is a blocking flock(), so waiters queue in the kernel and take turns with a busy
        process; the kernel drops the lock of a process that dies.
        """
        with self._thread_lock:
            if self._lock_depth == int(self._holding):  # taken now, or kept only for deferred records
                if self._lock_fd < 0:
                    raise JournalUnavailable("this journal was opened to read only; open it with a goex.Runtime to act"
                                             if self.readonly else "this runtime is closed; open a new goex.Runtime")
                if not self._holding:
                    self._take_lock()
                if self._identity is not None and _identity(self._db_file) != self._identity:
                    self._deferred.clear()  # nowhere to write them any more
                    self._holding, self._lock_depth, self._version_held = False, 0, 0
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                    raise JournalUnavailable(f"the journal {self.folder / 'journal.db'} was deleted or replaced "
                                             "while this runtime had it open; nothing more is recorded there")
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0:
                    self._version_held = 0  # others may commit once it goes
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _take_lock(self) -> None:
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # busy: say so (see `defer`), then queue in the kernel
            fcntl.flock(self._wait_fd, fcntl.LOCK_SH)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            finally:
                fcntl.flock(self._wait_fd, fcntl.LOCK_UN)

    def _others_waiting(self) -> bool:
        """Whether another process (or runtime) waits for the lock: it holds `lock.waiting` shared."""
        try:
            fcntl.flock(self._wait_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(self._wait_fd, fcntl.LOCK_UN)
        return False

    # -- writing -----------------------------------------------------------------------------

    @contextmanager
    def transaction(self, *, durable: bool) -> Iterator[Transaction]:
        """Append atomically. `durable=True` makes the records survive power loss (in 'fsync' mode)
        before this returns; otherwise they survive a killed process but may wait for the next sync."""
        with self.exclusive():
            try:
                self._set_sync(durable=durable)
                cur = self.db.cursor()
                cur.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise JournalUnavailable(f"cannot write the journal in {self.folder}: {exc}") from None
            try:
                tx = Transaction(self, cur)
                folded = len(self._deferred)
                for kind, fields in self._deferred[:folded]:  # what an earlier action left for this commit
                    tx.append(kind, **fields)
                yield tx
                cur.execute(
                    "INSERT INTO head VALUES (1, ?, ?) "
                    "ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                    (tx.seq, tx.hash),
                )
                cur.execute("COMMIT")
                if tx.seq != tx.start:  # still under the lock: the anchor follows the head exactly
                    self.anchor.write(tx.seq, tx.hash)
            except sqlite3.OperationalError as exc:  # disk full, read-only file system, I/O error
                if self.db.in_transaction:
                    cur.execute("ROLLBACK")
                raise JournalUnavailable(f"cannot write the journal in {self.folder}: {exc}; nothing of this "
                                         "step was recorded or applied") from None
            except BaseException:
                if self.db.in_transaction:
                    cur.execute("ROLLBACK")
                raise
            if folded:
                del self._deferred[:folded]
                self._release_held()
            if tx.seq != tx.start:  # committed: what follows may not fail the transaction
                self._committed(tx)

    def append(self, kind: str, *, durable: bool = False, **fields: Any) -> tuple[int, str]:
        with self.transaction(durable=durable) as tx:
            return tx.append(kind, **fields)

    def defer(self, kind: str, *, settled: bool = False, **fields: Any) -> None:
        """Append a record with this journal's next commit instead of a commit of its own: an
        action's `applied` record rides with the next action's `entry`. Call it holding the lock
        (`exclusive`). Unless `defers` is set, and when another process or runtime waits for the
        lock, the record is written at once instead (turns stay fair). Otherwise the lock stays
        held until it is written: by the next commit, any read of the index (`select`, `head`,
        `query`, `snapshot`), `flush`, `close`, interpreter exit, or a helper thread once
        DEFER_BOUND seconds passed without a commit. No other process can act, undo or recover
        meanwhile; a process killed before it is written leaves its entry pending, and recovery
        settles it as any action interrupted before its record. `settled`: recovery keeps such an
        entry as applied (`Adapter.settles`), so the record waits even where `defers` is off."""
        with self._thread_lock:
            if self._lock_depth == 0:
                raise RuntimeError("Journal.defer is called holding the journal's lock")
            if not (self.defers or settled) or self._others_waiting():  # written now; the lock goes after the action
                self.append(kind, **fields)
                return
            self._deferred.append((kind, {"time": round(time.time(), 6), **fields}))
            self._deferred_at = time.monotonic()
            if not self._holding:
                self._holding = True
                self._lock_depth += 1  # `exclusive` does not unlock while this is counted
                self._deferred_pid = os.getpid()
                _WITH_DEFERRED.add(self)
                if self._flusher is None:
                    self._flusher = threading.Thread(target=self._flush_when_idle, name="goex-journal-flush",
                                                     daemon=True)
                    self._flusher.start()
                elif self._flusher_idle:  # it waits for a deferral: wake it (otherwise it wakes by itself)
                    self._wake.notify()

    def flush(self) -> None:
        """Write the deferred records now (one commit), and let the lock go if nothing else holds it."""
        with self._thread_lock:
            if not self._deferred or self._connection is None or self.db.in_transaction:
                return
            if self._deferred_pid != os.getpid():  # a forked child: the records are its parent's to write
                self._deferred.clear()
                self._holding = False
                return
            with self.transaction(durable=False):
                pass

    def _release_held(self) -> None:
        if self._holding and not self._deferred:
            self._holding = False
            self._lock_depth -= 1  # called inside `exclusive`: the lock goes when it ends

    def _flush_when_idle(self) -> None:
        """The helper thread: writes deferred records DEFER_BOUND after the last action left them;
        ends after a second with nothing deferred."""
        with self._wake:
            while self._connection is not None:
                if not self._deferred:
                    self._flusher_idle = True
                    woken = self._wake.wait(1.0)
                    self._flusher_idle = False
                    if not woken and not self._deferred:
                        break
                    continue
                left = self._deferred_at + DEFER_BOUND - time.monotonic()
                if left > 0:
                    self._wake.wait(left)
                    continue
                try:
                    self.flush()
                except Exception:  # noqa: BLE001 - tried again after the bound; the lock stays held meanwhile
                    self._deferred_at = time.monotonic()
            self._flusher = None

    def _committed(self, tx: Transaction) -> None:
        """Records this process just committed: the verified replay takes them from memory when it
        stood exactly where the transaction began (the chain from there is the one just computed,
        so reading them back would vouch for nothing more); then the listeners see them."""
        try:
            self._replay.vouch((tx.start, tx.start_hash), tx.written, tx.bodies)
        except Exception:  # noqa: BLE001 - the replay stays where it was: the records are verified when read
            pass
        for listener in self.listeners:
            listener(tx.start, [record for _, _, record in tx.written])

    def _set_sync(self, *, durable: bool) -> None:
        level = "FULL" if durable and self.durability == "fsync" else "NORMAL"
        if level != self._synchronous:
            self.db.execute(f"PRAGMA synchronous={level}")
            self._synchronous = level

    # -- reading -----------------------------------------------------------------------------

    def read_blob(self, digest: str) -> bytes:
        if digest in self._checked:
            return self._checked[digest]
        row = self.db.execute("SELECT data FROM blobs WHERE hash = ?", (digest,)).fetchone()
        return _intact(digest, row[0] if row else None)

    def check_blobs(self, obj: Any) -> None:
        """Raise `JournalCorrupt` unless every blob `obj` references is present and intact.
        Checked blobs (up to 8 MiB) are kept for `read_blob` until the next check: undo reads
        them right after, some more than once (a range's changesets are tried, then applied)."""
        self._checked.clear()
        room = 8 << 20
        wanted = sorted(set(referenced_chunks(obj)))
        for i in range(0, len(wanted), 500):  # read together: one query for a range's hundreds
            part = wanted[i:i + 500]
            with self._thread_lock:
                stored = dict(self.db.execute(f"SELECT hash, data FROM blobs WHERE hash IN "
                                              f"({', '.join('?' * len(part))})", part).fetchall())
            for digest in part:
                data = _intact(digest, stored.get(digest))
                if len(data) <= room:
                    self._checked[digest] = data
                    room -= len(data)

    def record(self, seq: int) -> dict[str, Any]:
        """One record, exactly as the hash chain vouches for it (verified up to it first if needed)."""
        with self._thread_lock:
            if seq > self._replay.seq:
                self._verified()
            row = self.db.execute("SELECT body FROM records WHERE seq = ?", (seq,)).fetchone() \
                if 0 < seq <= self._replay.seq else None
            return self._vouched(seq, row[0] if row else None)

    def records_at(self, seqs: Iterable[int]) -> dict[int, dict[str, Any]]:
        """Several records by seq, each as `record` returns it, read together (undo of a range)."""
        wanted = sorted(set(seqs))
        out: dict[int, dict[str, Any]] = {}
        with self._thread_lock:
            if wanted and wanted[-1] > self._replay.seq:
                self._verified()
            hashes, take = self._replay.hashes, self._replay.take_with_text
            for i in range(0, len(wanted), 500):
                part = [seq for seq in wanted[i:i + 500] if 0 < seq <= self._replay.seq]
                bodies = dict(self.db.execute(f"SELECT seq, body FROM records WHERE seq IN "
                                              f"({', '.join('?' * len(part))})", part).fetchall())
                for seq in wanted[i:i + 500]:
                    body, parsed = bodies.get(seq), take(seq)
                    # the very text verified (or written) before, under the same chain hash: its
                    # hash is that one without computing it again, and it parses to that record
                    if parsed is not None and body == parsed[2] and parsed[0] == hashes.get(seq):
                        out[seq] = parsed[1]
                    else:
                        out[seq] = self._vouched(seq, body, parsed)
        return out

    def _vouched(self, seq: int, body: str | None,
                 parsed: tuple[str, dict[str, Any], str] | None = None) -> dict[str, Any]:
        """The record `body` stored at `seq`, once its chain hash matches the verified one. `parsed`:
        the record as the replay parsed it when it verified it, with the hash it had then; when the
        body read now has that same hash it is that same text, and is not parsed again."""
        if body is None:
            raise JournalCorrupt(f"record {seq} is missing from the journal; run `goex verify`", seq=seq)
        hashes = self._replay.hashes
        digest = hashes.get(seq)
        if seq - 1 not in hashes or chain(hashes[seq - 1], body) != digest:
            raise JournalCorrupt(f"record {seq} does not match its hash chain (edited); nothing was undone "
                                 "from it. Run `goex verify`", seq=seq)
        if parsed is not None and parsed[0] == digest:
            return parsed[1]
        record: dict[str, Any] = json.loads(body)
        return record

    def record_hash(self, seq: int) -> str:
        """The chain hash of record `seq` as verified: sha256 of the previous record's hash and this
        record's canonical JSON (`record_hash(0)` is the genesis value)."""
        with self._thread_lock:
            if seq > self._replay.seq:
                self._verified()
            if not 0 <= seq <= self._replay.seq:
                raise JournalCorrupt(f"record {seq} is missing from the journal; run `goex verify`", seq=seq)
            return self._replay.hashes[seq]

    def select(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """Rows of the index (`entries`, `checkpoints`) as the verified records derive them.

        The query runs on the stored index and on the in-memory replay of the verified records,
        in one snapshot; any difference (an index row edited, added or removed) is JournalCorrupt,
        so an edited `status`, `undoable` or `after_seq` can never steer undo or recovery."""
        with self._thread_lock:
            with self.snapshot():
                self._verified()
                stored = self.db.execute(sql, params).fetchall()
            cur = self._replay.db.cursor()
            cur.row_factory = sqlite3.Row
            rows = cur.execute(sql, params).fetchall()
        derived = [tuple(r) for r in rows]
        if derived != stored:
            shorter = min(len(derived), len(stored))
            at = next((i for i, (a, b) in enumerate(zip(derived, stored, strict=False)) if a != b), shorter)
            near = (stored[at] if at < len(stored) else derived[at])[0]
            raise JournalCorrupt(f"the journal's index disagrees with its records (at {near}): it was edited; "
                                 "nothing was done from it. Run `goex verify`")
        return rows

    def captured(self, eid: str) -> int | None:
        """The seq of the verified `captured` record of entry `eid`, if there is one."""
        with self._thread_lock:
            if eid not in self._replay.captured:
                self._verified()
            return self._replay.captured.get(eid)

    def verified_head(self) -> tuple[int, str]:
        """The head as verified: the chain from the first record, the stored head and the anchor agree."""
        with self._thread_lock:
            self._verified()
            return self._replay.seq, self._replay.hash

    def _verified(self) -> None:
        """Bring the replay up to the stored head: verify the new records' chain from the watermark,
        then check the watermark against the head and the anchor kept outside the workspace."""
        with self.snapshot():
            self._verify_new()

    def _verify_new(self) -> None:
        self._replay.index_vouched()
        kept = self.anchor.read()  # before the snapshot's first read: the anchor never runs ahead of it
        row = self.db.execute("SELECT seq, hash FROM head WHERE id = 1").fetchone()
        head = tuple(row) if row else (0, GENESIS)
        replay = self._replay
        if head[0] < replay.seq or (head[0] == replay.seq and head[1] != replay.hash):
            raise JournalCorrupt(f"the journal's head went from record {replay.seq} to record {head[0]} "
                                 "(truncated or rewritten); nothing was done from it. Run `goex verify`", seq=head[0])
        base = self.base()
        if replay.seq == 0 and base[0] > 0:  # a journal compacted before this replay began: from its base
            replay.start(base)
        if head[0] > replay.seq:
            replay.extend(self.db.execute("SELECT seq, body, hash FROM records WHERE seq > ? AND seq <= ? "
                                           "ORDER BY seq", (replay.seq, head[0])))
            if (replay.seq, replay.hash) != head:
                raise JournalCorrupt(f"the journal's head says record {head[0]} but its records end at record "
                                     f"{replay.seq} (truncated or rewound). Run `goex verify`", seq=replay.seq + 1)
        if base != replay.compacted:
            raise JournalCorrupt(f"the journal starts after record {base[0]} but no compaction record vouches for "
                                 f"that (records removed). Run `goex verify`", seq=base[0])
        if kept is not None:
            check_anchor(kept, replay.seq, replay.hashes.get, str(self.anchor.path))

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """One read transaction: the records, the head and the index are read as of one commit."""
        with self._thread_lock:
            if self.db.in_transaction:
                yield
                return
            self.flush()  # deferred records first: every read sees what this process did
            self.db.execute("BEGIN")
            try:
                yield
            finally:
                self.db.execute("COMMIT")

    def records(self, after: int = 0, *, flush: bool = True) -> Iterator[tuple[int, str, str]]:
        """(seq, body, hash) of the stored records after `after`, unverified; deferred records are
        written first unless `flush` is False (they are then not among them)."""
        if flush:
            self.flush()
        yield from self.db.execute("SELECT seq, body, hash FROM records WHERE seq > ? ORDER BY seq", (after,))

    def head(self) -> tuple[int, str]:
        self.flush()
        row = self.db.execute("SELECT seq, hash FROM head WHERE id = 1").fetchone()
        return row if row else (0, GENESIS)

    def base(self) -> tuple[int, str]:
        """The last record folded away by compaction and its hash: the chain goes on from it."""
        try:
            row = self.db.execute("SELECT seq, hash FROM base WHERE id = 1").fetchone()
        except sqlite3.OperationalError:  # a journal from before compaction, opened to read only
            row = None
        return (row[0], row[1]) if row else (0, GENESIS)

    # -- compaction --------------------------------------------------------------------------

    def compact(self, before: int) -> dict[str, Any]:
        """Fold every record before seq `before` (at most the head + 1: all of them) into one
        `compacted` record appended to the chain,
        which names the last folded record and its hash (the chain goes on verifiably from it), and
        remove the blobs no remaining record references. Refused (`CompactionRefused`) while an
        entry before that point is still open (applied and undoable but not accepted, pending,
        undoing, awaiting approval, needing review) or a later record still names one."""
        with self.exclusive():
            head, _ = self.verified_head()
            base = self.base()[0]
            if not base + 1 < before <= head + 1:
                raise CompactionRefused(f"nothing to compact before record {before}: the journal holds records "
                                        f"{base + 1}..{head}; name an entry or checkpoint after its first record")
            self._refuse_open(before)
            later = [json.loads(body) for _, body, _ in self.records(before - 1)]
            for record in later:
                early = [e for e in _names(record) if entry_seq(e) < before]
                if early:
                    raise CompactionRefused(f"record {record['seq']} ({record['kind']}) after the point names entry "
                                            f"{early[0]} before it; compact before a later entry or checkpoint")
            folded = {r[0]: r[1] for r in self.select(
                "SELECT status, count(*) FROM entries WHERE seq < ? GROUP BY status ORDER BY status", (before,))}
            referenced = sorted({c for record in later for c in referenced_chunks(record)})
            upto, digest = before - 1, self._replay.hashes[before - 1]
            with self.transaction(durable=True) as tx:
                tx.append("compacted", upto=upto, hash=digest, records=upto - base, entries=folded)
                blobs = tx.fold(upto, digest, referenced)
            return {"upto": upto, "records": upto - base, "entries": folded, "blobs_removed": blobs}

    def append_and_compact(self, kind: str, records: list[dict[str, Any]]) -> dict[str, Any] | None:
        """Append `kind` records (the `undone` records of a rollback) and, in the same commit, fold
        the whole history up to them into a `compacted` record, as `compact` would right after
        them: only when nothing but the entries these records close is open (then it returns what
        was folded, as `compact` does); otherwise the records alone are appended (None). Call it
        holding the lock, with nothing deferred."""
        closing = sorted({entry_seq(e) for fields in records for e in named_entries({"kind": kind, **fields})})
        with self.exclusive():
            self.flush()
            head = self.verified_head()
            base = self.base()[0]
            done = "seq IN (SELECT value FROM json_each(?))"
            still_open = self.select(
                f"SELECT id FROM entries WHERE NOT ({done} OR status IN ('undone', 'denied', 'failed', 'rejected', "
                "'approved') OR (status = 'applied' AND (undoable = 0 OR reviewed IS NOT NULL))) LIMIT 1",
                (json.dumps(closing),))
            folded = {r[0]: r[1] for r in self.select(
                f"SELECT CASE WHEN {done} THEN 'undone' ELSE status END AS state, count(*) FROM entries "
                "GROUP BY state ORDER BY state", (json.dumps(closing),))} if not still_open else {}
            with self.transaction(durable=True) as tx:
                for fields in records:
                    tx.append(kind, **fields)
                if still_open or not records or (tx.start, tx.start_hash) != head:
                    return None
                upto, digest = tx.seq, tx.hash
                tx.append("compacted", upto=upto, hash=digest, records=upto - base, entries=folded)
                blobs = tx.fold(upto, digest, [])  # no record after the point names a before-image
            return {"upto": upto, "records": upto - base, "entries": folded, "blobs_removed": blobs}

    def _refuse_open(self, before: int) -> None:
        open_rows = self.select(
            "SELECT id, status FROM entries WHERE seq < ? AND NOT (status IN ('undone', 'denied', 'failed', "
            "'rejected', 'approved') OR (status = 'applied' AND (undoable = 0 OR reviewed IS NOT NULL))) "
            "ORDER BY seq LIMIT 1", (before,))
        if open_rows:
            eid, status = open_rows[0]["id"], open_rows[0]["status"]
            what = {"applied": "applied and can still be undone: undo it, or accept its session's review first",
                    "awaiting_approval": "awaiting approval: approve or reject it first",
                    "needs_review": "needs review: settle it first"}.get(status, f"{status}: run `goex recover` first")
            raise CompactionRefused(f"cannot compact history holding entry {eid}: it is {what}")

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """The stored index as it is, unverified: for figures only; what acts goes through `select`."""
        with self._thread_lock:
            self.flush()
            cur = self.db.cursor()
            cur.row_factory = sqlite3.Row
            return cur.execute(sql, params).fetchall()

    def changed_elsewhere(self) -> bool:
        """Whether another connection committed since the last call (SQLite's data_version). Not
        read again while this process has held the lock without a break since it last read it
        (kept for deferred records between actions): no other process commits without the lock."""
        pid = os.getpid()
        if self._lock_depth and self._version_held == pid:
            return False
        version = self.db.execute("PRAGMA data_version").fetchone()[0]
        changed, self._data_version = version != self._data_version, version
        self._version_held = pid if self._lock_depth else 0
        return changed

    def raw(self) -> sqlite3.Connection:
        """The underlying connection, for `verify` and tests."""
        self.flush()
        return self.db

    @property
    def db(self) -> sqlite3.Connection:
        if self._connection is None:
            raise JournalUnavailable(f"the journal in {self.folder} is closed")
        return self._connection


class Replay:
    """What the hash chain vouches for: the index rebuilt in memory from verified records, the hash
    of every verified record still in the journal, the verified watermark (`seq`, `hash`), and the
    base the last compaction record names (`compacted`; the chain goes on from it)."""

    def __init__(self) -> None:
        self.db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        self.db.executescript(_SCHEMA)
        self.seq, self.hash = 0, GENESIS
        self.hashes: dict[int, str] = {0: GENESIS}  # seq -> hash
        self.captured: dict[str, int] = {}  # entry id -> seq of its `captured` record
        self.compacted: tuple[int, str] = (0, GENESIS)
        self.unindexed: list[dict[str, Any]] = []  # vouched records whose index rows are not written yet
        # the newest records as parsed when verified, with their hash and text: `records_at`
        # takes each one (at most once, so no caller shares a dict) instead of parsing it again
        self.parsed: dict[int, tuple[str, dict[str, Any], str]] = {}
        self.parsed_bytes = 0

    def index_vouched(self) -> None:
        """Write the index rows of the records `vouch` took (before anything reads the index)."""
        if not self.unindexed:
            return
        cur = self.db.cursor()
        cur.execute("BEGIN")
        try:
            index_records(cur, self.unindexed)
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")
        self.unindexed = []

    def start(self, base: tuple[int, str]) -> None:
        """Begin after the records compaction folded away (checked once a compaction record names it)."""
        self.seq, self.hash = base
        self.hashes = {base[0]: base[1]}

    def extend(self, rows: Iterable[tuple[int, str, str]]) -> None:
        """Verify records following the watermark and index them; all or nothing."""
        seq, prev = self.seq, self.hash
        hashes: dict[int, str] = {}
        captured: dict[str, int] = {}
        parsed: list[tuple[int, tuple[str, dict[str, Any], str]]] = []
        compacted = self.compacted
        cur = self.db.cursor()
        cur.execute("BEGIN")
        try:
            for rseq, body, digest in rows:
                if rseq != seq + 1:
                    raise JournalCorrupt(f"records {seq + 1}..{rseq - 1} are missing from the journal (deleted). "
                                         "Run `goex verify`", seq=seq + 1)
                if chain(prev, body) != digest:
                    raise JournalCorrupt(f"record {rseq} does not match its hash chain (edited); nothing was done "
                                         "from it. Run `goex verify`", seq=rseq)
                record = _parse(rseq, body)
                try:
                    index_record(cur, record)
                except (KeyError, TypeError, AttributeError, sqlite3.DatabaseError) as exc:
                    raise JournalCorrupt(f"record {rseq} is malformed ({exc}). Run `goex verify`", seq=rseq) from None
                if record["kind"] == "captured":
                    captured.setdefault(record["entry"], rseq)
                elif record["kind"] == "compacted":
                    compacted = (record["upto"], record["hash"])
                hashes[rseq] = digest
                if len(body) <= _PARSED_BYTES >> 4:
                    parsed.append((rseq, (digest, record, body)))
                seq, prev = rseq, digest
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        self.hashes.update(hashes)
        self._keep(parsed)
        self.captured.update(captured)
        self.seq, self.hash = seq, prev
        if compacted != self.compacted:  # what was folded away is forgotten here too: memory stays bounded
            self._forget_upto(compacted)

    def _keep(self, parsed: list[tuple[int, tuple[str, dict[str, Any], str]]]) -> None:
        """Keep `parsed` (newer than every record kept), then drop the oldest kept records while
        there are more than `_PARSED_KEPT` of them or more than `_PARSED_BYTES` of their text."""
        for seq, item in parsed[-_PARSED_KEPT:]:
            self.parsed[seq] = item
            self.parsed_bytes += len(item[2])
        while self.parsed and (len(self.parsed) > _PARSED_KEPT or self.parsed_bytes > _PARSED_BYTES):
            self.parsed_bytes -= len(self.parsed.pop(next(iter(self.parsed)))[2])  # the oldest: seqs only grow

    def take(self, seq: int) -> tuple[str, dict[str, Any]] | None:
        """Record `seq` as parsed when verified, with its hash then, if kept; it is kept no longer."""
        item = self.take_with_text(seq)
        return None if item is None else (item[0], item[1])

    def take_with_text(self, seq: int) -> tuple[str, dict[str, Any], str] | None:
        """As `take`, with the record's text as it was verified (or written) too."""
        item = self.parsed.pop(seq, None)
        if item is not None:
            self.parsed_bytes -= len(item[2])
        return item

    def vouch(self, start: tuple[int, str], written: list[tuple[int, str, dict[str, Any]]],
              bodies: list[str] | None = None) -> None:
        """Take records this process appended and committed right after `start` from memory, when
        the watermark is exactly `start` (their index rows wait for the next verified read, and
        they are kept as parsed, with their text (`bodies`), as `extend` keeps what it verifies:
        each is the record its text was encoded from); otherwise (or for a compaction) they are
        verified from the journal when next read."""
        if (self.seq, self.hash) != start or not written \
                or any(r["kind"] == "compacted" for _, _, r in written[:-1]):
            return
        compacted = written[-1][2] if written[-1][2]["kind"] == "compacted" else None
        if compacted is not None and not (isinstance(compacted.get("upto"), int) and start[0] <= compacted["upto"]
                                          and compacted.get("hash") == self._hash_at(compacted["upto"], written)):
            return  # not the fold of what this commit began from: verified from the journal instead
        self.unindexed.extend(record for _, _, record in written)
        if bodies is not None:
            self._keep([(seq, (digest, record, body))
                        for (seq, digest, record), body in zip(written, bodies, strict=True)
                        if len(body) <= _PARSED_BYTES >> 4])
        for seq, digest, record in written:
            self.hashes[seq] = digest
            if record["kind"] == "captured":
                self.captured.setdefault(record["entry"], seq)
        self.seq, self.hash = written[-1][0], written[-1][1]
        if compacted is not None:  # what was folded away is forgotten here too, as `extend` does
            self._forget_upto((compacted["upto"], compacted["hash"]))

    def _hash_at(self, seq: int, written: list[tuple[int, str, dict[str, Any]]]) -> str | None:
        """The hash of record `seq`: one of `written`, or one verified already."""
        return next((digest for s, digest, _ in written if s == seq), None) or self.hashes.get(seq)

    def _forget_upto(self, compacted: tuple[int, str]) -> None:
        self.compacted = compacted
        self.hashes = {s: h for s, h in self.hashes.items() if s >= compacted[0]}
        self.captured = {e: s for e, s in self.captured.items() if s > compacted[0]}
        self.parsed = {s: p for s, p in self.parsed.items() if s > compacted[0]}
        self.parsed_bytes = sum(len(p[2]) for p in self.parsed.values())


def _parse(seq: int, body: str) -> dict[str, Any]:
    try:
        record = json.loads(body)
    except json.JSONDecodeError:
        raise JournalCorrupt(f"record {seq}: body is not JSON (edited). Run `goex verify`", seq=seq) from None
    if not isinstance(record, dict) or record.get("seq") != seq or not isinstance(record.get("kind"), str):
        raise JournalCorrupt(f"record {seq} is not a record stored at {seq} (edited or reordered)", seq=seq)
    return record


def _intact(digest: str, stored: bytes | None) -> bytes:
    """The bytes of the blob `digest` as stored, once they are found to hash to it."""
    if stored is None:
        raise JournalCorrupt(f"before-image blob {digest[:16]} is missing from the journal; run `goex verify`")
    data = unpack_blob(stored)
    if hashlib.sha256(data).hexdigest() != digest:
        raise JournalCorrupt(f"before-image blob {digest[:16]} does not match its hash; run `goex verify`")
    return data


def check_anchor(kept: tuple[int, str], last_seq: int, hash_at: Callable[[int], str | None], where: str) -> None:
    """The journal must still hold the anchored record, with the anchored hash."""
    seq, digest = kept
    if seq > last_seq:
        raise JournalCorrupt(f"the journal ends at record {last_seq} but its anchor ({where}) is at record {seq}: "
                             f"records {last_seq + 1}..{seq} were removed (truncated). If you restored an older "
                             "journal on purpose, delete the anchor file to anchor it anew", seq=last_seq + 1)
    if hash_at(seq) != digest:
        raise JournalCorrupt(f"record {seq} no longer has the hash its anchor ({where}) kept: the journal was "
                             f"rewritten at or before record {seq}; nothing was done from it", seq=seq)


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def referenced_chunks(obj: Any) -> Iterator[str]:
    """Every blob hash named under a "chunks" key anywhere in a record."""
    stack = [obj]
    pop, push = stack.pop, stack.append
    while stack:  # a loop, not nested generators: undo of a range walks hundreds of plans
        item = pop()
        if isinstance(item, dict):
            chunks = item.get("chunks")
            if isinstance(chunks, list):
                yield from (v for v in chunks if isinstance(v, str))
            for key, value in item.items():
                if isinstance(value, (dict, list)) and not (key == "chunks" and isinstance(value, list)):
                    push(value)
        elif isinstance(item, list):
            for value in item:
                if isinstance(value, (dict, list)):
                    push(value)


def unpack_blob(stored: bytes) -> bytes:
    codec, payload = stored[:1], stored[1:]
    if codec == b"z":
        return zlib.decompress(payload)
    if codec == b"r":
        return bytes(payload)
    raise JournalCorrupt(f"blob has an unknown codec {codec!r}")


_STATUS_OF = {"applied": APPLIED, "failed": FAILED, "undoing": UNDOING, "undone": UNDONE,
              "undo_failed": UNDO_FAILED, "review": NEEDS_REVIEW, "approved": "approved", "rejected": "rejected"}


_RANGE_KINDS = ("undoing", "undone")  # records that may name a range of entries (a coalesced undo)


def _named(record: dict[str, Any], range_allowed: bool) -> list[str]:
    """The entries a status record is about: `entry`, or for a coalesced undo `entries` (a list)."""
    if range_allowed and "entries" in record:
        eids = record["entries"]
        if not isinstance(eids, list) or not eids or not all(isinstance(e, str) for e in eids) \
                or "entry" in record or len(set(eids)) != len(eids):
            raise JournalCorrupt(f"record {record['seq']} ({record['kind']}) names its entries wrongly",
                                 seq=record["seq"])
        return eids
    return [record["entry"]]


def _names(record: dict[str, Any]) -> list[str]:
    """Every entry a record names (its own status records, captures, reviews)."""
    if record.get("kind") == "reviewed" and isinstance(record.get("entries"), list):
        return [e for e in record["entries"] if isinstance(e, str)]
    return named_entries(record)


def named_entries(record: dict[str, Any]) -> list[str]:
    """The entry ids a record is about (none for records about no entry)."""
    if record.get("kind") in _RANGE_KINDS and isinstance(record.get("entries"), list):
        return list(record["entries"])
    return [record["entry"]] if isinstance(record.get("entry"), str) else []


def index_records(cur: sqlite3.Cursor, records: list[dict[str, Any]]) -> None:
    """Apply records, in order, to the derived index, as `index_record` does one by one: an entry
    and the `applied` record that follows it become one row, and the rows go in together (the
    index of an episode's hundreds of records, written at once when undo first reads it)."""
    rows: dict[int, list[Any]] = {}  # entry rows not inserted yet, by seq

    def insert() -> None:
        cur.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)", list(rows.values()))
        rows.clear()

    for record in records:
        kind, seq = record["kind"], record["seq"]
        if kind == "entry":
            rows[seq] = [seq, entry_id(seq), record["session"], record["actor"], record["action"]["type"],
                         record["target"], record["decision"]["verdict"], record["status"], record["time"],
                         int(bool(record.get("plan", {}).get("ops"))), None]
            continue
        if kind == "captured" and isinstance(record.get("entry"), str):
            continue
        if kind == "applied" and isinstance(record.get("entry"), str) and entry_seq(record["entry"]) in rows:
            row = rows[entry_seq(record["entry"])]
            row[7], row[10] = APPLIED, seq
            continue
        if rows:
            insert()
        index_record(cur, record)
    if rows:
        insert()


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
    elif kind == "compacted":  # the history up to `upto` was folded into this record
        upto = record["upto"]
        if not isinstance(upto, int) or isinstance(upto, bool) or not 0 < upto < seq \
                or not isinstance(record.get("hash"), str):
            raise JournalCorrupt(f"record {seq} (compacted) names no valid base", seq=seq)
        cur.execute("DELETE FROM entries WHERE seq <= ?", (upto,))
        cur.execute("DELETE FROM checkpoints WHERE seq <= ?", (upto,))
    elif kind == "cost":  # charged outside the policy (the gym's costs): read by the audit viewer
        if not isinstance(record.get("session"), str) or isinstance(record.get("cost"), bool) \
                or not isinstance(record.get("cost"), (int, float)):
            raise JournalCorrupt(f"record {seq} (cost) names no session or amount", seq=seq)
    elif kind == "reviewed":
        for eid in record["entries"]:
            cur.execute("UPDATE entries SET reviewed = ? WHERE seq = ?", (record["by"], entry_seq(eid)))
            if cur.rowcount != 1:
                raise JournalCorrupt(f"record {seq} (reviewed) names unknown entry {eid}", seq=seq)
    elif kind in _STATUS_OF:
        status = _STATUS_OF[kind]
        eids = _named(record, kind in _RANGE_KINDS)
        seqs = [entry_seq(e) for e in eids]
        if kind == "applied":
            cur.execute("UPDATE entries SET status = ?, after_seq = ? WHERE seq = ?", (status, seq, seqs[0]))
        else:  # a coalesced undo names hundreds: one statement for them all
            cur.execute(f"UPDATE entries SET status = ? WHERE seq IN ({', '.join('?' * len(seqs))})", (status, *seqs))
        if cur.rowcount != len(seqs):
            known = {r[0] for r in cur.execute(f"SELECT seq FROM entries WHERE seq IN ({', '.join('?' * len(seqs))})",
                                               seqs)}
            unknown = next((e for e, s in zip(eids, seqs, strict=True) if s not in known), eids[0])
            raise JournalCorrupt(f"record {seq} ({kind}) names unknown entry {unknown}", seq=seq)
    else:
        raise JournalCorrupt(f"record {seq} has unknown kind {kind!r}", seq=seq)


def _flush_at_exit() -> None:
    for journal in list(_WITH_DEFERRED):
        try:
            journal.flush()
        except Exception:  # noqa: BLE001 - left pending: recovery settles it
            pass


atexit.register(_flush_at_exit)
