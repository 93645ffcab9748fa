"""Start-up time: `import goex` and `goex --help`, against `python -c pass`, in the same run.

Each is a fresh interpreter (what every CLI call and every worker process pays). Targets:
`import goex` at most 0.25 s and `goex --help` at most 0.35 s (absolute, on these machines),
printed with the ratio to a bare interpreter start measured interleaved with them.

    .venv/bin/python benchmarks/startup.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = Path(sys.executable).with_name("goex")  # the installed command, as a user runs it
RUNS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "import goex": [sys.executable, "-c", "import goex"],
    "goex --help": [str(SCRIPT), "--help"] if SCRIPT.exists() else
                   [sys.executable, "-c", "import sys; from goex.cli import main; sys.argv[0] = 'goex'; main(['--help'])"],
}
TARGETS = {"import goex": 0.25, "goex --help": 0.35}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    n = 3 if parser.parse_args().quick else 21
    times: dict[str, list[float]] = {name: [] for name in RUNS}
    for _ in range(n):  # interleaved: a burst of load hits every kind alike
        for name, argv in RUNS.items():
            t = time.perf_counter()
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["python -c pass"])
    print(f"{'':16} {'median':>9} {'vs python':>10}  target")
    for name, samples in times.items():
        med = statistics.median(samples)
        target = TARGETS.get(name)
        verdict = f"<= {target:.2f} s: {'meets' if med <= target else 'MISSES'}" if target else "(baseline)"
        print(f"{name:16} {med:8.3f}s {med / base:9.1f}x  {verdict}")
    print("\nSummary")
    for name, target in TARGETS.items():
        med = statistics.median(times[name])
        print(f"  {name}: {med:.3f} s ({med / base:.1f}x python -c pass); target {target} s: "
              f"{'meets' if med <= target else 'MISSES'}")


if __name__ == "__main__":
    main()
