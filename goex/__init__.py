"""goex: a safe execution runtime for AI agents.

Every action is analysed, checked against a policy, journaled write-ahead with what it takes to
undo it, applied and traced; any session can be rolled back to any checkpoint.
"""

__version__ = "0.1.0"

from .actions import Action, action_schema, parse_action  # noqa: E402
from .adapters.http.adapter import CompensationFailed, HostRefused, HttpConfig  # noqa: E402
from .adapters.http.compensations import Compensations  # noqa: E402
from .adapters.http.secrets import SecretRefused, SecretStore  # noqa: E402
from .errors import (  # noqa: E402
    ActionError,
    ActionFailed,
    GoexError,
    JournalBusy,
    JournalCorrupt,
    JournalUnavailable,
    PathRefused,
    PolicyDenied,
    RecoveryNeeded,
    UndoConflict,
)
from .policy import Decision, Policy, PolicyError, PythonRule, load_policy  # noqa: E402
from .runtime import ConfirmationRequest, Result, Runtime, Session  # noqa: E402

__all__ = [
    "CompensationFailed", "Compensations", "ConfirmationRequest", "HostRefused", "HttpConfig", "SecretRefused", "SecretStore",
    "Action", "ActionError", "ActionFailed", "Decision", "GoexError", "JournalBusy", "JournalCorrupt", "JournalUnavailable",
    "PathRefused", "Policy", "PolicyDenied", "PolicyError", "PythonRule", "RecoveryNeeded", "Result", "Runtime", "Session", "UndoConflict",
    "action_schema", "load_policy", "parse_action", "__version__",
]
