"""Run the benchmarks and print one JSON object on stdout; progress and notes go to stderr.

    python benchmarks/run.py --full           # the goals, to their interval bounds: 30-50 min on 2 CPU cores
    python benchmarks/run.py --quick          # all of them in minutes, wider intervals (the output says so)
    python benchmarks/run.py                  # all of them at full sizes
    python benchmarks/run.py --quick --only frechet,features

Every goal is a ratio against a baseline measured in the same run, in pairs (A B, then B A) so that load
drift falls on both arms; each ratio comes with a 95 % interval and the number of pairs behind it, and its
verdict follows the interval ("met", "not met", "cannot tell at this noise"; benchmarks/stats.py). `goals`
in the JSON collects them. Threads are left as the environment sets them (OMP_NUM_THREADS); the JSON records them.
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
    "time_to_quality",
    "frechet",
    "langevin",
    "features",
    "sampling",
    "cd_cost",
    "image_steps",
    "stage_costs",
    "streaming",
    "throughput",
    "pipeline_overhead",
    "gpu",
)
# --full: what RESULTS.md reports, the benchmarks behind a goal or the headline (the others: --only)
FULL = ("time_to_quality", "frechet", "langevin", "throughput", "pipeline_overhead")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes: a few minutes on 2 CPU cores")
    mode.add_argument("--full", action="store_true", help=f"{FULL} to their interval bounds, 30-50 min")
    parser.add_argument("--only", help=f"comma-separated subset of {BENCHMARKS}")
    parser.add_argument(
        "--train-ttq", action="store_true", help="time_to_quality: train the seeds now (~15 min more), not read them"
    )
    parser.add_argument(
        "--breakdown", action="store_true", help="throughput: also time the stage variants (minutes more)"
    )
    args = parser.parse_args(argv)
    only = args.only or ",".join(FULL if args.full else BENCHMARKS)
    selected = [name.strip() for name in only.split(",") if name.strip()]
    unknown = set(selected) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {BENCHMARKS}")

    # stdout is for the JSON alone: anything else written to fd 1 (rich, Prefect, DVC, C libraries) goes to stderr
    json_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    from benchmarks.goals import goals
    from benchmarks.timing import machine, note, stopwatch

    mode = "quick" if args.quick else "full" if args.full else "all"
    result: dict[str, object] = {"mode": mode, "quick": args.quick, "machine": machine(), "seconds": {}}
    with stopwatch() as total:
        for name in selected:
            module = importlib.import_module(f"benchmarks.{name}")
            note(f"== {name}")
            kwargs = {"breakdown": True} if name == "throughput" and args.breakdown else {}
            kwargs |= {"train": True} if name == "time_to_quality" and args.train_ttq else {}
            with stopwatch() as took:
                result |= module.measure(args.quick, **kwargs)
            result["seconds"][name] = round(took[0].wall, 1)
    result["seconds"]["total"] = round(total[0].wall, 1)
    result["machine"]["load_avg_1m_end"] = round(os.getloadavg()[0], 2)  # type: ignore[index]
    result = {"goals": goals(result)} | result
    json.dump(result, json_out, indent=2)
    json_out.write("\n")
    json_out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
