"""Run the benchmarks and print one JSON object on stdout; progress and notes go to stderr.

    python benchmarks/run.py --quick          # all of them in minutes on 2 CPU cores
    python benchmarks/run.py                  # full sizes
    python benchmarks/run.py --quick --only frechet,features

Every goal is a ratio against a baseline measured in the same run, the two interleaved, medians of
repeats. Threads are left as the environment sets them (OMP_NUM_THREADS); the JSON records them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: `benchmarks`, `tests`, `pipelines`

# name -> module under benchmarks/ with measure(quick) -> dict; cheap and self-contained ones first
BENCHMARKS = (
    "frechet",
    "features",
    "sampling",
    "cd_cost",
    "stage_costs",
    "streaming",
    "throughput",
    "pipeline_overhead",
    "gpu",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a few minutes on 2 CPU cores")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {BENCHMARKS}")
    parser.add_argument(
        "--breakdown", action="store_true", help="throughput: also time the stage variants (minutes more)"
    )
    args = parser.parse_args(argv)
    selected = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(selected) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {BENCHMARKS}")

    # stdout is for the JSON alone: anything else written to fd 1 (rich, Prefect, DVC, C libraries) goes to stderr
    json_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    from benchmarks.timing import machine, note, stopwatch

    result: dict[str, object] = {"quick": args.quick, "machine": machine(), "seconds": {}}
    for name in selected:
        module = importlib.import_module(f"benchmarks.{name}")
        note(f"== {name}")
        kwargs = {"breakdown": True} if name == "throughput" and args.breakdown else {}
        with stopwatch() as took:
            result |= module.measure(args.quick, **kwargs)
        result["seconds"][name] = round(took[0].wall, 1)
    json.dump(result, json_out, indent=2)
    json_out.write("\n")
    json_out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
