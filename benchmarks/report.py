"""Benchmark results as tables: the goals of one result, two or more results' goals side by side, and
benchmarks/RESULTS.md, rendered from the saved results (results/*.json) and never edited by hand."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"
RESULTS_MD = Path(__file__).with_name("RESULTS.md")
PAIRED = {  # prefix of a paired goal's keys -> (its benchmark, its figure)
    "train_throughput": ("throughput", "train_throughput_ratio"),
    "prefect_overhead": ("pipeline_overhead", "prefect_overhead_frac"),
}
MAX_LIST = 6  # longer lists (per-round seconds, histories) stay in the JSON
MAX_DEPTH = 4


# --- goals


def _row(
    benchmark: str, goal: str, interval: dict[str, Any], verdict: str, stopping: dict[str, Any] | None = None
) -> dict:
    row = {
        "benchmark": benchmark,
        "goal": goal,
        "clock": interval.get("clock"),
        "estimate": interval["estimate"],
        "low": interval["low"],
        "high": interval["high"],
        "half_width": interval["half_width"],
        "pairs": interval.get("pairs", interval.get("n")),
        "verdict": verdict,
    }
    if stopping is not None:
        row |= {
            "bound": stopping["bound"],
            "is_bound_met": stopping["half_width"] <= stopping["bound"],
            "stopped": stopping["stopped"],
        }
        if "note" in stopping:
            row["note"] = stopping["note"]
    return row


def _stopping_of(result: dict[str, Any], prefix: str, figure: str) -> dict[str, Any] | None:
    """The stopping rule of `prefix`'s pairs if its bound was sought on `figure`: a rule that names no figure
    bounds the paired ratio (throughput's), the Prefect rule names the within-run overhead."""
    stopping = result.get(f"{prefix}_stopping")
    if stopping is None or stopping.get("figure", PAIRED[prefix][1]) != figure:
        return None
    return stopping


def _paired_rows(result: dict[str, Any], prefix: str) -> dict[str, dict]:
    """A paired goal's CPU-time row and its wall-time row from the same pairs."""
    benchmark, figure = PAIRED[prefix]
    goal = result[figure]["goal"]
    return {
        figure: _row(
            benchmark, goal, result[figure], result[f"{prefix}_verdict"], _stopping_of(result, prefix, figure)
        ),
        f"{figure}_wall": _row(
            benchmark,
            goal + " (wall time, same pairs; no bound sought)",
            result[f"{figure}_wall"] | {"clock": "wall"},
            result[f"{prefix}_verdict_wall"],
        ),
    }


def goals(result: dict[str, Any]) -> dict[str, dict]:
    """One row per goal present in `result` (benchmarks that did not run leave theirs out), each naming the
    benchmark it comes from."""
    rows = {}
    if "prefect_overhead_frac_within_run" in result:
        within = result["prefect_overhead_frac_within_run"]
        rows["prefect_overhead_frac_within_run"] = _row(
            "pipeline_overhead",
            within["goal"] + " (within each flow run: own, server and extra DVC CPU over its stages' CPU)",
            within,
            result["prefect_overhead_verdict_within_run"],
            _stopping_of(result, "prefect_overhead", "prefect_overhead_frac_within_run"),
        )
    for prefix, (_, figure) in PAIRED.items():
        if figure in result:
            rows |= _paired_rows(result, prefix)
    if "frechet_speedup_vs_scipy" in result:
        rows["frechet_speedup_vs_scipy"] = _row(
            "frechet",
            ">= 1 (and relative difference <= 1e-6: " + result["frechet_agreement_verdict"] + ")",
            result["frechet_speedup_vs_scipy"] | {"clock": "cpu"},
            result["frechet_speedup_vs_scipy_verdict"],
        )
    for dataset, ttq in (result.get("time_to_quality") or {}).items():
        if ttq.get("seconds_to_target"):
            target = f"{ttq['metric']} target {ttq['threshold']:.4g}"
            rows[f"time_to_quality_{dataset}_s"] = _row(
                "time_to_quality",
                f"reported: seconds to {target}",
                ttq["seconds_to_target"] | {"clock": "wall"},
                "reported",
            )
            rows[f"time_to_quality_{dataset}_cpu_s"] = _row(
                "time_to_quality",
                f"reported: CPU seconds (this process) to {target}",
                ttq["cpu_seconds_to_target"] | {"clock": "cpu"},
                "reported",
            )
    for dataset, share in (result.get("langevin_share") or {}).items():
        rows[f"langevin_share_{dataset}"] = _row(
            "langevin",
            f"reported: share of a training step in Langevin chains (cd_k {share['cd_k']})",
            share["share_cpu"] | {"clock": "cpu"},
            "reported",
        )
    return rows


# --- tables


def overlaps(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two intervals ({"low", "high"}) share a point."""
    return a["low"] <= b["high"] and b["low"] <= a["high"]


def _goal_cell(row: dict[str, Any]) -> str:
    bound = ""
    if "bound" in row:
        bound = f" (bound {row['bound']}{'' if row['is_bound_met'] else ', **not reached**: ' + row['stopped']})"
    return (
        f"{row['estimate']:.4g} [{row['low']:.4g}, {row['high']:.4g}], ±{row['half_width']:.3g}{bound}, "
        f"n = {row['pairs']}: **{row['verdict']}**"
    )


def _table(head: list[str], rows: Iterable[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]


def compare_table(results: list[dict[str, Any]]) -> str:
    """The goals every result holds, run beside run, and whether all their intervals overlap the first's."""
    names = [name for name in results[0]["goals"] if all(name in r["goals"] for r in results)]
    head = ["goal", "target", "clock", *(f"run {i + 1}" for i in range(len(results))), "overlap"]
    rows = []
    for name in names:
        cells = [r["goals"][name] for r in results]
        is_overlap = all(overlaps(cells[0], cell) for cell in cells[1:])
        rows.append(
            [
                f"`{name}`",
                cells[0]["goal"],
                str(cells[0]["clock"]),
                *map(_goal_cell, cells),
                "yes" if is_overlap else "no",
            ]
        )
    return "\n".join(_table(head, rows)) + "\n"


# --- RESULTS.md


def _run_number(name: str) -> int:
    """The number a saved run's file ends in (full-9.json: 9), counted up by `run.py --save`."""
    return int(re.search(r"(\d+)\.json$", name).group(1))  # type: ignore[union-attr]


def saved_results(directory: Path = RESULTS_DIR) -> list[tuple[str, dict[str, Any]]]:
    """(file name, result) of every saved run, oldest first: by the run's date (a day alone sorts before that day's
    timed runs), then by the number its file ends in."""
    runs = []
    for path in directory.glob("*.json"):
        result = json.loads(path.read_text())
        if "seconds" in result:  # a run of run.py (results/ also holds benchmark inputs)
            runs.append((path.name, result))
    return sorted(runs, key=lambda run: (run[1]["run"]["date"], _run_number(run[0])))


def _number(value: float) -> str:
    if math.isinf(value) or math.isnan(value):
        return str(value)
    return f"{value:.4g}"


def _interval(value: dict[str, Any]) -> str:
    n = value.get("pairs", value.get("n"))
    return f"{_number(value['estimate'])} [{_number(value['low'])}, {_number(value['high'])}]" + (
        f", n = {n}" if n is not None else ""
    )


def _is_interval(value: object) -> bool:
    return isinstance(value, dict) and {"estimate", "low", "high"} <= value.keys()


def _figures(path: str, value: object, depth: int = 0) -> Iterable[list[str]]:
    """(figure, value) rows of one JSON value: intervals in one cell, dicts flattened to dotted paths, long lists
    left to the JSON."""
    if _is_interval(value):
        yield [f"`{path}`", _interval(value)]  # type: ignore[arg-type]
    elif isinstance(value, dict):
        if depth < MAX_DEPTH:
            for key, item in value.items():
                yield from _figures(f"{path}.{key}", item, depth + 1)
    elif isinstance(value, list):
        if not value:
            yield [f"`{path}`", "none"]
        elif len(value) <= MAX_LIST and not any(isinstance(item, dict | list) for item in value):
            yield [f"`{path}`", ", ".join(_number(v) if isinstance(v, float) else str(v) for v in value)]
    elif isinstance(value, float):
        yield [f"`{path}`", _number(value)]
    else:
        yield [f"`{path}`", "—" if value is None else str(value)]


def _host(machine: dict[str, Any]) -> str:
    gpu = ", CUDA" if machine.get("cuda_available") else ""
    return (
        f"{machine['cpu_model']}, {machine['cpus_usable']} CPUs, torch threads {machine['torch_num_threads']}"
        f"{gpu}, load {machine['load_avg_1m']}"
    )


def _heading(name: str, result: dict[str, Any]) -> str:
    run = result["run"]
    commit = run["commit"] + (" (with uncommitted changes)" if run["is_dirty"] else "")
    where = f"[results/{name}](results/{name})"
    return f"> {where} · {commit} · {run['date']} · {_host(result['machine'])} · `{run['command']}`"


METHOD = """\
- **Ratios in pairs.** Every timing benchmark is a ratio of two arms measured in the same run, in rounds run back to
  back in alternating order (A B, then B A, ...: `harness.record_round`), so a change in the machine's load falls on
  both arms of a round. Each ratio has a **95 % interval**: a paired t-interval on the log of the per-round ratios,
  mapped back, the estimate being the geometric mean (`stats.ratio_interval`, tested in
  `tests/test_benchmarks_stats.py` with simulated coverage); `n` is the number of pairs. Throughput also has a pair
  bootstrap beside it. Figures with no baseline arm are t-intervals over repeats or seeds (`stats.mean_interval`):
  the Langevin share of a step, time to quality, FID noise; memory peaks are one fresh process per arm.
- **Verdicts follow the interval**: "met" when the whole interval is on the goal's side, "not met" when all of it is
  on the other side, otherwise "cannot tell at this noise". The point estimate alone never decides.
- **Sequential stopping**: `--full` adds pairs until the half-width is within the goal's bound (throughput 0.02,
  Prefect overhead 0.03), after a minimum number of pairs, or until a cap on pairs or seconds (`stopping.stopped`:
  "bound met", "pair cap" or "time cap"). Two pairs always run, because one pair gives no interval. `--quick` and
  `--smoke` use fewer pairs and wider bounds and say so in `note`; `--smoke` only checks that a benchmark runs and
  is never saved.
- **Short arms**: throughput pairs 100-step arms: the load of a shared machine changes over tens of seconds, so the
  two arms of a short pair see the same load, and many short pairs give a narrower interval than a few long ones.
- **Clock**: verdicts use CPU time (this process and its finished children; the Prefect server's CPU is added to
  the flow arm), chosen before measuring because time spent waiting for a core is not counted. Wall time is
  reported beside it from the same pairs. GPU settings are compared on wall time, the clock stopping when the device
  is done.
- **The Prefect overhead is measured within each flow run**: the flow process's own CPU (Prefect's engine, its log
  shipping, the flow's own code), the Prefect server's CPU and the three extra DVC start-ups of a stage-by-stage flow,
  over the CPU of the stages' subprocesses less those start-ups; a t-interval over the runs, widened by the
  start-ups' own interval. Numerator and denominator come from the same run, so the host's drift between runs drops
  out; the paired flow / `dvc repro` ratio is reported beside it as the end-to-end cross-check.
- **Threads** are left as the environment sets them; the runs here used `OMP_NUM_THREADS=1`, and each result
  records its machine (CPU, cores, torch threads, load average at start and end)."""


def render(runs: list[tuple[str, dict[str, Any]]], registry: dict[str, tuple[str, tuple[str, ...]]]) -> str:
    """RESULTS.md from the saved runs: the method, the runs, each goal and each benchmark's figures as the latest
    run holding it measured them. `registry`: benchmark name -> (what it measures, the JSON keys it reports)."""
    lines = [
        "# Benchmark results",
        "",
        "Rendered by `python benchmarks/run.py --report` from the saved runs in [results/](results/) (a run saved with",
        "`--save` renders it too): change `benchmarks/report.py`, not this file. Each benchmark shows the latest saved",
        "run that holds it; older runs stay as JSON, and `python benchmarks/run.py --compare A.json B.json` sets two",
        "runs' goals side by side.",
        "",
        "```bash",
        "python benchmarks/run.py --full --save      # the goals, to their interval bounds",
        "python benchmarks/run.py --quick --save     # every benchmark, wider intervals",
        "python benchmarks/run.py --smoke --only cd_cost,frechet   # does it run: seconds, figures meaningless",
        "python benchmarks/run.py --only time_to_quality --train-ttq --save   # retrain the time-to-quality seeds",
        "```",
        "",
        "## Method",
        "",
        METHOD,
        "",
        "## Runs",
        "",
        *_table(
            ["file", "commit", "date", "host", "command", "benchmarks"],
            (
                [
                    f"[{name}](results/{name})",
                    r["run"]["commit"] + ("+" if r["run"]["is_dirty"] else ""),
                    r["run"]["date"],
                    _host(r["machine"]),
                    f"`{r['run']['command']}`",
                    ", ".join(n for n in r["seconds"] if n != "total"),
                ]
                for name, r in reversed(runs)
            ),
        ),
        "",
        "A commit followed by + ran with uncommitted changes.",
        "",
        "## Goals",
        "",
        "Each goal as the latest saved run of its benchmark measured it.",
        "",
    ]
    latest = {}
    for benchmark in registry:
        holding = [(name, result) for name, result in runs if benchmark in result["seconds"]]
        if holding:
            latest[benchmark] = holding[-1]
    goal_rows = [
        [f"`{goal}`", row["goal"], str(row["clock"]), _goal_cell(row), f"[{name}](results/{name})"]
        for benchmark, (name, result) in latest.items()
        for goal, row in goals(result).items()
        if row["benchmark"] == benchmark
    ]
    lines += _table(
        ["goal", "target", "clock", "estimate [95 % interval], half-width, pairs: verdict", "run"], goal_rows
    )
    for benchmark, (summary, keys) in registry.items():
        lines += ["", f"## {benchmark}", "", summary, ""]
        if benchmark not in latest:
            lines.append(f"No saved run yet: `python benchmarks/run.py --only {benchmark} --save`.")
            continue
        name, result = latest[benchmark]
        lines += [_heading(name, result), ""]
        rows = (row for key in keys if key in result for row in _figures(key, result[key]))
        lines += _table(["figure", "value"], rows)
    return "\n".join(lines) + "\n"
