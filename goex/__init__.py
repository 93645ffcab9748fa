"""goex: a safe execution runtime for AI agents.

Every action is analysed, checked against a policy, journaled write-ahead with what it takes to
undo it, applied and traced; any session can be rolled back to any checkpoint.

Names load on first use (`import goex` stays fast; `goex --help` too).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_WHERE = {
    "Action": "actions", "action_schema": "actions", "parse_action": "actions",
    "CompensationFailed": "adapters.http.adapter", "HostRefused": "adapters.http.adapter",
    "HttpConfig": "adapters.http.adapter", "Compensations": "adapters.http.compensations",
    "SecretRefused": "adapters.http.secrets", "SecretStore": "adapters.http.secrets",
    "Adapter": "adapters.base",
    "ActionError": "errors", "ActionFailed": "errors", "ConfigError": "errors", "GoexError": "errors",
    "JournalBusy": "errors", "JournalCorrupt": "errors", "JournalUnavailable": "errors", "PathRefused": "errors",
    "PolicyDenied": "errors",
    "RecoveryNeeded": "errors", "Refused": "errors", "UndoConflict": "errors",
    "Decision": "policy", "Policy": "policy", "PolicyError": "policy", "PythonRule": "policy", "load_policy": "policy",
    "ConfirmationRequest": "runtime", "Result": "runtime", "Runtime": "runtime", "Session": "runtime",
}

__all__ = [
    "Action",
    "ActionError",
    "ActionFailed",
    "Adapter",
    "CompensationFailed",
    "Compensations",
    "ConfigError",
    "ConfirmationRequest",
    "Decision",
    "GoexError",
    "HostRefused",
    "HttpConfig",
    "JournalBusy",
    "JournalCorrupt",
    "JournalUnavailable",
    "PathRefused",
    "Policy",
    "PolicyDenied",
    "PolicyError",
    "PythonRule",
    "RecoveryNeeded",
    "Refused",
    "Result",
    "Runtime",
    "SecretRefused",
    "SecretStore",
    "Session",
    "UndoConflict",
    "action_schema",
    "load_policy",
    "parse_action",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'goex' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from .actions import Action, action_schema, parse_action
    from .adapters.base import Adapter
    from .adapters.http.adapter import CompensationFailed, HostRefused, HttpConfig
    from .adapters.http.compensations import Compensations
    from .adapters.http.secrets import SecretRefused, SecretStore
    from .errors import (
        ActionError,
        ActionFailed,
        ConfigError,
        GoexError,
        JournalBusy,
        JournalCorrupt,
        JournalUnavailable,
        PathRefused,
        PolicyDenied,
        RecoveryNeeded,
        Refused,
        UndoConflict,
    )
    from .policy import Decision, Policy, PolicyError, PythonRule, load_policy
    from .runtime import ConfirmationRequest, Result, Runtime, Session
