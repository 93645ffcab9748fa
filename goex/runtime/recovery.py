"""Recovery: entries a dead process left open are brought to a consistent end before anything
else acts; an action whose outcome is unknown is settled the same way."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..adapters.base import Adapter, Outcome
from ..errors import OutcomeUnknown, RecoveryNeeded, UndoDeclined
from ..journal.read import rehydrate
from ..journal.store import entry_seq
from ..policy import Decision
from .results import Parts, RecoveryReport, Result

if TYPE_CHECKING:
    from .pipeline import Session


class Recovery(Parts):
    def recover(self) -> RecoveryReport:
        """Bring every interrupted entry to a consistent end: a pending file action is reverted
        (recorded as failed); a pending request is replayed with its idempotency key (recorded as
        applied) or left for review; an interrupted undo is finished (recorded as undone)."""
        report = RecoveryReport()
        with self.journal.exclusive():
            self._recover_locked(report)
        return report

    def _ensure_consistent(self, *, always: bool = False) -> None:
        """Before acting: close what a dead process left open, or refuse to act at all."""
        if always or self._stuck or self.journal.changed_elsewhere():  # only others leave entries open
            report = RecoveryReport()
            self._recover_locked(report)
            if not report.ok:
                raise RecoveryNeeded({k: v for k, v in report.outcomes.items() if v.startswith("error")})

    def _recover_locked(self, report: RecoveryReport) -> None:
        # Holding the lock proves no live process is mid-action: its owner died.
        for row in self.journal.entries(status=("pending", "undoing"), newest_first=True):
            eid = row.id
            entry = self.journal.record(row.seq)
            try:
                adapter = self._adapter_for(row.type)
                if row.status == "pending":
                    plan = self._plan(entry, None)
                    outcome, after, why = self._settle(adapter, plan, entry["action"])
                    if outcome == "applied" and "captured_seq" in plan:
                        after = {"captured": plan["captured_seq"]}
                else:
                    after = self.journal.record(row.after_seq)["after"] if row.after_seq else {}
                    adapter.revert(self._plan(entry, after), after, self.journal.read_blob, True)
                    outcome, why = "undone", ""
            except UndoDeclined as exc:  # the compensation did not happen: the world is as before
                self.journal.append("undo_failed", entry=eid, error=str(exc), durable=True)
                report.outcomes[eid] = "undo_failed"
                continue
            except Exception as exc:  # noqa: BLE001 - report it, keep going with the others
                report.outcomes[eid] = f"error: {exc}"
                continue
            if outcome == "reverted":
                self.journal.append("failed", entry=eid, error="interrupted before it finished; reverted by recovery",
                                    reverted=True, durable=True)
            elif outcome == "applied":
                self.journal.append("applied", entry=eid, after=after, recovered=True, durable=True)
            elif outcome == "review":
                self.journal.append("review", entry=eid, error=why, durable=True)
            else:
                self.journal.append("undone", entry=eid, recovered=True, durable=True)
            report.outcomes[eid] = outcome
        self._stuck = not report.ok

    def _settle(self, adapter: Adapter, plan: dict[str, Any], action: dict[str, Any]) -> Outcome:
        """Bring one pending entry to an end (the caller journals it); returns (outcome, after, why)."""
        return adapter.recover(plan, rehydrate(action, self.journal.read_blob), self.journal.read_blob)

    def _settle_unknown(self, session: "Session", model: Any, adapter: Adapter, eid: str, plan: dict[str, Any],
                        exc: OutcomeUnknown, decision: Decision) -> Result:
        """The effect may have happened and no answer came: settle it now as recovery would."""
        outcome, after, why = self._settle(adapter, plan, self.journal.record(entry_seq(eid))["action"])
        if outcome == "applied":
            self.journal.append("applied", entry=eid, after=after, retried=True)
            output = {"note": f"{exc}; replayed with its idempotency key", "status": after.get("status")}
            return Result(True, eid, output,
                          session=session.id, type=model.type, decision=decision)
        error = f"{exc}. {why}" if why else str(exc)
        if outcome == "review":
            self.journal.append("review", entry=eid, error=error, durable=True)
        else:
            self.journal.append("failed", entry=eid, error=error, reverted=True, durable=True)
        status = "needs_review" if outcome == "review" else "failed"
        return Result(False, eid, error=error, status=status, session=session.id, type=model.type, decision=decision)

    def _revert_pending(self, adapter: Adapter, eid: str, plan: dict[str, Any], reason: str) -> None:
        try:
            adapter.revert(plan, None, self.journal.read_blob)
        except Exception as exc:  # noqa: BLE001 - leave it pending for `recover`
            self._stuck = True
            raise RecoveryNeeded({eid: f"failed ({reason}) and could not be reverted ({exc})"}) from exc
        self.journal.append("failed", entry=eid, error=reason, reverted=True, durable=True)
