"""The goals of one benchmarks/run.py result side by side: interval, half-width against its bound, verdict."""

from __future__ import annotations

from typing import Any


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


def goals(result: dict[str, Any]) -> dict[str, dict]:
    """One row per goal present in `result` (benchmarks that did not run leave theirs out)."""
    rows = {}
    if "train_throughput_ratio" in result:
        stopping = result["train_throughput_stopping"]
        rows["train_throughput_ratio"] = _row(
            result["train_throughput_ratio"]["goal"],
            result["train_throughput_ratio"],
            result["train_throughput_verdict"],
            stopping,
        )
        rows["train_throughput_ratio_wall"] = _row(
            result["train_throughput_ratio"]["goal"] + " (wall time, same pairs; no bound sought)",
            result["train_throughput_ratio_wall"] | {"clock": "wall"},
            result["train_throughput_verdict_wall"],
        )
    if "prefect_overhead_frac" in result:
        rows["prefect_overhead_frac"] = _row(
            result["prefect_overhead_frac"]["goal"],
            result["prefect_overhead_frac"],
            result["prefect_overhead_verdict"],
            result["prefect_overhead_stopping"],
        )
        rows["prefect_overhead_frac_wall"] = _row(
            result["prefect_overhead_frac"]["goal"] + " (wall time, same pairs; no bound sought)",
            result["prefect_overhead_frac_wall"] | {"clock": "wall"},
            result["prefect_overhead_verdict_wall"],
        )
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
