"""The journal's read API: entries, one entry with its records, checkpoints, as typed values.

Every read is verified: the index rows come from `Journal.select` (the stored index must agree
with the replay of the chain-verified records) and record bodies from `Journal.record` (checked
against the chain). No caller outside `goex/journal/` writes SQL against the journal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

_LOG_FIELDS = ("id", "time", "session", "actor", "type", "target", "decision", "status")


@dataclass(frozen=True)
class Entry:
    """One action as the index lists it. `target` is the targets as one line; `entry.targets`
    (on `EntryDetail`) is the list."""

    id: str
    seq: int
    session: str
    actor: str
    type: str
    target: str
    decision: str
    status: str
    time: float
    undoable: bool
    after_seq: int | None
    reviewed: str | None

    def __getitem__(self, key: str) -> Any:  # the row form earlier callers index
        return getattr(self, key)

    def to_json(self) -> dict[str, Any]:
        """The fields `goex log --json` prints."""
        return {k: getattr(self, k) for k in _LOG_FIELDS}


@dataclass(frozen=True)
class Checkpoint:
    id: str
    seq: int
    session: str
    label: str | None
    time: float

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "session": self.session, "label": self.label, "time": self.time}


@dataclass
class EntryDetail:
    """One entry with its records: the `entry` record the chain vouches for, every later record
    naming it, and its after-state."""

    entry: Entry
    record: dict[str, Any]
    read_blob: Callable[[str], bytes]
    after: dict[str, Any] | None = None
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.entry.id

    @property
    def type(self) -> str:
        return self.entry.type

    @property
    def target(self) -> str:
        return self.entry.target

    @property
    def targets(self) -> list[str]:
        return list(self.record.get("targets") or ([self.record["target"]] if self.record.get("target") else []))

    @property
    def status(self) -> str:
        return self.entry.status

    @property
    def error(self) -> str | None:
        return self.record.get("error")

    @property
    def preview(self) -> dict[str, Any]:
        return self.record.get("preview") or {}

    @property
    def plan(self) -> dict[str, Any]:
        return self.record.get("plan") or {}

    @property
    def decision(self) -> dict[str, Any]:
        return self.record.get("decision") or {}

    def action(self) -> dict[str, Any]:
        """The action as the agent sent it: strings journaled as blobs are read back."""
        return rehydrate(self.record["action"], self.read_blob)


def rehydrate(action: dict[str, Any], read_blob: Callable[[str], bytes]) -> dict[str, Any]:
    out = {}
    for key, value in action.items():
        if isinstance(value, dict) and set(value) == {"$blob"}:
            value = b"".join(read_blob(c) for c in value["$blob"]["chunks"]).decode("utf-8")
        out[key] = value
    return out


class Reads:
    """The read API, mixed into `Journal`, built on its verified reads below."""

    def select(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Index rows, checked against the replay of the records."""
        raise NotImplementedError

    def record(self, seq: int) -> dict[str, Any]:
        """One record's body, checked against the chain."""
        raise NotImplementedError

    def record_hash(self, seq: int) -> str:
        """The chain hash of one record, as verified."""
        raise NotImplementedError

    def records(self, after: int = 0) -> Iterator[tuple[int, str, str]]:
        raise NotImplementedError

    def read_blob(self, digest: str) -> bytes:
        raise NotImplementedError

    def entries(self, *, session: str | None = None, status: Iterable[str] | None = None,
                exclude: Iterable[str] | None = None, type: str | None = None, since: float | None = None,
                until: float | None = None, from_seq: int | None = None, after_seq: int | None = None,
                upto_seq: int | None = None, undoable: bool | None = None, newest_first: bool = False,
                limit: int | None = None) -> list[Entry]:
        """Entries matching every filter given: session, status (any of), not status (none of),
        action type (exact, or a prefix ending in '.'), time range, seq range (`from_seq`
        inclusive, `after_seq` exclusive, `upto_seq` inclusive), undoable."""
        where: list[str] = []
        params: list[Any] = []

        def add(cond: str, *values: Any) -> None:
            where.append(cond)
            params.extend(values)

        if session is not None:
            add("session = ?", session)
        if status is not None:
            states = list(status)
            add(f"status IN ({', '.join('?' * len(states))})", *states)
        if exclude is not None:
            states = list(exclude)
            add(f"status NOT IN ({', '.join('?' * len(states))})", *states)
        if type is not None:
            add("type LIKE ? ESCAPE '\\'" if type.endswith(".") else "type = ?",
                type.replace("_", "\\_") + "%" if type.endswith(".") else type)
        if since is not None:
            add("time >= ?", since)
        if until is not None:
            add("time <= ?", until)
        if from_seq is not None:
            add("seq >= ?", from_seq)
        if after_seq is not None:
            add("seq > ?", after_seq)
        if upto_seq is not None:
            add("seq <= ?", upto_seq)
        if undoable is not None:
            add("undoable = ?", int(undoable))
        sql = ("SELECT * FROM entries" + (" WHERE " + " AND ".join(where) if where else "")
               + (" ORDER BY seq DESC" if newest_first else " ORDER BY seq") + (" LIMIT ?" if limit else ""))
        rows = self.select(sql, tuple(params) + ((limit,) if limit else ()))
        return [_entry(r) for r in rows]

    def entry(self, eid: str) -> Entry | None:
        """One entry, or None when the journal has no entry with that id."""
        from .store import entry_seq

        rows = self.select("SELECT * FROM entries WHERE seq = ?", (entry_seq(eid),))
        return _entry(rows[0]) if rows else None

    def entry_record(self, eid: str) -> dict[str, Any]:
        """The `entry` record of `eid` as the chain vouches for it (no index read: the fast path)."""
        from .store import entry_seq

        record = self.record(entry_seq(eid))
        if record.get("kind") != "entry":
            from ..errors import JournalCorrupt

            raise JournalCorrupt(f"{eid} does not name an entry record; run `goex verify`")
        return record

    def detail(self, eid: str, *, with_records: bool = False) -> EntryDetail | None:
        """One entry with its `entry` record, its after-state and (`with_records`) every record naming it."""
        entry = self.entry(eid)
        if entry is None:
            return None
        record = self.record(entry.seq)
        after = self.record(entry.after_seq).get("after") if entry.after_seq else None
        detail = EntryDetail(entry, record, self.read_blob, after)
        if with_records:
            from .store import named_entries

            detail.records = [self.record(seq) for seq, body, _ in self.records(entry.seq)
                              if eid in named_entries(json.loads(body))]  # each read again, verified
        return detail

    def checkpoints(self, *, session: str | None = None, name: str | None = None,
                    newest_first: bool = False) -> list[Checkpoint]:
        """Checkpoints, of one session and/or with one id or label."""
        where, params = [], []
        if session is not None:
            where.append("session = ?")
            params.append(session)
        if name is not None:
            where.append("(id = ? OR label = ?)")
            params += [name, name]
        sql = ("SELECT id, seq, session, label, time FROM checkpoints"
               + (" WHERE " + " AND ".join(where) if where else "")
               + (" ORDER BY seq DESC" if newest_first else " ORDER BY seq"))
        return [Checkpoint(r["id"], r["seq"], r["session"], r["label"], r["time"])
                for r in self.select(sql, tuple(params))]


_ENTRY_FIELDS = ("seq", "id", "session", "actor", "type", "target", "decision", "status", "time", "undoable",
                 "after_seq", "reviewed")  # the columns of `SELECT * FROM entries`, in order


def _entry(row: Any) -> Entry:
    """An Entry from a row of `SELECT * FROM entries`. Built without the frozen dataclass's
    per-field `__setattr__` (undo of a range lists hundreds): the same fields, the same values."""
    entry = object.__new__(Entry)
    entry.__dict__.update(zip(_ENTRY_FIELDS, row, strict=True))
    entry.__dict__["undoable"] = bool(row[9])
    return entry
