"""Tests for cdgan.report: grouping runs into mean ± std rows, the Markdown table, the CSV of uneven rows, the
score history read back."""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

import pytest

from cdgan.params import Paths
from cdgan.report import read_scores, summarize, to_markdown, write_csv

# Five runs of a sweep over loss x seed; the bce runs have no `modes`
RUNS = [
    {"loss": "cd", "seed": 0, "fid": 10.0, "modes": 25},
    {"loss": "bce", "seed": 0, "fid": 30.0},
    {"loss": "cd", "seed": 1, "fid": 14.0, "modes": 23},
    {"loss": "bce", "seed": 1, "fid": 34.0},
    {"loss": "cd", "seed": 2, "fid": 12.0, "modes": 24},
]


def test_summarize_gives_one_row_per_group_in_first_seen_order_with_mean_and_sample_std() -> None:
    # when
    summary = summarize(RUNS, ["loss"], ["fid", "modes"])
    # then cd (seen first) then bce, each with its count, mean and n - 1 standard deviation
    assert [row["loss"] for row in summary] == ["cd", "bce"]
    cd, bce = summary
    assert cd == {"loss": "cd", "n": 3, "fid_mean": 12.0, "fid_std": 2.0, "modes_mean": 24.0, "modes_std": 1.0}
    assert (bce["n"], bce["fid_mean"]) == (2, 32.0)
    assert bce["fid_std"] == pytest.approx(statistics.stdev([30.0, 34.0])) == pytest.approx(2 * math.sqrt(2))
    # a metric no run of the group has is NaN, not 0: a missing score must not read as a perfect one
    assert math.isnan(bce["modes_mean"]) and bce["modes_std"] == 0.0


def test_summarize_by_two_keys_keeps_every_run_apart_with_a_zero_std() -> None:
    summary = summarize(RUNS, ["loss", "seed"], ["fid"])
    assert [(row["loss"], row["seed"], row["n"]) for row in summary] == [
        ("cd", 0, 1), ("bce", 0, 1), ("cd", 1, 1), ("bce", 1, 1), ("cd", 2, 1),
    ]  # fmt: skip
    assert [row["fid_mean"] for row in summary] == [run["fid"] for run in RUNS]
    assert all(row["fid_std"] == 0.0 for row in summary), "one run has no spread"


def test_to_markdown_is_a_table_of_the_groups_with_mean_plus_minus_std() -> None:
    # given
    metrics = ["fid", "modes"]
    summary = summarize(RUNS, ["loss"], metrics)
    # when
    table = to_markdown(summary, ["loss"], metrics)
    # then one header, one rule and one line per group, means to 4 and stds to 2 significant digits
    assert table.splitlines() == [
        "| loss | n | fid | modes |",
        "|---|---|---|---|",
        "| cd | 3 | 12 ± 2 | 24 ± 1 |",
        "| bce | 2 | 32 ± 2.8 | nan ± 0 |",
    ]
    assert table.endswith("\n")


def test_write_csv_takes_the_union_of_the_keys_and_leaves_missing_cells_empty(tmp_path: Path) -> None:
    # when
    path = write_csv(tmp_path / "runs.csv", RUNS)
    # then the columns in first-seen order, a bce run's `modes` empty, and no temporary file left
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["loss", "seed", "fid", "modes"]
    assert [row["modes"] for row in rows] == ["25", "", "23", "", "24"]
    assert [p.name for p in tmp_path.iterdir()] == ["runs.csv"]


def test_write_csv_of_no_rows_is_a_header_only_file(tmp_path: Path) -> None:
    assert write_csv(tmp_path / "empty.csv", []).read_text().splitlines() == ["step"]


def test_a_nan_value_makes_its_group_nan_instead_of_failing() -> None:
    # given two runs of one group, one of which never reached its target (NaN seconds)
    rows = [{"loss": "cd", "seconds_to_target": 50.0}, {"loss": "cd", "seconds_to_target": float("nan")}]
    # when
    (cd,) = summarize(rows, ["loss"], ["seconds_to_target"])
    # then the group's figure is NaN (statistics.stdev raised on NaN before), not the mean of the runs that made it
    assert cd["n"] == 2 and math.isnan(cd["seconds_to_target_mean"]) and math.isnan(cd["seconds_to_target_std"])


def test_read_scores_gives_back_the_history_the_train_stage_writes(tmp_path: Path) -> None:
    # given a score history written as the train stage writes it, one step without hq_frac
    paths = Paths(tmp_path)
    history = [{"step": 50, "modes": 20, "hq_frac": 0.25}, {"step": 100, "modes": 24}, {"step": 150, "modes": 25.0}]
    write_csv(paths.train_plots / "scores.csv", history)
    # when it is read back, then each row holds the same numbers as floats, and no key that row lacked
    scores = read_scores(paths)
    assert scores == history
    assert all(isinstance(value, float) for row in scores for value in row.values())
    # and a history with no scoring step (eval_every 0: a header-only file) is empty
    write_csv(paths.train_plots / "scores.csv", [])
    assert read_scores(paths) == []
