"""Run the benchmarks and print one JSON object on stdout; progress and notes go to stderr.

    python benchmarks/run.py --full --save    # the goals, to their interval bounds; saved, RESULTS.md rendered
    python benchmarks/run.py --quick          # every benchmark, wider intervals (the output says so)
    python benchmarks/run.py                  # every benchmark at full sizes
    python benchmarks/run.py --smoke --only frechet,features   # does it run: seconds, figures meaningless
    python benchmarks/run.py --report         # render RESULTS.md from results/*.json, run nothing
    python benchmarks/run.py --compare results/full-8.json results/full-9.json   # two runs' goals side by side

Every benchmark is a function `name(size, **options) -> dict` in the `BENCHMARKS` registry; `goals` in the JSON
collects the ones with a target, each a ratio against a baseline measured in the same run, in pairs, with a 95 %
interval and a verdict that follows it (benchmarks/RESULTS.md, "Method"). Threads are left as the environment sets
them (OMP_NUM_THREADS); the JSON records them, the machine and the commit.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: `benchmarks`, `pipelines`

from benchmarks import report


@dataclass(frozen=True)
class Benchmark:
    """The module holding a benchmark's function (named as the benchmark), the top-level JSON keys RESULTS.md shows
    (the rest stays in the JSON), whether `--full` runs it (a goal or a headline) and the command-line options
    (argparse destinations) it takes as keyword arguments."""

    module: str
    keys: tuple[str, ...]
    is_full: bool = False
    options: tuple[str, ...] = ()

    def function(self, name: str) -> Callable[..., dict[str, object]]:
        return getattr(importlib.import_module(f"benchmarks.{self.module}"), name)


# cheap and self-contained ones first
BENCHMARKS = {
    "time_to_quality": Benchmark("time_to_quality", ("time_to_quality", "time_to_quality_source"), True, ("train",)),
    "frechet": Benchmark(
        "evaluation",
        (
            "frechet_speedup_vs_scipy",
            "frechet_speedup_vs_torchmetrics",
            "frechet_rel_diff",
            "frechet_rel_diff_torchmetrics",
            "frechet_agreement_verdict",
        ),
        True,
    ),
    "langevin": Benchmark("loop", ("langevin_share",), True),
    "features": Benchmark(
        "evaluation", ("feature_throughput", "feature_throughput_cpu", "stats_update_cost", "stats_peak_mb")
    ),
    "sampling": Benchmark("evaluation", ("sampling_digits", "sampling_grid25")),
    "cd_cost": Benchmark(
        "loop",
        ("cd_k_step_cost", "cd_k_energy_fb_cost", "cd_k_bound", "cd_k_within_bound", "cd_k_chain_step_over_energy_fb"),
    ),
    "image_steps": Benchmark(
        "loop", ("image_step_ms", "image_step_cpu_ms", "image_step_cost_vs_digits", "image_step_threads")
    ),
    "stage_costs": Benchmark("costs", ("stage_costs",)),
    "import_cost": Benchmark("costs", ("import_cost",)),
    "logging_async": Benchmark("costs", ("logging_async",)),
    "streaming": Benchmark("loop", ("stream_throughput_ratio",)),
    "throughput": Benchmark(
        "throughput",
        ("train_throughput_ratio", "train_throughput_ratio_wall", "train_throughput_stopping", "train_examples_per_s"),
        True,
        ("breakdown",),
    ),
    "pipeline_overhead": Benchmark(
        "orchestration",
        (
            "prefect_overhead_frac_within_run",
            "prefect_overhead_stopping",
            "prefect_overhead_frac",
            "prefect_overhead_frac_wall",
            "dvc_noop_s",
            "dvc_calls_extra_cpu_s",
        ),
        True,
    ),
    "tune": Benchmark("orchestration", ("tune_trials_per_hour", "tune")),
    "fid_noise": Benchmark("fid_noise", ("fid_noise",), options=("project",)),
    "gpu": Benchmark("loop", ("gpu",)),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="tiny sizes: does each benchmark run (never saved)")
    size.add_argument("--quick", action="store_true", help="small sizes: minutes on 2 CPU cores, wider intervals")
    size.add_argument("--full", action="store_true", help="the goals and headlines, to their interval bounds")
    parser.add_argument("--only", help=f"comma-separated subset of {list(BENCHMARKS)}")
    parser.add_argument("--save", action="store_true", help="write results/<size>-<n>.json and render RESULTS.md")
    parser.add_argument("--report", action="store_true", help="render RESULTS.md from results/*.json; run nothing")
    parser.add_argument("--compare", nargs="+", type=Path, metavar="JSON", help="goals of saved runs side by side")
    parser.add_argument("--train-ttq", dest="train", action="store_true", help="time_to_quality: train the seeds now")
    parser.add_argument("--breakdown", action="store_true", help="throughput: also time the stage variants")
    parser.add_argument("--project", type=Path, help="fid_noise: a trained project (default: train a tiny one)")
    return parser


def _summary(function: Callable[..., object]) -> str:
    """The first sentence of a benchmark function's docstring."""
    text = " ".join((function.__doc__ or "").split("\n\n")[0].split())
    return text.split(". ")[0].rstrip(".") + "."


def render_results_md() -> str:
    """RESULTS.md as the saved runs and the registry give it."""
    registry = {name: (_summary(bench.function(name)), bench.keys) for name, bench in BENCHMARKS.items()}
    return report.render(report.saved_results(), registry)


def _save(result: dict[str, object], size: str) -> Path:
    index = 1 + max((int(p.stem.rsplit("-", 1)[1]) for p in report.RESULTS_DIR.glob(f"{size}-*.json")), default=0)
    path = report.RESULTS_DIR / f"{size}-{index}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    report.RESULTS_MD.write_text(render_results_md())
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args = parser.parse_args(argv)
    if args.report:
        report.RESULTS_MD.write_text(render_results_md())
        return 0
    if args.compare:
        sys.stdout.write(report.compare_table([json.loads(path.read_text()) for path in args.compare]))
        return 0
    size = "smoke" if args.smoke else "quick" if args.quick else "full"
    if args.smoke and args.save:
        parser.error("--smoke checks that benchmarks run; its figures are not results, so it is never saved")
    default = [name for name, bench in BENCHMARKS.items() if bench.is_full or not args.full]
    selected = [name.strip() for name in args.only.split(",") if name.strip()] if args.only else default
    unknown = set(selected) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {list(BENCHMARKS)}")

    # stdout is for the JSON alone: anything else written to fd 1 (rich, Prefect, DVC, C libraries) goes to stderr
    json_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    from benchmarks.harness import machine, note, run_info, stopwatch

    result: dict[str, object] = {"run": run_info(argv), "mode": size, "machine": machine(), "seconds": {}}
    with stopwatch() as total:
        for name in selected:
            bench = BENCHMARKS[name]
            note(f"== {name}")
            options = {option: getattr(args, option) for option in bench.options if getattr(args, option)}
            with stopwatch() as took:
                result |= bench.function(name)(size, **options)
            result["seconds"][name] = round(took[0].wall, 1)
    result["seconds"]["total"] = round(total[0].wall, 1)
    result["machine"]["load_avg_1m_end"] = round(os.getloadavg()[0], 2)  # type: ignore[index]
    result = {"goals": report.goals(result)} | result
    if args.save:
        note(f"saved {_save(result, size).name}; RESULTS.md rendered")
    json.dump(result, json_out, indent=2)
    json_out.write("\n")
    json_out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
