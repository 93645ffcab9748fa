"""Exports of the journal for archives and other tools: the log as JSON Lines or CSV, and one
session as a single JSON document holding its records with their verified chain hashes.

Everything is read through the journal's read API (verified reads); the session export also
verifies the whole journal first, so a document is only written from a journal that checks out.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone
from typing import Any, Iterable

from ..errors import GoexError
from ..journal.read import Reads
from ..journal.store import Journal, entry_id, named_entries
from ..journal.verify import verify

EXPORT_FORMAT = "goex.session/1"
LOG_COLUMNS = ("id", "time", "session", "actor", "type", "target", "decision", "status")


def iso_time(seconds: float) -> str:
    """A journal time (Unix seconds) as ISO 8601 UTC with milliseconds."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")


def log_jsonl(rows: Iterable[dict[str, Any]]) -> str:
    """One JSON object a line, the fields `goex log --json` prints."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def log_csv(rows: list[dict[str, Any]]) -> str:
    """RFC 4180 CSV with a header line (the rows' fields, or the log's when there are none)."""
    out = io.StringIO()
    columns = list(rows[0]) if rows else list(LOG_COLUMNS)
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return out.getvalue()


def export_session(journal: Journal, session: str) -> dict[str, Any]:
    """One session as a JSON-ready document: every record that belongs to it (its entries, and the
    approvals, undos, reviews and checkpoints naming them), each with `hash` and `prev_hash`, so
    `sha256(prev_hash + canonical JSON of the record)` can be checked by any tool. Raises
    `JournalCorrupt` when the journal fails verification, and `GoexError` for an unknown session."""
    report = verify(journal)
    entries = journal.entries(session=session)
    if not entries and not journal.checkpoints(session=session):
        raise GoexError(f"session {session!r} has no entries in the journal at {journal.folder}; "
                        "`goex log` lists the sessions")
    ids = {e.id for e in entries}
    records = [_with_hashes(journal, seq) for seq in _session_seqs(journal, session, ids)]
    return {
        "format": EXPORT_FORMAT,
        "session": session,
        "actors": sorted({e.actor for e in entries}),
        "exported_at": iso_time(datetime.now(timezone.utc).timestamp()),
        "journal": {"verified": True, "head": report.head, "records": report.records,
                    "warnings": list(report.warnings)},
        "entries": [{**e.to_json(), "seq": e.seq, "time": iso_time(e.time), "hash": journal.record_hash(e.seq),
                     "undoable": e.undoable, "reviewed": e.reviewed} for e in entries],
        "checkpoints": [{**c.to_json(), "seq": c.seq, "time": iso_time(c.time)}
                        for c in journal.checkpoints(session=session)],
        "records": records,
    }


def _session_seqs(journal: Reads, session: str, ids: set[str]) -> list[int]:
    """The seqs of the records naming the session or one of its entries (bodies are read again,
    verified, by the caller)."""
    out = []
    for seq, body, _ in journal.records():
        record = json.loads(body)
        if record.get("session") == session or any(eid in ids for eid in named_entries(record)) \
                or (record.get("kind") == "entry" and entry_id(seq) in ids):
            out.append(seq)
    return out


def _with_hashes(journal: Reads, seq: int) -> dict[str, Any]:
    return {"record": journal.record(seq), "hash": journal.record_hash(seq), "prev_hash": journal.record_hash(seq - 1)}
