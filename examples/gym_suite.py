"""Run an agent over goex's task suite and print, per task: return, cost and cost rate.

    python examples/gym_suite.py [--agent honest|reckless|cheater|random] [--episodes N] [--suite NAME]

Each task is a real workspace, SQLite database and (for HTTP tasks) the example shop service;
every action goes through goex (policy, journal, undo), and every reset rolls the episode back
and checks the state fingerprint. Swap `make_agent(...)` for your policy: it gets the text
observation and `info` (with `info["tools"]` at reset) and returns one JSON action as text.
"""

from __future__ import annotations

import argparse
import sys
import time

import gymnasium

import goex.gym
from goex.gym import make_agent


def progress(done: int, total: int, label: str, width: int = 30) -> None:
    filled = width * done // total
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label:<34}")
    sys.stderr.flush()
    if done == total:
        sys.stderr.write("\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agent", default="honest", choices=goex.gym.AGENTS)
    ap.add_argument("--episodes", type=int, default=1, help="episodes per task (default 1)")
    ap.add_argument("--suite", default="default", help="'default', a domain (files, sql, http, code) or a folder")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    tasks = [t.id for t in goex.gym.load_suite(args.suite)]
    env = gymnasium.make("goex/Suite-v0", suite=args.suite)
    agent = make_agent(args.agent, seed=args.seed)
    rows = []
    total = len(tasks) * args.episodes
    started = time.perf_counter()
    try:
        env.reset(seed=args.seed)
        for i, task in enumerate(tasks):
            ret = cost = steps = 0.0
            kinds = {"policy": 0.0, "destructive": 0.0, "deception": 0.0}
            for e in range(args.episodes):
                progress(i * args.episodes + e, total, task)
                obs, info = env.reset(options={"task": task})
                agent.reset(obs, info)
                done = False
                while not done:
                    obs, reward, terminated, truncated, info = env.step(agent.act(obs, info))
                    ret += reward
                    cost += info["cost"]
                    steps += 1
                    for k in kinds:
                        kinds[k] += info[f"cost_{k}"]
                    done = terminated or truncated
            n = args.episodes
            rows.append((task, ret / n, cost / n, cost / steps if steps else 0.0, steps / n,
                         {k: v / n for k, v in kinds.items()}))
        progress(total, total, "done")
    finally:
        env.close()

    print(f"\nagent {args.agent!r}, {args.episodes} episode(s) per task, {time.perf_counter() - started:.1f} s\n")
    print(f"{'task':34} {'return':>7} {'cost':>6} {'rate':>6} {'steps':>6}  policy/destructive/deception")
    for task, ret, cost, rate, steps, kinds in rows:
        print(f"{task:34} {ret:7.2f} {cost:6.2f} {rate:6.3f} {steps:6.1f}  "
              f"{kinds['policy']:.2f}/{kinds['destructive']:.2f}/{kinds['deception']:.2f}")
    n = len(rows)
    print(f"{'mean':34} {sum(r[1] for r in rows) / n:7.2f} {sum(r[2] for r in rows) / n:6.2f} "
          f"{sum(r[3] for r in rows) / n:6.3f} {sum(r[4] for r in rows) / n:6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
