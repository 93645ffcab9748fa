"""What the viewer shows, computed from the journal's read API: sessions with their figures, a
session's timeline, an entry's detail. Pure reads; every text leaves here redacted."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from ..journal.read import Entry, EntryDetail, Reads
from ..journal.store import checkpoint_id, entry_id, named_entries
from .export import iso_time

_NOT_SPENT = ("denied", "failed", "awaiting_approval", "rejected", "approved")  # entries that spent no budget
#: records that settle an entry after the fact, as the timeline lists them
_AFTER_KINDS = ("approved", "rejected", "undoing", "undone", "undo_failed", "failed", "review")


@dataclass
class SessionSummary:
    id: str
    actors: list[str]
    first: str
    last: str
    entries: int
    by_status: dict[str, int]
    by_decision: dict[str, int]
    spent: dict[str, int]
    policy_cost: float
    awaiting: int
    charged: float = 0.0  # charged outside the policy (the gym's damage and deception costs)


@dataclass
class TimelineItem:
    """One line of a session's timeline: an entry, a checkpoint, or a record about an entry."""

    seq: int
    time: str
    kind: str  # entry | checkpoint | approved | rejected | undone | undo_failed | reviewed | ...
    entry: Entry | None = None
    rules: list[str] = field(default_factory=list)
    text: str = ""


def sessions(journal: Reads) -> list[SessionSummary]:
    """Every session, newest activity first."""
    grouped: dict[str, list[Entry]] = {}
    for e in journal.entries():
        grouped.setdefault(e.session, []).append(e)
    charged = _charged(journal)
    out = []
    for sid, entries in grouped.items():
        spent: dict[str, int] = {}
        cost = 0.0
        for e in entries:
            record = journal.record(e.seq)
            cost += sum(float(m.get("cost") or 0) for m in record.get("decision", {}).get("rules", ()))
            if e.status not in _NOT_SPENT:
                for name, value in (record.get("usage") or {}).items():
                    spent[name] = spent.get(name, 0) + int(value)
        out.append(SessionSummary(
            sid, sorted({e.actor for e in entries}), iso_time(entries[0].time), iso_time(entries[-1].time),
            len(entries), _count(e.status for e in entries), _count(e.decision for e in entries),
            {k: v for k, v in spent.items() if v}, cost, sum(e.status == "awaiting_approval" for e in entries),
            charged.get(sid, 0.0)))
    out.sort(key=lambda s: s.last, reverse=True)
    return out


def _charged(journal: Reads) -> dict[str, float]:
    """The costs charged to each session outside the policy (`cost` records, read verified)."""
    out: dict[str, float] = {}
    for seq, body, _ in journal.records():
        if '"kind":"cost"' in body:  # a cheap look first; what counts is read again, verified
            record = journal.record(seq)
            if record.get("kind") == "cost":
                out[record["session"]] = out.get(record["session"], 0.0) + float(record["cost"])
    return out


def timeline(journal: Reads, session: str, *, type: str = "", status: str = "",
             decision: str = "") -> list[TimelineItem]:
    """A session's entries (filtered by type prefix, status and decision), its checkpoints and the
    records about its entries (approvals, undos, reviews), in journal order."""
    entries = journal.entries(session=session)
    shown = {e.id: e for e in entries if (not type or e.type == type or e.type.startswith(type.rstrip(".") + "."))
             and (not status or e.status == status) and (not decision or e.decision == decision)}
    items = []
    for e in shown.values():
        record = journal.record(e.seq)
        items.append(TimelineItem(e.seq, iso_time(e.time), "entry", e,
                                  [m["id"] for m in record.get("decision", {}).get("rules", ())]))
    for c in journal.checkpoints(session=session):
        items.append(TimelineItem(c.seq, iso_time(c.time), "checkpoint", text=f"{checkpoint_id(c.seq)} "
                                  + (c.label or "")))
    ids = {e.id for e in entries}
    first = min((e.seq for e in entries), default=0)
    for seq, body, _ in journal.records(max(first, 1) - 1):
        raw = json.loads(body)  # a cheap look first; what is shown is read again, verified
        if raw.get("kind") in _AFTER_KINDS and any(eid in shown for eid in named_entries(raw)):
            record = journal.record(seq)
            items.append(TimelineItem(seq, iso_time(record["time"]), record["kind"], text=_settled(record)))
        elif raw.get("kind") == "cost" and raw.get("session") == session:
            record = journal.record(seq)
            items.append(TimelineItem(seq, iso_time(record["time"]), "cost",
                                      text=f"charged {float(record['cost']):.2f} by {record.get('by', '?')}: "
                                           + (", ".join(record.get("rules") or ()) or "no rule named")))
        elif raw.get("kind") == "reviewed" and raw.get("session") == session and set(raw.get("entries", ())) & ids:
            record = journal.record(seq)
            items.append(TimelineItem(seq, iso_time(record["time"]), "reviewed",
                                      text=f"{len(record['entries'])} entries accepted by {record['by']}"))
    items.sort(key=lambda i: i.seq)
    return items


def _settled(record: dict[str, Any]) -> str:
    kind, eid = record["kind"], ", ".join(named_entries(record))  # a coalesced undo names a range
    who = f" by {record['by']}" if record.get("by") else ""
    if kind == "undoing":
        conflicts = record.get("conflicts") or []
        forced = f", forced over {len(conflicts)} conflicts" if record.get("forced") else ""
        return f"undo of {eid} started{who}{forced}"
    why = record.get("reason") or record.get("error") or ""
    return f"{eid} {kind.replace('_', ' ')}{who}" + (f": {why}" if why else "")


@dataclass
class EntryView:
    detail: EntryDetail
    time: str
    rules: list[dict[str, Any]]
    describe: str
    action: str
    preview: str
    after: str
    records: list[tuple[int, str, str]]  # (seq, time, text) of each later record naming it


def entry_view(journal: Reads, eid: str, describe: Callable[[EntryDetail], str],
               redact: Callable[[str], str]) -> EntryView | None:
    detail = journal.detail(eid, with_records=True)
    if detail is None:
        return None
    later = [(r["seq"], iso_time(r["time"]), redact(_settled(r))) for r in detail.records
             if r.get("kind") in _AFTER_KINDS]
    return EntryView(detail, iso_time(detail.entry.time), list(detail.decision.get("rules", ())),
                     redact(describe(detail)), redact(_pretty(detail.record.get("action", {}))),
                     redact(_pretty(detail.preview)), redact(_pretty(detail.after)) if detail.after else "", later)


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=1, ensure_ascii=False, default=str)


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


__all__ = ["EntryView", "SessionSummary", "TimelineItem", "entry_id", "entry_view", "sessions", "timeline"]
