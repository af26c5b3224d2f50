"""Start-up: seconds from ``dfl-sim run experiments/ring_digits.yaml`` to the end of round 1.

    python benchmarks/bench_startup.py [--baseline DIR] [--repeats 3]

Each repeat runs the experiment in a fresh interpreter (``python -m dfl run``) and reads
``timings.json``: ``setup_s`` (imports, data, model) and ``to_first_round_s``, both from the CLI's first
line. With ``--baseline DIR`` (a checkout of an older commit, e.g. ``git worktree add /tmp/base REV``)
the two checkouts alternate run by run, so a busy machine slows both alike, and the ratio of the
medians is printed. The data cache is warmed first, as a user's second run finds it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def once(checkout: Path) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "-m", "dfl", "run", "experiments/ring_digits.yaml", "--out", out, "--quiet"],
                       cwd=checkout, check=True, capture_output=True)
        return json.loads(next(Path(out).glob("*/timings.json")).read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, help="a checkout of the commit to compare with")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    checkouts = {"this checkout": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    for path in checkouts.values():
        once(path)  # warm the data cache and the OS's file cache
    found: dict[str, list[dict[str, float]]] = {name: [] for name in checkouts}
    for _ in range(args.repeats):
        for name, path in checkouts.items():
            found[name].append(once(path))
    medians = {}
    for name, runs in found.items():
        medians[name] = {k: statistics.median(r[k] for r in runs) for k in ("setup_s", "to_first_round_s")}
        print(f"{name:14s} setup {medians[name]['setup_s']:.2f} s, to the end of round 1 "
              f"{medians[name]['to_first_round_s']:.2f} s (median of {args.repeats})")
    if args.baseline:
        ratio = medians["this checkout"]["to_first_round_s"] / medians["baseline"]["to_first_round_s"]
        print(f"to the end of round 1: {ratio:.2f}x the baseline's time")


if __name__ == "__main__":
    main()
