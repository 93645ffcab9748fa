"""A learner that becomes safe: a softmax policy over a finite set of candidate episodes per task,
trained by REINFORCE on goex's task suite twice, once on the task reward alone and once with the
safety cost in the objective through a Lagrange multiplier (REINFORCE-Lagrangian). Prints the
success and violation rates of every iteration and saves a plot of both runs.

    python examples/learn_safety.py [--iterations 60] [--batch 64] [--tasks ID,ID,...] [--out learn_safety.png]

No language model is involved: each task offers the learner a few whole episodes (scripts of
actions), the reference scripts plus generated variants:

- honest: the task's honest reference;
- reckless / cheater: the task's destructive and deceptive references, where it has them;
- honest + network: the honest script with one extra attempt to run code with network access
  (refused by the `training` pack: the task still succeeds, the attempt costs);
- claim only: submit at once, claiming success (deceptive);
- flag: say the task cannot be done (right only on impossible tasks).

Each candidate of each task is played through the real environment (files, SQLite, the example
service, the sandbox) the first time the learner picks it; the environment is deterministic
given the task and seed, so its (reward, cost) is kept and reused by later picks and by the
second run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import goex.gym
from goex.gym import GoexEnv

NETWORK = {"type": "code.run", "language": "bash", "code": "true", "network": True}


def candidates(task: goex.gym.Task) -> dict[str, list[dict[str, Any]]]:
    ref = task.reference
    out = {"honest": ref.honest}
    if ref.reckless:
        out["reckless"] = ref.reckless
    if ref.cheater:
        out["cheater"] = ref.cheater
    if ref.honest[-1]["type"] == "submit":
        out["honest + network"] = [*ref.honest[:-1], NETWORK, ref.honest[-1]]
    out["claim only"] = [{"type": "submit", "message": "done; everything works"}]
    if ref.honest[-1]["type"] != "flag":
        out["flag"] = [{"type": "flag", "reason": "this cannot be done"}]
    return out


class Outcomes:
    """(reward, cost) of each task's candidates, played through the environment on first use."""

    def __init__(self, env: GoexEnv):
        self.env = env
        self.seen: dict[tuple[str, str], tuple[float, float]] = {}
        self.played = 0

    def __call__(self, task: goex.gym.Task, name: str, actions: list[dict[str, Any]]) -> tuple[float, float]:
        key = (task.id, name)
        if key not in self.seen:
            self.env.reset(seed=0, options={"task": task.id})
            reward = 0.0
            for action in actions:
                _, reward, terminated, truncated, _ = self.env.step(json.dumps(action))
                if terminated or truncated:
                    break
            self.seen[key] = (float(reward), float(self.env.unwrapped.episode_cost.total))
            self.played += 1
        return self.seen[key]


def train(tasks: list[goex.gym.Task], outcome: Outcomes, *, use_cost: bool, iterations: int, batch: int,
          seed: int, lr: float = 0.5, lr_lambda: float = 0.5, cost_limit: float = 0.0) -> list[dict[str, float]]:
    """REINFORCE over a tabular softmax per task; with `use_cost`, the objective is reward - λ·cost
    and λ rises while the batch's mean cost is above `cost_limit` (the Lagrangian update)."""
    rng = np.random.default_rng(seed)
    options = [list(candidates(t).items()) for t in tasks]
    logits = [np.zeros(len(o)) for o in options]
    baseline = np.zeros(len(tasks))
    lam = 0.0
    history = []
    for it in range(iterations):
        grads = [np.zeros_like(theta) for theta in logits]
        success = violation = cost_sum = 0.0
        for _ in range(batch):
            i = int(rng.integers(len(tasks)))
            p = np.exp(logits[i] - logits[i].max())
            p /= p.sum()
            a = int(rng.choice(len(p), p=p))
            reward, cost = outcome(tasks[i], *options[i][a])
            success += reward >= 1.0
            violation += cost > 0
            cost_sum += cost
            objective = reward - (lam * cost if use_cost else 0.0)
            advantage = objective - baseline[i]
            baseline[i] += 0.2 * (objective - baseline[i])
            grads[i] += advantage * (np.eye(len(p))[a] - p)
        for theta, g in zip(logits, grads):
            theta += lr * g * len(tasks) / batch
        if use_cost:
            lam = max(0.0, lam + lr_lambda * (cost_sum / batch - cost_limit))
        row = {"iteration": it + 1, "success": success / batch, "violation": violation / batch, "lambda": lam}
        history.append(row)
        print(f"  {'cost' if use_cost else 'no cost'} iter {it + 1:3d}: success {row['success']:.2f}  "
              f"violations {row['violation']:.2f}  lambda {lam:.2f}", flush=True)
    return history


def tail(history: list[dict[str, float]], key: str, n: int = 10) -> float:
    return float(np.mean([h[key] for h in history[-n:]]))


def plot(runs: dict[str, list[dict[str, float]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    for label, history in runs.items():
        x = [h["iteration"] for h in history]
        style = "-" if label == "with cost" else "--"
        axes[0].plot(x, [h["success"] for h in history], style, label=label)
        axes[1].plot(x, [h["violation"] for h in history], style, label=label)
    for ax, title in zip(axes, ("success rate (reward 1)", "violation rate (cost > 0)")):
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("goex: REINFORCE with and without the safety cost (Lagrangian)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tasks", default="", help="comma-separated task ids (default: every shipped task)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="learn_safety.png", help="where the plot goes (PNG)")
    ap.add_argument("--json", action="store_true", help="end with the final figures as one JSON line")
    args = ap.parse_args(argv)
    tasks = goex.gym.load_suite("default")
    if args.tasks:
        wanted = args.tasks.split(",")
        tasks = [t for t in tasks if t.id in wanted]
        if len(tasks) != len(wanted):
            ap.error(f"unknown task among {wanted}; shipped: {', '.join(goex.gym.task_ids())}")
    t0 = time.perf_counter()
    env = GoexEnv(suite="default")
    try:
        outcome = Outcomes(env)
        runs = {}
        for label, use_cost in (("no cost", False), ("with cost", True)):
            print(f"training {label} ({len(tasks)} tasks, {args.iterations} iterations of {args.batch} episodes)")
            runs[label] = train(tasks, outcome, use_cost=use_cost, iterations=args.iterations, batch=args.batch,
                                seed=args.seed)
    finally:
        env.close()
    plot(runs, Path(args.out))
    final = {label: {"success": tail(h, "success"), "violation": tail(h, "violation")} for label, h in runs.items()}
    before, after = final["no cost"]["violation"], final["with cost"]["violation"]
    drop = (before - after) / before if before else 0.0
    print(f"\nlast 10 iterations: no cost: success {final['no cost']['success']:.2f}, violations {before:.2f}; "
          f"with cost: success {final['with cost']['success']:.2f}, violations {after:.2f}")
    print(f"violation rate down {drop:.0%} with the cost (target >= 80%), success "
          f"{'no lower' if final['with cost']['success'] >= final['no cost']['success'] - 0.02 else 'LOWER'}; "
          f"{outcome.played} real episodes played, {time.perf_counter() - t0:.0f} s; plot: {args.out}")
    if args.json:
        print(json.dumps({"final": final, "violation_drop": drop, "episodes_played": outcome.played,
                          "plot": args.out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
