"""Comparison tables over runs: mean ± std of each metric per group of params (e.g. per loss over seeds)."""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from cdgan.files import write_atomic
from cdgan.params import Paths

Row = dict[str, float | int | str]


def summarize(rows: Sequence[Row], group_by: Sequence[str], metrics: Sequence[str]) -> list[Row]:
    """One row per distinct value of `group_by`, in first-seen order: n, and `<metric>_mean`, `<metric>_std`
    (mean NaN when no member has the metric; mean and std NaN when a member's value is NaN)."""
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in group_by), []).append(row)
    summary = []
    for key, members in groups.items():
        out: Row = dict(zip(group_by, key, strict=True)) | {"n": len(members)}
        for metric in metrics:
            values = [float(m[metric]) for m in members if metric in m]
            if any(math.isnan(v) for v in values):  # a run that never reached its target: no mean to speak of
                out[f"{metric}_mean"] = out[f"{metric}_std"] = float("nan")
                continue
            out[f"{metric}_mean"] = statistics.fmean(values) if values else float("nan")
            out[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        summary.append(out)
    return summary


def to_markdown(summary: Sequence[Row], group_by: Sequence[str], metrics: Sequence[str]) -> str:
    header = [*group_by, "n", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in summary:
        cells = [str(row[key]) for key in group_by] + [str(row["n"])]
        cells += [f"{row[f'{m}_mean']:.4g} ± {row[f'{m}_std']:.2g}" for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: Sequence[Row]) -> Path:
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            fields = list(dict.fromkeys(key for row in rows for key in row)) or ["step"]
            writer = csv.DictWriter(f, fieldnames=fields, restval="")  # rows may lack keys (a probe at step 0)
            writer.writeheader()
            writer.writerows(rows)

    return write_atomic(path, write)


def read_scores(paths: Paths) -> list[dict[str, float]]:
    """The train stage's score history, plots/train/scores.csv (written by `write_csv`): a row per scoring step,
    `step` and the metrics scored there as floats; a metric that step lacks is left out of its row."""
    with (paths.train_plots / "scores.csv").open(newline="") as f:
        return [{key: float(value) for key, value in row.items() if value != ""} for row in csv.DictReader(f)]
