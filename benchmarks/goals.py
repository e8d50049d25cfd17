"""The goals of one benchmarks/run.py result side by side: interval, half-width against its bound, verdict."""

from __future__ import annotations

from typing import Any

PAIRED = {"train_throughput": "train_throughput_ratio", "prefect_overhead": "prefect_overhead_frac"}
WITHIN_RUN = {  # what the within-run Prefect overhead measured, by its clock (wall before 2026-12-04)
    "wall": "time outside its tasks",
    "wall + server cpu": "time outside its tasks and the server's CPU",
    "cpu": "own, server and extra DVC CPU over its stages' CPU",
}


def _row(goal: str, interval: dict[str, Any], verdict: str, stopping: dict[str, Any] | None = None) -> dict:
    row = {
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
    """The stopping rule of `prefix`'s pairs if its bound was sought on `figure`: the paired ratio unless the
    rule names another figure (the Prefect bound is on the within-run overhead since 2026-12-04)."""
    stopping = result.get(f"{prefix}_stopping")
    if stopping is None or stopping.get("figure", PAIRED[prefix]) != figure:
        return None
    return stopping


def _paired_rows(result: dict[str, Any], prefix: str, figure: str) -> dict[str, dict]:
    """A paired goal's CPU-time row and its wall-time row from the same pairs."""
    goal = result[figure]["goal"]
    return {
        figure: _row(goal, result[figure], result[f"{prefix}_verdict"], _stopping_of(result, prefix, figure)),
        f"{figure}_wall": _row(
            goal + " (wall time, same pairs; no bound sought)",
            result[f"{figure}_wall"] | {"clock": "wall"},
            result[f"{prefix}_verdict_wall"],
        ),
    }


def goals(result: dict[str, Any]) -> dict[str, dict]:
    """One row per goal present in `result` (benchmarks that did not run leave theirs out)."""
    rows = {}
    within = result.get("prefect_overhead_frac_within_run")
    if isinstance(within, dict):  # a number in results before 2026-12-03
        rows["prefect_overhead_frac_within_run"] = _row(
            within["goal"] + f" (within each flow run: {WITHIN_RUN[within['clock']]})",
            within,
            result["prefect_overhead_verdict_within_run"],
            _stopping_of(result, "prefect_overhead", "prefect_overhead_frac_within_run"),
        )
    for prefix, figure in PAIRED.items():
        if figure in result:
            rows |= _paired_rows(result, prefix, figure)
    if "frechet_speedup_vs_scipy" in result:
        rows["frechet_speedup_vs_scipy"] = _row(
            ">= 1 (and relative difference <= 1e-6: " + result["frechet_agreement_verdict"] + ")",
            result["frechet_speedup_vs_scipy"] | {"clock": "cpu"},
            result["frechet_speedup_vs_scipy_verdict"],
        )
    for dataset, ttq in (result.get("time_to_quality") or {}).items():
        if ttq.get("seconds_to_target"):
            rows[f"time_to_quality_{dataset}_s"] = _row(
                f"reported: seconds to {ttq['metric']} target {ttq['threshold']:.4g}",
                ttq["seconds_to_target"] | {"clock": "wall"},
                "reported",
            )
            rows[f"time_to_quality_{dataset}_cpu_s"] = _row(
                f"reported: CPU seconds (this process) to {ttq['metric']} target {ttq['threshold']:.4g}",
                ttq["cpu_seconds_to_target"] | {"clock": "cpu"},
                "reported",
            )
    for dataset, share in (result.get("langevin_share") or {}).items():
        rows[f"langevin_share_{dataset}"] = _row(
            f"reported: share of a training step in Langevin chains (cd_k {share['cd_k']})",
            share["share_cpu"] | {"clock": "cpu"},
            "reported",
        )
    return rows
