"""Error types raised by goex. Each message says what was refused and what to do."""

from __future__ import annotations


class GoexError(Exception):
    """Base class of every error goex raises on purpose."""


class ActionError(GoexError, ValueError):
    """The action is malformed: unknown type, missing or extra fields, bad encoding, too large.

    Nothing was applied and nothing was journaled as applied.
    """


class ConfigError(GoexError, ValueError):
    """A setting is malformed or names something unusable (a flag's value, a database URL, a
    file it names). Nothing was run; the CLI exits 2, as for a malformed action."""


class Refused(GoexError):
    """A well-formed action an adapter will not run (a path out of the workspace, a host not
    allowed, confined SQL, an unsafe sandbox). Journaled as denied by `rule`, for `reason`.

    Adapters raise subclasses; the runtime handles them all alike, by this base."""

    rule: str = "adapter.refused"

    def __init__(self, reason: str, message: str | None = None):
        self.reason = reason
        super().__init__(message if message is not None else reason)


class PathRefused(Refused):
    """A path escapes the workspace, crosses a symlink out of it, names the journal,
    or names something goex will not touch (device files, FIFOs, sockets)."""

    rule = "workspace.confinement"

    def __init__(self, path: str, reason: str):
        self.path = path
        super().__init__(reason, f"path {path!r} refused: {reason}")


class PolicyDenied(GoexError):
    """The policy refused the action (or it needs a confirmation nobody gave)."""

    def __init__(self, message: str, rules: list[str] | None = None, entry_id: str | None = None):
        self.rules = list(rules or [])
        self.entry_id = entry_id
        super().__init__(message)


class ActionFailed(GoexError):
    """The action was allowed but failed while applying; its partial effect was reverted."""

    def __init__(self, message: str, entry_id: str | None = None):
        self.entry_id = entry_id
        super().__init__(message)


class Unforceable(str):
    """A conflict's reason that forcing cannot override: undo would break what others' data
    needs (a row referring to one undo takes back), or the other side refuses it."""


class UndoConflict(GoexError):
    """Undo would overwrite changes made after the action. Nothing of that entry was undone.

    `conflicts` lists (target, what differs). Pass `force=True` (CLI `--force`) to restore the
    recorded before-state anyway, unless `forceable` is False (a reason is `Unforceable`).
    """

    def __init__(self, entry_id: str, conflicts: list[tuple[str, str]]):
        self.entry_id = entry_id
        self.conflicts = conflicts
        self.undone: list[str] = []  # entries of the same undo undone before it stopped here
        self.changed_by: list[str] = []  # who changed each target since: later entries, or outside goex
        self.forceable = not any(isinstance(why, Unforceable) for _, why in conflicts)
        listed = "; ".join(f"{target}: {why}" for target, why in conflicts)
        advice = ("Undo the later changes first, or force it (force=True / --force) to restore the recorded "
                  "before-state and lose those changes." if self.forceable else
                  "Forcing cannot help: undo or remove the later changes that depend on it first.")
        super().__init__(f"cannot undo entry {entry_id}: changed since the action ({listed}). {advice}")

    def explain(self, changed_by: list[str]) -> None:
        """Name who changed each target since (the runtime reads it from the journal)."""
        self.changed_by = list(changed_by)
        if changed_by:
            self.args = (f"{self.args[0]} " + " ".join(f"{line}." for line in changed_by),)


class UndoDeclined(GoexError):
    """A revert that did not happen (a compensating request the service refused): nothing
    changed, and the entry is marked `undo_failed`. `conflict` is True when the service refused
    because the resource changed since the action."""

    def __init__(self, message: str, conflict: bool = False, forceable: bool = False):
        self.conflict = conflict
        self.forceable = forceable  # a conflict that undo with force=True would override
        super().__init__(message)


class OutcomeUnknown(GoexError):
    """The effect may or may not have happened (a request reached the server, no response came
    back): the runtime settles it as recovery would, with the adapter's `recover`."""


class JournalCorrupt(GoexError):
    """The journal fails verification: an entry or blob was edited, removed, reordered or truncated."""

    def __init__(self, message: str, seq: int | None = None, entry_id: str | None = None):
        self.seq = seq
        self.entry_id = entry_id
        super().__init__(message)


class JournalBusy(GoexError):
    """Another program kept the journal database locked for longer than the wait allows."""


class CompactionRefused(GoexError):
    """History before the point asked for cannot be folded yet: something there is still open."""


class JournalUnavailable(GoexError):
    """The journal cannot be written (permissions, disk full, deleted, runtime closed): nothing acts."""


class RecoveryNeeded(GoexError):
    """An interrupted entry could not be brought to a consistent end; no new action runs until it is.

    `outcomes` maps entry ids to what went wrong. Fix the cause and run `goex recover`.
    """

    def __init__(self, outcomes: dict[str, str]):
        self.outcomes = dict(outcomes)
        listed = "; ".join(f"{eid}: {why}" for eid, why in outcomes.items())
        super().__init__(
            f"the journal has interrupted entries that could not be reverted ({listed}); no action runs "
            "until they are: fix the cause and run `goex recover`"
        )
