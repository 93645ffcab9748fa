"""Wrappers for trainers: fold safety cost into the reward, or return Safety-Gymnasium's six-tuple."""

from __future__ import annotations

from typing import Any

import gymnasium


class CostPenalty(gymnasium.Wrapper):
    """reward - lam * info["cost"]: one number for trainers without a cost channel. The
    unpenalised reward stays in info["reward_task"]."""

    def __init__(self, env: gymnasium.Env, lam: float = 1.0):
        super().__init__(env)
        self.lam = float(lam)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        info["reward_task"] = reward
        return obs, float(reward - self.lam * info.get("cost", 0.0)), terminated, truncated, info


class SafetyTuple(gymnasium.Wrapper):
    """`step` returns (obs, reward, cost, terminated, truncated, info), as Safety-Gymnasium and
    OmniSafe do. Not a standard Gymnasium env any more: use it last."""

    # a 6-tuple on purpose (the safe-RL API above), so it cannot keep Gymnasium's signature
    def step(self, action: Any) -> tuple[Any, float, float, bool, bool, dict[str, Any]]:  # type: ignore[override]
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, float(reward), float(info.get("cost", 0.0)), terminated, truncated, info
