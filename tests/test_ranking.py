"""Tests for cdgan.ranking: the one order of models that the gate, the tuner, the sweep report and the train
stage's best checkpoint share."""

from __future__ import annotations

import numpy as np
import pytest

from cdgan.ranking import IMAGE_OBJECTIVE, MIXTURE_OBJECTIVE, Objective, objective_for


def test_images_rank_by_fid_lower_first() -> None:
    # given two image evaluations
    better, worse = {"fid": 4.2, "hq_frac": 0.1}, {"fid": 5.0, "hq_frac": 0.9}
    # then the objective reads fid alone, and lower is better
    assert objective_for(is_image=True) is IMAGE_OBJECTIVE and IMAGE_OBJECTIVE.keys == ("fid",)
    assert IMAGE_OBJECTIVE.score(better) == 4.2 and IMAGE_OBJECTIVE.direction == "minimize"
    assert IMAGE_OBJECTIVE.gain(better, worse) == pytest.approx(0.8) and IMAGE_OBJECTIVE.gain(worse, better) < 0
    assert sorted([worse, better], key=IMAGE_OBJECTIVE.sort_key) == [better, worse]


@pytest.mark.parametrize(
    ("better", "worse"),
    [
        ({"modes": 25, "hq_frac": 0.2}, {"modes": 24, "hq_frac": 1.0}),  # a mode more outweighs any hq_frac
        ({"modes": 25, "hq_frac": 0.9}, {"modes": 25, "hq_frac": 0.7}),  # as many modes: hq_frac breaks the tie
        ({"modes": "8.0", "hq_frac": "0.5"}, {"modes": "7.0", "hq_frac": "0.99"}),  # registry tags are strings
    ],
)
def test_2d_data_rank_by_modes_then_hq_frac(better: dict, worse: dict) -> None:
    objective = objective_for(is_image=False)
    assert objective is MIXTURE_OBJECTIVE and objective.direction == "maximize"
    assert objective.gain(better, worse) > 0 > objective.gain(worse, better)
    assert sorted([worse, better], key=objective.sort_key) == [better, worse]


def test_the_2d_score_orders_as_modes_then_hq_frac() -> None:
    # given every pair of (modes, hq_frac) on a grid, ties included
    grid = [{"modes": m, "hq_frac": h} for m in range(4) for h in np.linspace(0, 1, 11)]
    # then ranking by score is ranking by modes, then hq_frac
    for a in grid:
        for b in grid:
            lexical = (a["modes"], a["hq_frac"]) > (b["modes"], b["hq_frac"])
            assert (MIXTURE_OBJECTIVE.gain(a, b) > 0) == lexical, (a, b)


def test_a_missing_score_ranks_last() -> None:
    rows = [{"fid": float("nan")}, {"fid": 9.0}, {"fid": 3.0}]
    assert [r["fid"] for r in sorted(rows, key=IMAGE_OBJECTIVE.sort_key)][:2] == [3.0, 9.0]


@pytest.mark.parametrize(
    ("objective", "evaluation", "reached", "missed"),
    [
        (IMAGE_OBJECTIVE, {"fid_gmm": 8.0}, 8.0, 8.01),  # at or below the Gaussian mixture's FID
        (MIXTURE_OBJECTIVE, {"modes_floor": 25.0}, 24.0, 23.0),  # all but one of the modes
    ],
)
def test_the_target_is_the_reference_point_in_the_objective_s_direction(
    objective: Objective, evaluation: dict, reached: float, missed: float
) -> None:
    target = objective.target_value(evaluation)
    assert objective.reaches(reached, target) and not objective.reaches(missed, target)
