"""What the runtime hands back: results, confirmation requests, recovery reports; and the parts
of a runtime its concerns (pipeline, approvals, undo, recovery) share."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import ActionFailed, PolicyDenied
from ..journal.store import APPLIED, Journal
from ..policy import Decision, Policy, WorkspaceRules

if TYPE_CHECKING:
    from ..adapters.base import Adapter, Outcome
    from ..adapters.fs.workspace import Workspace
    from .pipeline import Session


@dataclass
class Result:
    """What one action did. `ok` is False when it was refused or failed; `error` says why."""

    ok: bool
    entry_id: str | None
    output: Any = None
    error: str | None = None
    status: str = APPLIED
    session: str | None = None
    type: str | None = None
    decision: Decision | None = None

    def to_json(self) -> dict[str, Any]:
        d = self.decision
        return {
            "ok": self.ok, "entry_id": self.entry_id, "session": self.session, "type": self.type,
            "status": self.status, "output": self.output, "error": self.error,
            "decision": d.verdict if d else None, "rules": d.rules if d else [],
        }

    def raise_for_error(self) -> "Result":
        """Raise `PolicyDenied` or `ActionFailed` unless the action succeeded; returns self."""
        if self.ok:
            return self
        if self.status == "denied":
            raise PolicyDenied(self.error or "refused", self.decision.rules if self.decision else [], self.entry_id)
        raise ActionFailed(self.error or "failed", self.entry_id)


@dataclass(frozen=True)
class ConfirmationRequest:
    """What an approver is asked: an action a rule sends to confirmation, and what it would do."""

    session: str
    actor: str
    type: str
    targets: list[str]
    decision: Decision
    preview: dict[str, Any]
    summary: str


Approver = Callable[[ConfirmationRequest], bool]


@dataclass
class RecoveryReport:
    """What `recover` did to each interrupted entry: 'reverted', 'undone', or 'error: …'."""

    outcomes: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(v.startswith("error") for v in self.outcomes.values())


class Parts:
    """The state every concern of a runtime reads, and the steps they call on each other."""

    root: Path
    journal: Journal
    workspace: "Workspace"
    policy: Policy
    rules: WorkspaceRules
    approver: "Approver | str | None"
    _stuck: bool
    _lock: threading.RLock
    _tracer: Any
    _context: Any  # the adapters' Context: the settings this runtime was made with

    @property
    def protected(self) -> tuple[str, ...]:
        return self.rules.protected

    def adapter(self, prefix: str) -> "Adapter":
        raise NotImplementedError

    def session(self, actor: str = "agent", session_id: str | None = None) -> "Session":
        raise NotImplementedError

    def _adapter_for(self, action_type: str) -> "Adapter":
        return self.adapter(action_type.split(".", 1)[0])

    def _execute(self, session: "Session", action: Any, approval: dict[str, Any] | None = None) -> Result:
        raise NotImplementedError

    def _ensure_consistent(self, *, always: bool = False) -> None:
        raise NotImplementedError

    def _settle(self, adapter: "Adapter", plan: dict[str, Any], action: dict[str, Any]) -> "Outcome":
        raise NotImplementedError

    def _plan(self, entry: dict[str, Any], after: dict[str, Any] | None) -> dict[str, Any]:
        raise NotImplementedError
