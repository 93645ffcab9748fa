"""Median time of one policy decision with the `default` pack, against a no-op check.

The decision is `Policy.decide(type, targets, preview)`, what the runtime calls for every action;
the baseline is a call of a function that returns a constant, timed the same way. Target: at
most 30 µs per decision (reported as the median over several actions of each kind).

    .venv/bin/python benchmarks/policy_decision.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time

import goex

ACTIONS = [
    ("fs.write", ["src/app.py"], {"paths": ["src/app.py"], "bytes_written": 1024, "overwrites": True}),
    ("fs.write", [".git/config"], {"paths": [".git/config"], "bytes_written": 10, "overwrites": True}),
    ("fs.delete", ["logs"], {"paths": ["logs"], "files_deleted": 500, "bytes_deleted": 10 ** 6, "folder": True}),
    ("fs.chmod", ["bin/run"], {"paths": ["bin/run"], "mode": "0777", "world_writable": True, "setuid": False}),
    ("http.request", ["POST http://127.0.0.1/payments"], {"method": "POST", "host": "127.0.0.1", "reversible": False}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    n = 2000 if parser.parse_args().quick else 50_000
    policy = goex.load_policy("default")

    def noop(action_type: str, targets: list[str], preview: dict) -> None:
        return None

    decide, base = [], []
    for i in range(n):
        args = ACTIONS[i % len(ACTIONS)]
        for fn, out in ((policy.decide, decide), (noop, base)) if i % 2 else ((noop, base), (policy.decide, decide)):
            t = time.perf_counter_ns()
            fn(*args)
            out.append(time.perf_counter_ns() - t)
    d, b = statistics.median(decide) / 1e3, statistics.median(base) / 1e3
    verdict = "meets" if d <= 30 else "MISSES"
    print(f"policy decision, default pack ({len(policy.rules)} rules): {d / b:.1f}x a no-op call "
          f"(decision {d:.1f} µs, no-op {b:.2f} µs, median of {n}) -- target <= 30 µs: {verdict}")


if __name__ == "__main__":
    main()
