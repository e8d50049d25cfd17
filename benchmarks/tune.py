"""cdgan-tune throughput: trials per hour for tiny trials, against one plain `dvc repro evaluate` of the same
tiny params in a trial-like workspace (the cost of a trial without Optuna, Prefect or the MLflow polling).

    python benchmarks/tune.py --quick    # 2 trials: a few minutes on 2 CPU cores

The project is made as the tests make it (tests.conftest.make_project, tiny params) with its own MLflow store
and Optuna storage; pruning is off in practice (the median pruner waits for PRUNE_AFTER_TRIALS trials).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: `benchmarks`, `tests`, `pipelines`

from benchmarks.pipeline_overhead import _conftest, _own_store, _prefect_server
from benchmarks.timing import machine, note, timed

SPACE = {"train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-3, "log": True}}


def _plain_trial(project: Path, workspace: Path) -> float:
    """Wall seconds of `dvc repro evaluate` in a fresh workspace holding what a trial's workspace holds."""
    conftest = _conftest()
    workspace.mkdir(parents=True)
    for name in ("dvc.yaml", ".dvcignore", "params.yaml"):
        shutil.copy(project / name, workspace / name)
    shutil.copytree(project / "src", workspace / "src")
    conftest.run(["dvc", "init", "--no-scm", "-q"], workspace)
    return timed(lambda: conftest.run(["dvc", "repro", "evaluate"], workspace)).wall


def measure(quick: bool) -> dict[str, object]:
    from pipelines import tune

    trials = 2 if quick else 4
    conftest = _conftest()
    with tempfile.TemporaryDirectory(prefix="cdgan-bench-tune-") as tmp:
        root = Path(tmp)
        project = conftest.make_project(root / "project", conftest.tiny_raw())
        (project / "space.yaml").write_text(yaml.safe_dump(SPACE))
        with _own_store(project), _prefect_server(root / "prefect-home") as server_start:
            note(f"Prefect server up in {server_start.wall:.1f} s; plain dvc repro evaluate (baseline)")
            plain_s = _plain_trial(project, root / "plain")
            note(f"  {plain_s:.1f} s; cdgan-tune, {trials} trials, {tune.PARALLEL} at a time")
            result: dict[str, object] = {}
            took = timed(
                lambda: result.update(
                    tune.cdgan_tune(space="space.yaml", trials=trials, name="bench", project_dir=str(project))
                )
            )
    per_trial = took.wall / trials
    return {
        "tune_trials_per_hour": round(3600 / per_trial, 1),
        "tune": {
            "params": "tiny (tests.conftest.TINY), digits, 1-parameter space",
            "trials": trials,
            "parallel": tune.PARALLEL,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "study_wall_s": round(took.wall, 2),  # whole flow: study, parent run, trials, preset, plots
            "wall_s_per_trial": round(per_trial, 2),
            "plain_dvc_repro_evaluate_s": round(plain_s, 2),
            # < 1: trials side by side gain from the 2 cores; > 1: Optuna, Prefect and polling cost more
            "per_trial_over_plain_repro": round(per_trial / plain_s, 3),
            "states": result.get("states"),
        },
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 trials instead of 4")
    args = parser.parse_args()
    json_out = os.fdopen(os.dup(1), "w")  # stdout carries only the JSON: Prefect, DVC and rich go to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    json.dump({"machine": machine()} | measure(args.quick), json_out, indent=2)
    json_out.write("\n")
    json_out.flush()
