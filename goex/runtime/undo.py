"""Undo: entries selected under the lock, newest first, each checked for conflicts, then reverted
from the plan its verified record holds."""

from __future__ import annotations

from typing import Any

from ..errors import JournalCorrupt, RecoveryNeeded, UndoConflict, UndoDeclined, Unforceable
from ..journal.read import Entry
from ..journal.store import entry_id
from .results import Parts

UNDOABLE = ("applied", "undo_failed")


class Undo(Parts):
    def rollback_all(self, *, force: bool = False) -> list[str]:
        """Undo every applied entry of every session on this root, newest first."""
        return self._undo_selected(force)

    def _undo_selected(self, force: bool, limit: int | None = None, **filters: Any) -> list[str]:
        """Undo, newest first, the undoable entries matching `filters` (as `Journal.entries` takes
        them), selected under the lock so nothing slips in between."""
        done: list[str] = []
        unrecorded: list[tuple[str, dict[str, Any]]] = []  # undone, "undone" record not written yet
        with self.journal.exclusive():
            self._ensure_consistent(always=True)
            try:
                for entry in self.journal.entries(status=UNDOABLE, undoable=True, newest_first=True, limit=limit,
                                                  **filters):
                    try:
                        details = self._undo_entry(entry, force, finished=unrecorded)
                    except UndoConflict as exc:
                        exc.undone = list(done)
                        raise
                    done.append(entry.id)
                    unrecorded.append((entry.id, details))
            finally:
                for eid, details in unrecorded:
                    self.journal.append("undone", entry=eid, **details)
        return done

    def _undo_entry(self, row: Entry, force: bool, finished: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        """Undo one entry. `finished` holds entries already undone whose "undone" records go into
        the same transaction as this one's "undoing" record (one commit per entry); it is emptied."""
        eid = row.id
        entry = self.journal.record(row.seq)
        after = self.journal.record(row.after_seq)["after"] if row.after_seq else {}
        adapter = self._adapter_for(row.type)
        plan = self._plan(entry, after)
        with self._tracer.start_as_current_span("goex undo") as span:
            conflicts = adapter.conflicts(plan, after)
            if conflicts and not force:
                raise UndoConflict(eid, conflicts)
            self.journal.check_blobs(plan)  # a damaged before-image stops undo before it starts
            with self.journal.transaction(durable=True) as tx:
                for previous, details in finished:
                    tx.append("undone", entry=previous, **details)
                finished.clear()
                tx.append("undoing", entry=eid, forced=bool(conflicts), conflicts=[list(c) for c in conflicts])
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
                span.set_attributes({"goex.entry.id": eid, "goex.session.id": row.session,
                                     "goex.action.type": row.type, "goex.action.target": row.target,
                                     "goex.status": "undone", "goex.forced": bool(conflicts)})
        return details

    def _plan(self, entry: dict[str, Any], after: dict[str, Any] | None) -> dict[str, Any]:
        """An entry's undo plan, with what was captured inside its transaction when it was staged
        (`captured`, and the record holding it, `captured_seq`)."""
        plan: dict[str, Any] = entry["plan"]
        if not plan.get("staged"):
            return plan
        seq = (after or {}).get("captured")
        if seq is None:  # interrupted before "applied": its capture record, if it was written
            seq = self.journal.captured(entry_id(entry["seq"]))
        if seq is None:
            return plan
        record = self.journal.record(seq)
        if record.get("kind") != "captured" or record.get("entry") != entry_id(entry["seq"]):
            raise JournalCorrupt(f"entry {entry_id(entry['seq'])} names record {seq} as its capture, which it is not; "
                                 "nothing was undone from it. Run `goex verify`", seq=seq)
        return {**plan, "captured": record["plan"], "captured_seq": seq}
