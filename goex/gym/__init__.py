"""goex as Gymnasium environments. Importing this module registers them:

    import gymnasium, goex.gym
    env = gymnasium.make("goex/Task-v0", task="files-clean-logs")
    env = gymnasium.make("goex/Suite-v0", suite="default")   # a task drawn at each reset(seed=...)

In a subprocess (vector environments), `gymnasium.make("goex.gym:goex/Task-v0", ...)` imports
this module first. See docs/gym.md.
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

from .agents import AGENTS, make_agent
from .env import GoexEnv, SuiteEnv, TaskEnv
from .grade import grader
from .task import SERVICE_ALIAS, Task, TaskError, load_suite, load_task, task_ids
from .world import ResetDrift
from .wrappers import CostPenalty, SafetyTuple

for _id, _entry in (("goex/Task-v0", "goex.gym.env:TaskEnv"), ("goex/Suite-v0", "goex.gym.env:SuiteEnv")):
    if _id not in registry:
        register(id=_id, entry_point=_entry, disable_env_checker=False)

__all__ = ["AGENTS", "CostPenalty", "GoexEnv", "ResetDrift", "SERVICE_ALIAS", "SafetyTuple", "SuiteEnv", "Task",
           "TaskEnv", "TaskError", "grader", "load_suite", "load_task", "make_agent", "task_ids"]
