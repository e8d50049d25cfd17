"""The Optuna side of cdgan-tune (pipelines/studies.py) on in-memory studies; the flow's tests are in test_tune.py."""

from __future__ import annotations

from pathlib import Path

import optuna

from pipelines import studies


def test_study_plots_leave_matplotlib_style_as_it_was(tmp_path: Path) -> None:
    # given a finished in-memory study, and the process's matplotlib settings before its plots
    import matplotlib.pyplot as plt

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1) ** 2, n_trials=3)
    before = dict(plt.rcParams)
    # when the study's plots are written (optuna's plotting switches to its ggplot style)
    paths = studies.write_plots(study, tmp_path)
    # then the PNGs exist and later pictures of this process (sample grids, scatters) keep the default style
    assert [p.name for p in paths] == ["history.png", "intermediate.png", "importances.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)
    changed = {k for k, v in plt.rcParams.items() if before.get(k) != v and not k.startswith("backend")}  # Agg: files
    assert not changed, f"rcParams changed by the study's plots: {sorted(changed)[:5]}"
