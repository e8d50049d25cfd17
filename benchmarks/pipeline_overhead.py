"""Orchestration costs: `dvc repro` when nothing changed, and the Prefect flow over the same four stages.

Projects are made as the tests make them (`tests.conftest.make_project`: git + DVC, the repo's dvc.yaml and
sources, tiny params). Each project has its own MLflow SQLite store, so both arms pay the same store set-up.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

import psutil
import yaml
from benchmarks.stats import mean_interval, ratio_interval, rounded_interval, run_pairs, shifted, verdict
from benchmarks.timing import Timing, environ, interleaved, interleaved_round, median, note, rounded, stopwatch, timed


def _conftest() -> Any:
    """tests.conftest, imported without letting it pick OMP_NUM_THREADS for this run."""
    had_omp = "OMP_NUM_THREADS" in os.environ
    from tests import conftest

    if not had_omp:
        os.environ.pop("OMP_NUM_THREADS", None)
    return conftest


def _raw_params(is_tiny: bool, model_name: str) -> dict[str, Any]:
    """Tiny params (tests.conftest.TINY), or the repo's params.yaml as it stands (a default run) on the CPU."""
    conftest = _conftest()
    if is_tiny:
        raw = conftest.tiny_raw(register={"model_name": model_name})
        evaluate = raw["evaluate"]
        if evaluate.get("kid_subset_size", 0) > evaluate["n_samples"]:  # params.yaml's KID subsets need more samples
            evaluate["kid_subset_size"] = evaluate["n_samples"]
        return raw
    raw = yaml.safe_load((conftest.REPO / "params.yaml").read_text())
    return conftest.merged(raw, {"train": {"device": "cpu"}, "register": {"model_name": model_name}})


def _own_store(project: Path) -> AbstractContextManager[None]:
    """MLFLOW_TRACKING_URI -> the project's own SQLite store, for in-process code and every subprocess."""
    return environ(MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")


def _lock_digest(project: Path) -> str:
    return hashlib.sha256((project / "dvc.lock").read_bytes()).hexdigest()


def measure_dvc_noop(project: Path) -> dict[str, object]:
    """Repeated `dvc repro` with nothing changed, on a project a full `dvc repro` has just brought up to date
    (the last direct-DVC arm's).

    Also times the four `dvc repro --single-item <stage>` calls the Prefect flow makes, on the same
    up-to-date project: what running the stages one by one costs DVC before any Prefect work."""
    conftest = _conftest()
    with _own_store(project):
        digest = _lock_digest(project)
        repeats = 6
        arms = {
            "dvc_repro_noop": lambda: timed(lambda: conftest.run(["dvc", "repro"], project)),
            "dvc_single_items_noop": lambda: timed(
                lambda: [conftest.run(["dvc", "repro", "--single-item", s], project) for s in _stages()]
            ),
        }
        seconds = interleaved(arms, repeats)
        is_noop = _lock_digest(project) == digest
        status = conftest.run(["dvc", "status"], project).stdout.strip()
    noop, single = seconds["dvc_repro_noop"], seconds["dvc_single_items_noop"]
    # per round, the four one-stage calls less one whole `dvc repro`: the CPU of the 3 extra DVC start-ups a flow pays
    extra = mean_interval([one_by_one - whole for one_by_one, whole in zip(single["cpu"], noop["cpu"], strict=True)])
    return {
        "dvc_noop_s": round(median(noop["wall"]), 3),
        "dvc_noop": {
            "params": "tiny (tests.conftest.TINY)",
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


def _stages() -> tuple[str, ...]:
    return tuple(yaml.safe_load((_conftest().REPO / "dvc.yaml").read_text())["stages"])


@contextmanager
def _prefect_server(home: Path) -> Iterator[Timing]:
    """A temporary Prefect server (prefect's test harness) with PREFECT_HOME in `home`; yields its start time."""
    # the environment reaches the harness's server subprocess; offline, so no telemetry heartbeat
    with environ(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false"):
        from prefect.settings import PREFECT_HOME, temporary_settings
        from prefect.testing.utilities import prefect_test_harness

        with ExitStack() as stack:
            stack.enter_context(temporary_settings({PREFECT_HOME: home}))  # settings are read at import
            with stopwatch() as start:
                stack.enter_context(prefect_test_harness(server_startup_timeout=120))
            yield start[0]


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


def _flow_arm(root: Path, is_tiny: bool, counter: list[int], inside: list[dict[str, float]]) -> Callable[[], Timing]:
    """A fresh project (not timed), then the cdgan-pipeline flow on it (timed). `inside` gets, per run, the
    CPU of this process (Prefect's engine, its log shipping, the flow's own code) apart from that of the stages'
    subprocesses (dvc, cdgan), the Prefect server's CPU meanwhile and the time its tasks ran."""
    conftest = _conftest()
    from pipelines import flows

    def arm() -> Timing:
        counter[0] += 1
        project = conftest.make_project(root / f"flow-{counter[0]}", _raw_params(is_tiny, "cdgan-bench-flow"))
        with _own_store(project):
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


def _dvc_arm(root: Path, is_tiny: bool, counter: list[int]) -> Callable[[], Timing]:
    """A fresh identical project (not timed), then `dvc repro` of the four stages (timed)."""
    conftest = _conftest()

    def arm() -> Timing:
        counter[0] += 1
        project = conftest.make_project(root / f"dvc-{counter[0]}", _raw_params(is_tiny, "cdgan-bench-flow"))
        with _own_store(project):
            return timed(lambda: conftest.run(["dvc", "repro"], project))

    return arm


GOAL = 0.10  # the flow's time over `dvc repro`'s, minus 1, at most
BOUND = 0.03  # half-width of the within-run overhead's 95 % interval that --full runs pairs for
FULL_STOPPING = {"bound": BOUND, "min_pairs": 8, "max_pairs": 16, "max_seconds": 1500.0}
QUICK_PAIRS = 2
CROSS_CHECK_CLOCK = "cpu"  # the paired ratio's clock, chosen before measuring: the flow's CPU counts this process,
# its finished children (dvc, cdgan) and the Prefect server subprocess while the flow ran


def measure(quick: bool) -> dict[str, object]:
    """The flow's overhead over `dvc repro` of the same four stages, with tiny params, two ways:

    - within each flow run, on CPU (the figure with the bound and the verdict): this process's own CPU, the
      Prefect server's and the three extra DVC start-ups, over the CPU of the stages' subprocesses less those
      start-ups (`within_run_overhead`). Numerator and denominator come from the same run, so the host's drift
      between runs cancels; the wall-time form of it (time outside the tasks) was as steady but blind to what
      Prefect costs inside a task, such as shipping each output line to the server's log.
    - flow against `dvc repro` on fresh identical projects, in interleaved pairs (flow dvc, dvc flow, ...): the
      end-to-end cross-check, whose interval needs about 35 pairs of ~100 s for +-0.03 on this host.

    --full runs a warm-up pair first, reported apart (on a quiet machine the first flow on a new server cost 0.19
    over its `dvc repro`, the next ones 0.05), then times the DVC start-ups, then adds pairs until the within-run
    half-width is at most 0.03 after 8 pairs, or a cap is hit. --quick runs 2 pairs and seeks no bound.

    Tiny params are the hard case for the goal: the same fixed Prefect cost over the least work. A default
    params.yaml pipeline takes minutes a run here, too long for enough pairs."""
    with tempfile.TemporaryDirectory(prefix="cdgan-bench-pipe-") as tmp:
        root = Path(tmp)
        note("Prefect: starting a temporary server (prefect_test_harness)")
        # started first, so both arms run beside an idle server (its start-up is reported, not counted)
        with _prefect_server(root / "prefect-home") as server_start:
            note(f"Prefect server up in {server_start.wall:.1f} s")
            counter, inside = [0], []
            arms = {"flow": _flow_arm(root, True, counter, inside), "dvc_repro": _dvc_arm(root, True, counter)}
            seconds: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in arms}
            warm_up: dict[str, float] = {}
            noop: dict[str, Any] = {}
            if not quick:  # a new server's first flow run pays one-time costs (flow registration, caches): reported
                note("warm-up pair (reported, not counted): one flow, one dvc repro")
                warm_up = {name: round(arm().cpu, 3) for name, arm in arms.items()}
                warm_up["server_cpu_s"] = round(inside.pop()["server_cpu_s"], 3)
                noop = _noop_after_last_dvc_arm(root)  # the within-run interval needs the start-ups' before the pairs

            def run_pair(index: int) -> None:
                for name, timing in interleaved_round(arms, index).items():
                    seconds[name]["wall"].append(timing.wall)
                    seconds[name]["cpu"].append(timing.cpu)

            if quick:
                note(f"flow vs dvc repro on fresh projects: {QUICK_PAIRS} pairs, no bound sought (--quick)")
                stopped = run_pairs(run_pair, lambda: math.inf, 0.0, QUICK_PAIRS, QUICK_PAIRS, math.inf)
                noop = _noop_after_last_dvc_arm(root)
            else:
                note(f"flow vs dvc repro on fresh projects, pairs until the within-run half-width <= {BOUND}")
                stopped = run_pairs(
                    run_pair, lambda: within_run_overhead(inside, noop)["half_width"],
                    **FULL_STOPPING,
                )  # fmt: skip
    flow, dvc = seconds["flow"], seconds["dvc_repro"]
    paired = _paired_overhead(seconds, inside)
    within = within_run_overhead(inside, noop)
    stopped |= {"figure": "prefect_overhead_frac_within_run", "bound": BOUND, "half_width": within["half_width"]}
    stopping_out = rounded_interval(stopped)
    if quick:
        stopping_out["note"] = f"--quick: {QUICK_PAIRS} pairs, no bound sought (--full: {BOUND})"
    verdicts = {
        name: verdict(i["low"], i["high"], GOAL, "at_most") for name, i in (paired | {"within": within}).items()
    }
    return noop | {
        "prefect_overhead_frac_within_run": rounded_interval(within) | {"clock": "cpu", "goal": f"<= {GOAL}"},
        "prefect_overhead_verdict_within_run": verdicts["within"],
        "prefect_overhead_stopping": stopping_out,
        "prefect_overhead_frac": rounded_interval(paired[CROSS_CHECK_CLOCK]) | {"clock": CROSS_CHECK_CLOCK,
                                                                                "goal": f"<= {GOAL}"},
        "prefect_overhead_verdict": verdicts[CROSS_CHECK_CLOCK],
        "prefect_overhead_frac_wall": rounded_interval(paired["wall"]),
        "prefect_overhead_verdict_wall": verdicts["wall"],
        "prefect": {
            "params": "tiny (tests.conftest.TINY)",
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
            "warm_up_cpu_s": warm_up,  # the first pair on the new server (--full), left out of the intervals
        },
    }  # fmt: skip


def _noop_after_last_dvc_arm(root: Path) -> dict[str, Any]:
    note("dvc repro with nothing changed, and the four one-stage calls, on the last direct-DVC arm's project")
    last_dvc = max(root.glob("dvc-*"), key=lambda path: int(path.name.removeprefix("dvc-")))
    return measure_dvc_noop(last_dvc)


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


def _paired_overhead(seconds: dict[str, dict[str, list[float]]], inside: list[dict[str, float]]) -> dict[str, dict]:
    """flow / dvc repro - 1 per pair, as an interval, on wall time and on CPU time (the server's included)."""
    flow, dvc = seconds["flow"], seconds["dvc_repro"]
    flow_cpu = [cpu + run["server_cpu_s"] for cpu, run in zip(flow["cpu"], inside, strict=True)]
    return {
        "wall": shifted(ratio_interval(flow["wall"], dvc["wall"]), -1),
        "cpu": shifted(ratio_interval(flow_cpu, dvc["cpu"]), -1),
    }
