"""The runtime: every action goes prepare -> decide -> journal -> apply -> report.

- `pipeline.py`: `Runtime` and `Session`, the action pipeline, budgets, journaling
- `approvals.py`: confirmation, parking, approve / reject
- `undo.py`: undo and rollback
- `recovery.py`: interrupted entries and unknown outcomes
- `results.py`: `Result`, `ConfirmationRequest`, `RecoveryReport`
"""

from .pipeline import Runtime, Session
from .results import Approver, ConfirmationRequest, RecoveryReport, Result

__all__ = ["Approver", "ConfirmationRequest", "RecoveryReport", "Result", "Runtime", "Session"]
