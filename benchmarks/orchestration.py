"""Orchestration costs on throwaway projects (harness.make_project: git + DVC, the repo's dvc.yaml and sources,
tiny params), each with its own MLflow SQLite store, beside a temporary Prefect server.

- `pipeline_overhead`: the cdgan-pipeline flow over `dvc repro` of the same four stages, within each flow run and
  in interleaved pairs; and `dvc repro` when nothing changed.
- `tune`: cdgan-tune's seconds per trial over one plain `dvc repro evaluate` in a trial-like workspace (the cost of
  a trial without Optuna, Prefect or the MLflow polling), in interleaved rounds.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import psutil
import yaml
from benchmarks.harness import (
    REPO,
    Seconds,
    Size,
    Timing,
    interleaved,
    make_project,
    median,
    note,
    own_store,
    prefect_server,
    ratios,
    record_round,
    rounded,
    run_command,
    stopwatch,
    timed,
    tiny_raw,
)
from benchmarks.stats import mean_interval, ratio_interval, rounded_interval, run_pairs, shifted, verdict

# --- pipeline_overhead

GOAL = 0.10  # the flow's time over `dvc repro`'s, minus 1, at most
BOUND = 0.03  # half-width of the within-run overhead's 95 % interval that full runs pairs for
FULL_STOPPING = {"bound": BOUND, "min_pairs": 8, "max_pairs": 16, "max_seconds": 1500.0}
PAIRS = {"smoke": 1, "quick": 2}  # smaller sizes: a fixed number of pairs, no bound sought
NOOP_REPEATS = {"smoke": 2, "quick": 6, "full": 6}
CROSS_CHECK_CLOCK = "cpu"  # the paired ratio's clock, chosen before measuring: the flow's CPU counts this process,
# its finished children (dvc, cdgan) and the Prefect server subprocess while the flow ran
TINY_PARAMS = "tiny (benchmarks.harness.TINY)"


def _lock_digest(project: Path) -> str:
    return hashlib.sha256((project / "dvc.lock").read_bytes()).hexdigest()


def _stages() -> tuple[str, ...]:
    return tuple(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])


def measure_dvc_noop(project: Path, repeats: int) -> dict[str, object]:
    """Repeated `dvc repro` with nothing changed, on a project a full `dvc repro` has just brought up to date,
    beside the four `dvc repro --single-item <stage>` calls the Prefect flow makes on it: what running the stages
    one by one costs DVC before any Prefect work."""
    with own_store(project):
        digest = _lock_digest(project)
        arms = {
            "dvc_repro_noop": lambda: timed(lambda: run_command(["dvc", "repro"], project)),
            "dvc_single_items_noop": lambda: timed(
                lambda: [run_command(["dvc", "repro", "--single-item", s], project) for s in _stages()]
            ),
        }
        seconds = interleaved(arms, repeats)
        is_noop = _lock_digest(project) == digest
        status = run_command(["dvc", "status"], project).stdout.strip()
    noop, single = seconds["dvc_repro_noop"], seconds["dvc_single_items_noop"]
    # per round, the four one-stage calls less one whole `dvc repro`: the CPU of the 3 extra DVC start-ups a flow pays
    extra = mean_interval([one_by_one - whole for one_by_one, whole in zip(single["cpu"], noop["cpu"], strict=True)])
    return {
        "dvc_noop_s": round(median(noop["wall"]), 3),
        "dvc_noop": {
            "params": TINY_PARAMS,
            "repeats": repeats,
            "wall_s": rounded(noop["wall"]),
            "cpu_s": rounded(noop["cpu"]),
            "lock_unchanged": is_noop,
            "status": status,
            "single_items_noop_s": round(median(single["wall"]), 3),  # 4 calls, one per stage
            "single_items_wall_s": rounded(single["wall"]),
        },
        "dvc_calls_extra_cpu_s": rounded_interval(extra),
    }


def _children_cpu() -> float:
    """CPU seconds of this process's live child processes: the Prefect server while a flow runs."""
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def _task_seconds(flow_run_id: UUID) -> float:
    """Sum of the flow run's task run times, from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return sum(run.total_run_time.total_seconds() for run in runs)


def _flow_arm(root: Path, counter: list[int], inside: list[dict[str, float]]) -> Callable[[], Timing]:
    """A fresh project (not timed), then the cdgan-pipeline flow on it (timed). `inside` gets, per run, the
    CPU of this process (Prefect's engine, its log shipping, the flow's own code) apart from that of the stages'
    subprocesses (dvc, cdgan), the Prefect server's CPU meanwhile and the time its tasks ran."""
    from pipelines import flows

    def arm() -> Timing:
        counter[0] += 1
        project = make_project(root / f"flow-{counter[0]}", tiny_raw(register={"model_name": "cdgan-bench-flow"}))
        with own_store(project):
            server_cpu, before = _children_cpu(), os.times()
            with stopwatch() as t:
                state = flows.cdgan_pipeline(params_path="params.yaml", project_dir=str(project), return_state=True)
            server_cpu, after = _children_cpu() - server_cpu, os.times()
            if not state.is_completed():
                raise RuntimeError(f"cdgan-pipeline did not complete: {state.message}")
        inside.append(
            {
                "task_s": _task_seconds(state.state_details.flow_run_id),
                "server_cpu_s": server_cpu,
                "own_cpu_s": (after.user - before.user) + (after.system - before.system),
                "stages_cpu_s": (after.children_user - before.children_user)
                + (after.children_system - before.children_system),
            }
        )
        return t[0]

    return arm


def _dvc_arm(root: Path, counter: list[int]) -> Callable[[], Timing]:
    """A fresh identical project (not timed), then `dvc repro` of the four stages (timed)."""

    def arm() -> Timing:
        counter[0] += 1
        project = make_project(root / f"dvc-{counter[0]}", tiny_raw(register={"model_name": "cdgan-bench-flow"}))
        with own_store(project):
            return timed(lambda: run_command(["dvc", "repro"], project))

    return arm


def within_run_overhead(inside: list[dict[str, float]], noop: dict[str, Any]) -> dict[str, object]:
    """Per flow run, in CPU seconds, (own + server + extra) / (stages - extra): this process's own CPU (all of
    it orchestration: Prefect's engine and log shipping, the flow's params check and summary), the Prefect
    server's and the 3 extra DVC start-ups a stage-by-stage flow pays (`extra`, timed apart), over the CPU of the
    stages' subprocesses less those start-ups, which is what one `dvc repro` of the four stages costs.

    This is the paired CPU ratio's quantity with the flow's own stage work as the baseline instead of another
    run's `dvc repro`, so the host's drift between runs drops out. The interval is the t-interval over the runs,
    widened by the start-ups' own interval: its low end uses their low end, its high end their high end."""
    extra = noop["dvc_calls_extra_cpu_s"]

    def fractions(extra_s: float) -> list[float]:
        return [(run["own_cpu_s"] + run["server_cpu_s"] + extra_s) / (run["stages_cpu_s"] - extra_s) for run in inside]

    low, high = mean_interval(fractions(extra["low"]))["low"], mean_interval(fractions(extra["high"]))["high"]
    central = fractions(extra["estimate"])
    return mean_interval(central) | {"low": low, "high": high, "half_width": (high - low) / 2, "per_run": central}


def _paired_overhead(seconds: Seconds, inside: list[dict[str, float]]) -> dict[str, dict]:
    """flow / dvc repro - 1 per pair, as an interval, on wall time and on CPU time (the server's included)."""
    flow, dvc = seconds["flow"], seconds["dvc_repro"]
    flow_cpu = [cpu + run["server_cpu_s"] for cpu, run in zip(flow["cpu"], inside, strict=True)]
    return {
        "wall": shifted(ratio_interval(flow["wall"], dvc["wall"]), -1),
        "cpu": shifted(ratio_interval(flow_cpu, dvc["cpu"]), -1),
    }


def _noop_after_last_dvc_arm(root: Path, repeats: int) -> dict[str, Any]:
    note("dvc repro with nothing changed, and the four one-stage calls, on the last direct-DVC arm's project")
    last_dvc = max(root.glob("dvc-*"), key=lambda path: int(path.name.removeprefix("dvc-")))
    return measure_dvc_noop(last_dvc, repeats)


def pipeline_overhead(size: Size) -> dict[str, object]:
    """The cdgan-pipeline flow's overhead over `dvc repro` of the same four stages, with tiny params (the hard case
    for the goal: the same fixed Prefect cost over the least work), within each flow run and in pairs.

    - within each flow run, on CPU (the figure with the bound and the verdict): this process's own CPU, the
      Prefect server's and the three extra DVC start-ups, over the CPU of the stages' subprocesses less those
      start-ups (`within_run_overhead`). Numerator and denominator come from the same run, so the host's drift
      between runs cancels; on CPU, what Prefect costs inside a task (shipping each output line to the server's
      log) counts on the overhead's side.
    - flow against `dvc repro` on fresh identical projects, in interleaved pairs (flow dvc, dvc flow, ...): the
      end-to-end cross-check.

    Full size runs a warm-up pair first, reported apart (the first flow on a new server pays one-time costs: flow
    registration, caches), then times the DVC start-ups, then adds pairs until the within-run half-width is at
    most BOUND after the minimum of pairs, or a cap is hit. Smaller sizes run PAIRS[size] pairs, no bound."""
    with tempfile.TemporaryDirectory(prefix="cdgan-bench-pipe-") as tmp:
        root = Path(tmp)
        note("Prefect: starting a temporary server (prefect_test_harness)")
        # started first, so both arms run beside an idle server (its start-up is reported, not counted)
        with prefect_server(root / "prefect-home") as server_start:
            note(f"Prefect server up in {server_start.wall:.1f} s")
            counter, inside = [0], []
            arms = {"flow": _flow_arm(root, counter, inside), "dvc_repro": _dvc_arm(root, counter)}
            seconds: Seconds = {}
            warm_up: dict[str, float] = {}
            noop: dict[str, Any] = {}

            def run_pair(index: int) -> None:
                record_round(arms, seconds, index)

            if size == "full":
                note("warm-up pair (reported, not counted): one flow, one dvc repro")
                warm_up = {name: round(arm().cpu, 3) for name, arm in arms.items()}
                warm_up["server_cpu_s"] = round(inside.pop()["server_cpu_s"], 3)
                noop = _noop_after_last_dvc_arm(root, NOOP_REPEATS[size])  # the within-run interval needs it first
                note(f"flow vs dvc repro on fresh projects, pairs until the within-run half-width <= {BOUND}")
                stopped = run_pairs(run_pair, lambda: within_run_overhead(inside, noop)["half_width"], **FULL_STOPPING)
            else:
                pairs = PAIRS[size]
                note(f"flow vs dvc repro on fresh projects: {pairs} pairs, no bound sought ({size})")
                stopped = run_pairs(run_pair, lambda: math.inf, 0.0, pairs, pairs, math.inf)
                noop = _noop_after_last_dvc_arm(root, NOOP_REPEATS[size])
    flow, dvc = seconds["flow"], seconds["dvc_repro"]
    paired = _paired_overhead(seconds, inside)
    within = within_run_overhead(inside, noop)
    stopped |= {"figure": "prefect_overhead_frac_within_run", "bound": BOUND, "half_width": within["half_width"]}
    stopping_out = rounded_interval(stopped)
    if size != "full":
        stopping_out["note"] = f"{size}: {PAIRS[size]} pairs, no bound sought (full: {BOUND})"
    verdicts = {
        name: verdict(i["low"], i["high"], GOAL, "at_most") for name, i in (paired | {"within": within}).items()
    }
    return noop | {
        "prefect_overhead_frac_within_run": rounded_interval(within) | {"clock": "cpu", "goal": f"<= {GOAL}"},
        "prefect_overhead_verdict_within_run": verdicts["within"],
        "prefect_overhead_stopping": stopping_out,
        "prefect_overhead_frac": rounded_interval(paired[CROSS_CHECK_CLOCK])
        | {"clock": CROSS_CHECK_CLOCK, "goal": f"<= {GOAL}"},
        "prefect_overhead_verdict": verdicts[CROSS_CHECK_CLOCK],
        "prefect_overhead_frac_wall": rounded_interval(paired["wall"]),
        "prefect_overhead_verdict_wall": verdicts["wall"],
        "prefect": {
            "params": TINY_PARAMS,
            "pairs": len(flow["wall"]),
            "server_start_s": round(server_start.wall, 3),  # excluded from the overhead
            "flow_wall_s": rounded(flow["wall"]),
            "dvc_repro_wall_s": rounded(dvc["wall"]),
            "flow_cpu_s": rounded(flow["cpu"]),  # this process and its finished children (dvc, cdgan)
            "server_cpu_s": rounded([run["server_cpu_s"] for run in inside]),  # the server during each flow
            "flow_task_s": rounded([run["task_s"] for run in inside]),  # the four tasks, by the Prefect API
            "flow_own_cpu_s": rounded([run["own_cpu_s"] for run in inside]),  # this process alone
            "flow_stages_cpu_s": rounded([run["stages_cpu_s"] for run in inside]),  # its dvc and cdgan children
            "dvc_repro_cpu_s": rounded(dvc["cpu"]),
            "flow_overhead_s": round(median(flow["wall"]) - median(dvc["wall"]), 3),
            "warm_up_cpu_s": warm_up,  # the first pair on the new server (full size), left out of the intervals
        },
    }


# --- tune

SPACE = {"train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-3, "log": True}}
TUNE_SIZES = {"smoke": (1, 1), "quick": (2, 2), "full": (4, 2)}  # (rounds, trials a study)


def _plain_trial_arm(project: Path, root: Path, counter: list[int]) -> Callable[[], Timing]:
    """`dvc repro evaluate` in a fresh workspace holding what a trial's workspace holds (made outside the clock)."""
    from pipelines import flows

    def arm() -> Timing:
        counter[0] += 1
        workspace = root / f"plain-{counter[0]}"
        workspace.mkdir(parents=True)
        for name in (*flows.TRIAL_FILES, "params.yaml"):
            source = project / name
            if source.is_dir():
                shutil.copytree(source, workspace / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(source, workspace / name)
        run_command(["dvc", "init", "--no-scm", "-q"], workspace)
        return timed(lambda: run_command(["dvc", "repro", "evaluate"], workspace))

    return arm


def _study_arm(project: Path, trials: int, counter: list[int], states: list[object]) -> Callable[[], Timing]:
    """A new cdgan-tune study of `trials` trials (pruning is off in practice: the median pruner waits for
    PRUNE_AFTER_TRIALS trials), as seconds per trial: the whole flow (study, parent run, trials, preset, plots)."""
    from pipelines import tune

    def arm() -> Timing:
        counter[0] += 1
        result: dict[str, Any] = {}
        took = timed(
            lambda: result.update(
                tune.cdgan_tune(space="space.yaml", trials=trials, name=f"bench-{counter[0]}", project_dir=str(project))
            )
        )
        states.append(result.get("states"))
        return took / trials

    return arm


def tune(size: Size) -> dict[str, object]:
    """cdgan-tune's seconds per trial for tiny trials over a plain `dvc repro evaluate` of the same params, paired by
    round; < 1 where trials side by side gain from the cores, > 1 where Optuna, Prefect and polling cost more."""
    from pipelines import tune as tune_flow

    rounds, trials = TUNE_SIZES[size]
    with tempfile.TemporaryDirectory(prefix="cdgan-bench-tune-") as tmp:
        root = Path(tmp)
        project = make_project(root / "project", tiny_raw())
        (project / "space.yaml").write_text(yaml.safe_dump(SPACE))
        states: list[object] = []
        with own_store(project), prefect_server(root / "prefect-home") as server_start:
            note(f"Prefect server up in {server_start.wall:.1f} s; {rounds} rounds of a plain trial and a study")
            arms = {
                "plain_trial": _plain_trial_arm(project, root, [0]),
                "tune_trial": _study_arm(project, trials, [0], states),
            }
            seconds = interleaved(arms, rounds)
    per_trial = median(seconds["tune_trial"]["wall"])
    return {
        "tune_trials_per_hour": round(3600 / per_trial, 1),
        "tune": {
            "params": f"{TINY_PARAMS}, digits, 1-parameter space",
            "rounds": rounds,
            "trials_per_study": trials,
            "parallel": tune_flow.PARALLEL,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "wall_s_per_trial": rounded(seconds["tune_trial"]["wall"], 2),
            "plain_dvc_repro_evaluate_s": rounded(seconds["plain_trial"]["wall"], 2),
            "per_trial_over_plain_repro": ratios(seconds, "plain_trial", ("wall",), digits=3)["tune_trial"]["wall"],
            "states": states,
        },
    }
