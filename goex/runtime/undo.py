"""Undo: entries selected under the lock, newest first, each checked for conflicts, then reverted
from the plan its verified record holds.

Consecutive entries whose adapters can merge their undo (`Adapter.coalesce`) are undone as one
range: checked together, each object restored once, one `undoing` and one `undone` record for
the whole range. The outcome is the one undoing them one by one would have, conflicts included:
an entry that meets one stops the undo there, after the newer entries were undone."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

from ..adapters.base import Adapter, Coalesced
from ..errors import GoexError, JournalCorrupt, RecoveryNeeded, UndoConflict, UndoDeclined, Unforceable
from ..journal.read import Entry
from ..journal.store import entry_id
from ..telemetry import rollback_attributes, undo_attributes
from .conflicts import changed_by
from .results import Parts

UNDOABLE = ("applied", "undo_failed")
_WINDOW = 256  # entries whose records are read together
_MAX_RANGE = 2000  # entries in one coalesced range (one record names them all)


@dataclass
class _Undoable:
    """One selected entry, read and verified once: its plan, after-state and adapter."""

    row: Entry
    plan: dict[str, Any]
    after: dict[str, Any]
    adapter: Adapter
    coalesced: Coalesced | None

    @property
    def id(self) -> str:
        return self.row.id


class Undo(Parts):
    def rollback_all(self, *, force: bool = False) -> list[str]:
        """Undo every applied entry of every session on this root, newest first."""
        return self._undo_selected(force)

    def rollback_all_and_compact(self, check: Callable[[list[str]], None]) -> list[str]:
        """Undo every applied entry, as `rollback_all`; then, still holding the lock, `check` what
        was undone (the gym checks its world's fingerprint); once it passes, the `undone` records
        and the compaction of the whole history (as `compact()`, when nothing is left open) go in
        one commit. When `check` raises, the `undone` records are written alone, as ever."""
        return self._undo_selected(False, then=check)

    def _undo_selected(self, force: bool, limit: int | None = None, by: str | None = None,
                       then: Callable[[list[str]], None] | None = None, **filters: Any) -> list[str]:
        """Undo, newest first, the undoable entries matching `filters` (as `Journal.entries` takes
        them), selected under the lock so nothing slips in between; one parent span holds the
        undos' spans. A forced undo goes entry by entry (each one's conflicts are overridden, and
        recorded, on its own). `by`: who asked, recorded in each `undoing` record. `then`: see
        `rollback_all_and_compact`."""
        done: list[str] = []
        with self._tracer.start_as_current_span("goex rollback") as span:
            if span.is_recording():
                span.set_attributes(rollback_attributes(filters, force))
            try:
                self._undo_each(done, force, limit, by, filters, then)
            finally:
                if span.is_recording():
                    span.set_attribute("goex.undo.entries", list(done))
        return done

    def _undo_each(self, done: list[str], force: bool, limit: int | None, by: str | None,
                   filters: dict[str, Any], then: Callable[[list[str]], None] | None = None) -> None:
        unrecorded: list[dict[str, Any]] = []  # undone, "undone" record not written yet
        who = {"by": by} if by else {}
        with self.journal.exclusive():
            self._ensure_consistent(always=True)
            try:
                batch: list[_Undoable] = []
                groups: dict[tuple[int, str], list[Coalesced]] = {}  # the batch's items by adapter and key
                rows = self.journal.entries(status=UNDOABLE, undoable=True, newest_first=True, limit=limit, **filters)
                for i, row in enumerate(rows):
                    if i % _WINDOW == 0:  # the records of the next entries, read together
                        records = self._records_of(rows[i:i + _WINDOW])
                    item = self._undoable(row, force, records)
                    c = item.coalesced
                    if c is not None and len(batch) < _MAX_RANGE and _joins(groups, c):
                        batch.append(item)
                        groups.setdefault((id(c.adapter), c.key), []).append(c)
                        continue
                    self._undo_batch(batch, done, unrecorded, who)
                    batch, groups = [], {}
                    if c is None:
                        self._undo_one(item, force, done, unrecorded, who)
                    else:
                        batch, groups = [item], {(id(c.adapter), c.key): [c]}
                self._undo_batch(batch, done, unrecorded, who)
                if then is not None:
                    then(done)  # raising: the finally below writes the `undone` records alone
                    if unrecorded:
                        closing, unrecorded[:] = list(unrecorded), []
                        try:
                            self.journal.append_and_compact("undone", closing)
                        except BaseException:  # maybe unwritten: they stay "undoing" for recovery to finish
                            self._stuck = True
                            raise
            except UndoConflict as exc:
                exc.undone = list(done)
                with contextlib.suppress(GoexError):  # naming who changed it is a courtesy, never the error
                    exc.explain(changed_by(self.journal, exc))
                raise
            finally:
                if unrecorded:
                    with self.journal.transaction(durable=False) as tx:
                        for fields in unrecorded:
                            tx.append("undone", **fields)

    def _records_of(self, rows: list[Entry]) -> dict[int, dict[str, Any]]:
        """The entry, after and capture records of `rows`, verified, by seq."""
        records = self.journal.records_at([r.seq for r in rows] + [r.after_seq for r in rows if r.after_seq])
        captured = [seq for r in rows if r.after_seq and isinstance(seq := records[r.after_seq].get("after"), dict)
                    and isinstance(seq := seq.get("captured"), int)]
        return {**records, **self.journal.records_at(captured)}

    def _undoable(self, row: Entry, force: bool, records: dict[int, dict[str, Any]]) -> _Undoable:
        entry = records[row.seq]
        after = records[row.after_seq]["after"] if row.after_seq else {}
        adapter = self._adapter_for(row.type)
        plan = self._plan(entry, after, records)
        return _Undoable(row, plan, after, adapter, None if force else adapter.coalesce(plan, after))

    def _undo_batch(self, batch: list[_Undoable], done: list[str], unrecorded: list[dict[str, Any]],
                    who: dict[str, str]) -> None:
        """Undo coalescable entries (newest first) as one range, or up to the first that conflicts."""
        if len(batch) <= 1:
            for item in batch:
                self._undo_one(item, False, done, unrecorded, who)
            return
        self.journal.check_blobs([item.plan for item in batch])  # a damaged before-image stops it before it starts
        groups = _groups(batch)
        try:
            conflicts: dict[int, list[tuple[str, str]]] = {}
            for members in groups.values():
                found = members[0][1].adapter.range_conflicts([c for _, c in members])
                if found is None:  # the adapter found it cannot undo them together: one by one
                    _end_ranges(groups)
                    for item in batch:
                        self._undo_one(item, False, done, unrecorded, who)
                    return
                conflicts.update((i, f) for (i, _), f in zip(members, found, strict=True) if f)
            first = min(conflicts, default=len(batch))
            if first > 0:
                self._revert_range(batch[:first], done, unrecorded, who)
        finally:  # a check may hold its group's undo open for the revert (SQLite): let go of what was not used
            _end_ranges(groups)
        if conflicts:
            raise UndoConflict(batch[first].id, conflicts[first])

    def _revert_range(self, items: list[_Undoable], done: list[str], unrecorded: list[dict[str, Any]],
                      who: dict[str, str]) -> None:
        """Undo entries found free of conflicts as one operation, with one record for them all."""
        named = _named([item.id for item in items])
        with self._tracer.start_as_current_span("goex undo") as span:
            with self.journal.transaction(durable=True) as tx:
                for fields in unrecorded:
                    tx.append("undone", **fields)
                unrecorded.clear()
                tx.append("undoing", forced=False, conflicts=[], **named, **who)
            try:
                for members in _groups(items).values():
                    members[0][1].adapter.revert_range([c for _, c in members], self.journal.read_blob)
            except UndoDeclined as exc:  # changed between the check and the undo: nothing was applied
                if len(_groups(items)) > 1:  # another group may be applied already: recovery settles it
                    self._stuck = True
                    raise RecoveryNeeded({item.id: f"undo stopped midway ({exc})" for item in items}) from exc
                with self.journal.transaction(durable=True) as tx:
                    for item in items:
                        tx.append("undo_failed", entry=item.id, error=str(exc))
                for item in items:  # one by one now, which names the entry that meets the change
                    self._undo_one(item, False, done, unrecorded, who)
                return
            except Exception as exc:  # noqa: BLE001 - they stay "undoing" for `recover` to finish
                self._stuck = True
                raise RecoveryNeeded({item.id: f"undo stopped midway ({exc})" for item in items}) from exc
            if span.is_recording():
                span.set_attributes({"goex.entry.id": ",".join(item.id for item in items),
                                     "goex.undo.entries": [item.id for item in items],
                                     "goex.session.id": items[0].row.session, "goex.status": "undone",
                                     "goex.forced": False, "goex.entries": len(items)})
        done.extend(item.id for item in items)
        unrecorded.append(named)

    def _undo_one(self, item: _Undoable, force: bool, done: list[str], unrecorded: list[dict[str, Any]],
                  who: dict[str, str]) -> None:
        details = self._undo_entry(item, force, finished=unrecorded, who=who)
        done.append(item.id)
        unrecorded.append({"entry": item.id, **details})

    def _undo_entry(self, item: _Undoable, force: bool, finished: list[dict[str, Any]],
                    who: dict[str, str]) -> dict[str, Any]:
        """Undo one entry. `finished` holds "undone" records not written yet; they go into the same
        transaction as this one's "undoing" record (one commit per entry); it is emptied."""
        row, eid, plan, after, adapter = item.row, item.id, item.plan, item.after, item.adapter
        with self._tracer.start_as_current_span("goex undo") as span:
            if span.is_recording():
                span.set_attributes(undo_attributes(row))
            conflicts = adapter.conflicts(plan, after)
            if conflicts and span.is_recording():
                span.set_attribute("goex.undo.conflict", [f"{where}: {why}" for where, why in conflicts])
            if conflicts and not force:
                raise UndoConflict(eid, conflicts)
            self.journal.check_blobs(plan)  # a damaged before-image stops undo before it starts
            with self.journal.transaction(durable=True) as tx:
                for fields in finished:
                    tx.append("undone", **fields)
                finished.clear()
                tx.append("undoing", entry=eid, forced=bool(conflicts), conflicts=[list(c) for c in conflicts], **who)
            try:
                details = adapter.revert(plan, after, self.journal.read_blob, force) or {}
            except JournalCorrupt as exc:  # a forged plan, refused before its first op: nothing changed
                self.journal.append("undo_failed", entry=eid, error=str(exc), durable=True)
                raise
            except UndoDeclined as exc:  # nothing changed: say so, never "undone"
                self.journal.append("undo_failed", entry=eid, error=str(exc), durable=True)
                if exc.conflict:
                    why = str(exc) if exc.forceable and not force else Unforceable(str(exc))
                    raise UndoConflict(eid, [(row.target, why)]) from None
                raise
            except Exception as exc:  # noqa: BLE001 - it stays "undoing" for `recover` to finish
                self._stuck = True
                raise RecoveryNeeded({eid: f"undo stopped midway ({exc})"}) from exc
            if span.is_recording():
                span.set_attributes({"goex.status": "undone", "goex.forced": bool(conflicts)})
        return details

    def _plan(self, entry: dict[str, Any], after: dict[str, Any] | None,
              records: dict[int, dict[str, Any]] | None = None) -> dict[str, Any]:
        """An entry's undo plan, with what was captured inside its transaction when it was staged
        (`captured`, and the record holding it, `captured_seq`; from `records` when read already)."""
        plan: dict[str, Any] = entry["plan"]
        if not plan.get("staged"):
            return plan
        seq = (after or {}).get("captured")
        if seq is None:  # interrupted before "applied": its capture record, if it was written
            seq = self.journal.captured(entry_id(entry["seq"]))
        if seq is None:
            return plan
        record = records[seq] if records and seq in records else self.journal.record(seq)
        if record.get("kind") != "captured" or record.get("entry") != entry_id(entry["seq"]):
            raise JournalCorrupt(f"entry {entry_id(entry['seq'])} names record {seq} as its capture, which it is not; "
                                 "nothing was undone from it. Run `goex verify`", seq=seq)
        return {**plan, "captured": record["plan"], "captured_seq": seq}


def _named(ids: list[str]) -> dict[str, Any]:
    """How a record names the entries it is about: `entry` for one, `entries` for a range."""
    return {"entry": ids[0]} if len(ids) == 1 else {"entries": ids}


def _groups(items: list[_Undoable]) -> dict[tuple[int, str], list[tuple[int, Coalesced]]]:
    """The items by (adapter, key), each with its position in `items` (newest first)."""
    groups: dict[tuple[int, str], list[tuple[int, Coalesced]]] = {}
    for i, item in enumerate(items):
        c = item.coalesced
        assert c is not None
        groups.setdefault((id(c.adapter), c.key), []).append((i, c))
    return groups


def _end_ranges(groups: dict[tuple[int, str], list[tuple[int, Coalesced]]]) -> None:
    """Every group's `end_range`, all of them even when one fails (the first failure is raised)."""
    failed: BaseException | None = None
    for members in groups.values():
        try:
            members[0][1].adapter.end_range([c for _, c in members])
        except BaseException as exc:  # noqa: BLE001 - the others still let go of theirs; raised below
            failed = failed or exc
    if failed is not None:
        raise failed


def _joins(groups: dict[tuple[int, str], list[Coalesced]], item: Coalesced) -> bool:
    """Whether `item` joins the batch: entries of other adapters or keys touch other objects."""
    same = groups.get((id(item.adapter), item.key))
    return not same or item.adapter.joins(same, item)
