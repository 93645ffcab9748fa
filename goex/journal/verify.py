"""Verification of a journal: the hash chain, the head, the anchor, the derived index and every blob."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import zlib
from dataclasses import dataclass
from typing import Any

from ..errors import JournalCorrupt
from .store import (
    _SCHEMA,
    GENESIS,
    Journal,
    chain,
    check_anchor,
    entry_id,
    index_record,
    referenced_chunks,
    unpack_blob,
)


@dataclass(frozen=True)
class VerifyReport:
    records: int
    blobs: int
    head_seq: int
    head_hash: str
    warnings: tuple[str, ...] = ()  # sound, but less is vouched for than usual (say, no anchor yet)

    @property
    def head(self) -> str:
        """`SEQ:HASH`: keep it elsewhere and pass it to `verify --expect` to detect truncation."""
        return f"{self.head_seq}:{self.head_hash}"


def verify(journal: Journal, *, expect_head: str | None = None) -> VerifyReport:
    """Check everything; raise `JournalCorrupt` naming the first bad record or blob.

    The journal must also still hold the head anchored outside the workspace (see anchor.py): a
    journal rewritten consistently from any point, or truncated, fails here."""
    kept = journal.anchor.read()  # before the snapshot's first read: the anchor never runs ahead of it
    with journal.snapshot():
        try:
            report = _verify(journal.raw(), expect_head, kept, str(journal.anchor.path))
        except sqlite3.DatabaseError as exc:
            raise JournalCorrupt(f"journal database is damaged: {exc}") from None
    note = journal.anchor.note
    return VerifyReport(report.records, report.blobs, report.head_seq, report.head_hash, (note,) if note else ())


def _verify(db: sqlite3.Connection, expect_head: str | None, kept: tuple[int, str] | None = None,
            anchor_file: str = "") -> VerifyReport:
    replay = sqlite3.connect(":memory:")
    replay.executescript(_SCHEMA)
    cur = replay.cursor()
    row = db.execute("SELECT seq, hash FROM base WHERE id = 1").fetchone() if _has_base(db) else None
    base = (row[0], row[1]) if row else (0, GENESIS)  # compaction folded the records up to it
    prev, expected_seq = base[1], base[0] + 1
    compacted = (0, GENESIS)
    referenced: set[str] = set()
    hashes = {base[0]: base[1]}
    for seq, body, digest in db.execute("SELECT seq, body, hash FROM records ORDER BY seq"):
        where = f"record {seq}"
        if seq != expected_seq:
            raise JournalCorrupt(f"{where}: records {expected_seq}..{seq - 1} are missing (deleted)", seq=expected_seq)
        try:
            record = json.loads(body)
        except json.JSONDecodeError:
            raise JournalCorrupt(f"{where}: body is not JSON (edited)", seq=seq) from None
        label = _label(record, seq)
        if record.get("seq") != seq:
            raise JournalCorrupt(f"{label}: stored at {seq} but says seq {record.get('seq')} (reordered)", seq=seq)
        if chain(prev, body) != digest:
            raise JournalCorrupt(f"{label}: hash does not match its content and predecessor (edited or reordered)",
                                 seq=seq)
        try:
            index_record(cur, record)
        except (KeyError, TypeError, sqlite3.DatabaseError) as exc:
            raise JournalCorrupt(f"{label}: malformed record ({exc})", seq=seq) from None
        if record.get("kind") == "compacted":
            compacted = (record["upto"], record["hash"])
        referenced.update(referenced_chunks(record))
        hashes[seq] = digest
        prev, expected_seq = digest, seq + 1
    last_seq = expected_seq - 1
    head = db.execute("SELECT seq, hash FROM head WHERE id = 1").fetchone() or (0, GENESIS)
    if tuple(head) != (last_seq, prev):
        raise JournalCorrupt(
            f"journal head says record {head[0]} but the log ends at record {last_seq} (truncated or rewound)",
            seq=last_seq + 1,
        )
    if compacted != base:
        raise JournalCorrupt(f"the journal starts after record {base[0]} but no compaction record vouches for that "
                             f"(records 1..{base[0]} removed)", seq=base[0])
    if kept is not None:
        check_anchor(kept, last_seq, hashes.get, anchor_file)
    if expect_head is not None:
        _check_anchor(db, expect_head, last_seq)
    for table, key in (("entries", "seq"), ("checkpoints", "seq")):
        stored = db.execute(f"SELECT * FROM {table} ORDER BY {key}").fetchall()
        rebuilt = replay.execute(f"SELECT * FROM {table} ORDER BY {key}").fetchall()
        if stored != rebuilt:
            first = (rebuilt or stored)[0] if (rebuilt or stored) else None
            bad = next((r for r, s in zip(rebuilt, stored, strict=False) if r != s), first)
            near = bad[1] if bad else "?"
            raise JournalCorrupt(f"the {table} index disagrees with the records (near {near}); edited")
    count = 0
    for digest, size, data in db.execute("SELECT hash, size, data FROM blobs"):
        count += 1
        try:
            raw = unpack_blob(data)
        except (zlib.error, JournalCorrupt, TypeError, ValueError):
            raise JournalCorrupt(f"blob {digest[:16]}: cannot be decoded (edited)") from None
        if hashlib.sha256(raw).hexdigest() != digest or len(raw) != size:
            raise JournalCorrupt(f"blob {digest[:16]}: content does not match its hash (edited)")
    present = {row[0] for row in db.execute("SELECT hash FROM blobs")}
    missing = referenced - present
    if missing:
        raise JournalCorrupt(f"blob {sorted(missing)[0][:16]} referenced by the journal is missing (deleted)")
    return VerifyReport(records=last_seq - base[0], blobs=count, head_seq=last_seq, head_hash=prev)


def _has_base(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'base'").fetchone()[0] > 0


def _check_anchor(db: sqlite3.Connection, expect_head: str, last_seq: int) -> None:
    """The journal must still extend a head kept elsewhere (`SEQ:HASH`)."""
    seq_text, _, digest = expect_head.partition(":")
    seq = int(seq_text) if seq_text.isdigit() else -1
    if seq > last_seq:
        raise JournalCorrupt(f"the journal ends at record {last_seq} but the head you kept is record {seq}: "
                             f"records {last_seq + 1}..{seq} were removed (truncated)", seq=last_seq + 1)
    row = db.execute("SELECT hash FROM records WHERE seq = ?", (seq,)).fetchone()
    if row is None or row[0] != digest:
        raise JournalCorrupt(f"record {seq} no longer has the hash you kept ({digest[:16]}…): the journal was "
                             f"rewritten at or before record {seq}", seq=seq)


def _label(record: dict[str, Any], seq: int) -> str:
    eid = record.get("entry") or (entry_id(seq) if record.get("kind") == "entry" else None)
    return f"record {seq}" + (f" (entry {eid})" if eid else "")
