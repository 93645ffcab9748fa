"""Confirmation: asking an approver, parking an action for `approve` / `reject`, and running an
approved action only if its effect did not grow since it was shown."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ..adapters.base import Adapter, Prepared
from ..errors import GoexError
from ..journal.store import entry_id, entry_seq
from ..policy import Decision
from ..policy.fields import field_kind
from .results import ConfirmationRequest, Parts, Result

if TYPE_CHECKING:
    from .pipeline import Session


class Approvals(Parts):
    def _ask(self, session: "Session", model: Any, adapter: Adapter, prepared: Prepared,
             decision: Decision) -> bool | None:
        """The approver's answer: True, False, or None (parked for `approve` / `reject`)."""
        if self.approver is None or self.policy.confirm == "deny":
            return False
        if self.approver == "pending":
            return None
        request = ConfirmationRequest(session.id, session.actor, model.type, prepared.targets, decision,
                                      prepared.preview, adapter.summarize(prepared))
        return self._answer(request)

    def _answer(self, request: ConfirmationRequest) -> bool:
        approver = self.approver
        return callable(approver) and approver(request) is True  # anything but True is a no

    def parked(self, entry_id: str) -> dict[str, Any]:
        """The policy source and protected paths an action was parked under."""
        detail = self.journal.detail(entry_id)
        return detail.record.get("parked", {}) if detail is not None else {}

    def approve(self, entry_id: str, *, by: str = "human") -> Result:
        """Run an action parked for confirmation, as approved by `by`. It is prepared and decided
        again against this runtime's policy, budgets and protected paths: rules that deny still
        deny, and an approval covers only the effect it was shown: if the effect grew (more rows,
        files, bytes, other targets) or new rules match, it does not run but is parked again with
        the new preview (the result says what changed)."""
        session, action = self._parked(entry_id)
        return self._execute(session, action, approval={"by": by, "entry": entry_id})

    def _recheck_approval(self, session: "Session", model: Any, adapter: Adapter, prepared: Prepared,
                          decision: Decision, approval: dict[str, Any]) -> Result | None:
        """Under the lock: the parked entry is still waiting, and its effect has not grown. Records
        the approval and returns None, or parks the action again and returns that result."""
        eid = approval["entry"]
        self._parked(eid)  # decided meanwhile by another process: not run twice
        parked = self.journal.record(entry_seq(eid))
        target = adapter.redact(adapter.shown_target(model.type, prepared.targets))
        fields = {n for n, f in adapter.preview.model_fields.items() if field_kind(f.annotation) != "detail"}
        if decision.verdict == "deny":  # refused and journaled as a denial; the parked entry stays parked
            return None
        changes = _grown(parked, target, prepared.preview, decision, fields)
        if not changes:
            self.journal.append("approved", entry=eid, by=approval["by"], durable=True)
            return None
        why = "; ".join(changes)
        with self.journal.transaction(durable=True) as tx:
            seq, _ = tx.append("entry", status="awaiting_approval", preview=prepared.preview, reparked=eid,
                               parked=self._parked_under(),
                               **self._entry_fields(tx, session, model, adapter, prepared.targets, decision))
            tx.append("rejected", entry=eid, by="goex", reason=f"not run: its effect changed since it was parked "
                                                               f"({why}); parked again as {entry_id(seq)}")
        new = entry_id(seq)
        return Result(False, new, error=f"not run: the effect changed since {eid} was parked ({why}); it is parked "
                                        f"again as {new} with the new preview: approve it with `goex approve --root "
                                        f"DIR {new}` or reject it with `goex reject --root DIR {new}`",
                      status="awaiting_approval", session=session.id, type=model.type, decision=decision)

    def reject(self, entry_id: str, *, by: str = "human", reason: str = "") -> None:
        """Refuse an action parked for confirmation; it never runs."""
        self._parked(entry_id)
        self.journal.append("rejected", entry=entry_id, by=by, reason=reason, durable=True)

    def _parked(self, entry_id: str) -> tuple["Session", dict[str, Any]]:
        detail = self.journal.detail(entry_id)
        if detail is None or detail.status != "awaiting_approval":
            state = detail.status if detail is not None else "not in the journal"
            raise GoexError(f"entry {entry_id} is not awaiting approval ({state}); "
                            "`goex log` shows the entries that are")
        return self.session(detail.entry.actor, detail.entry.session), detail.action()

    def _parked_under(self) -> dict[str, Any]:
        """The settings an action is parked under, for `goex approve` to use again: the pack, the
        protected paths, the databases (URLs without their passwords) and the reachable hosts."""
        settings = self._context.settings
        databases = {name: _without_password(url) for name, url in (settings.get("databases") or {}).items()}
        http = settings.get("http")
        hosts = sorted(getattr(http, "hosts", ()) or ())
        return {"policy": self.policy.source, "protected": list(self.protected), "databases": databases,
                "allow_hosts": hosts}

    def _entry_fields(self, tx: Any, session: "Session", model: Any, adapter: Adapter, targets: list[str],
                      decision: Decision | None) -> dict[str, Any]:
        raise NotImplementedError


def _without_password(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", "@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _grown(parked: dict[str, Any], target: str, preview: dict[str, Any], decision: Decision,
           fields: set[str]) -> list[str]:
    """How an action's effect now exceeds what it was parked (and approved) with: new rules that
    match, other targets, preview fields the policy reads that grew or changed."""
    out = []
    before = {m["id"] for m in parked.get("decision", {}).get("rules", ())}
    new = [m.id for m in decision.matches if m.decision != "allow" and m.id not in before]
    if new:
        out.append("now matches " + ", ".join(new))
    if target != parked.get("target"):
        out.append(f"targets {parked.get('target')!r} -> {target!r}")
    old = parked.get("preview") or {}
    for key in sorted(fields & (set(old) | set(preview))):
        was, now = old.get(key), preview.get(key)
        if was != now and _grew(was, now):
            out.append(f"{key} {_shown(was)} -> {_shown(now)}")
    return out


def _grew(was: Any, now: Any) -> bool:
    if isinstance(was, bool) or isinstance(now, bool):
        return True  # a flag that flipped either way (reversible, overwrites, ...): shown again
    if isinstance(now, (int, float)) and isinstance(was, (int, float, type(None))):
        return now > (was or 0)
    if isinstance(now, list) and isinstance(was, (list, type(None))):
        return not {json.dumps(v, sort_keys=True) for v in now} <= {json.dumps(v, sort_keys=True) for v in was or ()}
    return True


def _shown(value: Any) -> str:
    text = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


__all__ = ["Approvals"]
