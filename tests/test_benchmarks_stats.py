"""benchmarks/stats.py: the intervals behind every benchmark goal, the verdicts they allow, sequential stopping;
and what is built on them: paired ratios over rounds, the goals table, the within-run Prefect overhead."""

from __future__ import annotations

import math

import numpy as np
import pytest
from benchmarks.harness import ratios
from benchmarks.orchestration import within_run_overhead
from benchmarks.report import goals, overlaps
from benchmarks.stats import (
    CANNOT_TELL,
    MET,
    NOT_MET,
    bootstrap_ratio_interval,
    mean_interval,
    ratio_interval,
    run_pairs,
    shifted,
    verdict,
)
from scipy import stats


def test_ratio_interval_is_the_t_interval_of_the_log_ratios():
    # given per-pair ratios 0.9, 1.0, 1.1 (numerators over denominators of 10 s)
    num, den = [9.0, 10.0, 11.0], [10.0, 10.0, 10.0]
    # when
    interval = ratio_interval(num, den)
    # then it is exp(mean log +- t_{0.975, 2} sd / sqrt 3), computed here by hand
    logs = np.log([0.9, 1.0, 1.1])
    half = stats.t.ppf(0.975, 2) * logs.std(ddof=1) / math.sqrt(3)
    assert interval["estimate"] == pytest.approx(math.exp(logs.mean()), rel=1e-12)
    assert interval["low"] == pytest.approx(math.exp(logs.mean() - half), rel=1e-12)
    assert interval["high"] == pytest.approx(math.exp(logs.mean() + half), rel=1e-12)
    assert interval["half_width"] == pytest.approx((interval["high"] - interval["low"]) / 2, rel=1e-12)
    assert interval["pairs"] == 3
    assert interval["per_pair"] == pytest.approx([0.9, 1.0, 1.1])


def test_ratio_interval_of_identical_ratios_has_zero_width():
    interval = ratio_interval([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    assert interval["estimate"] == pytest.approx(2.0)
    assert interval["half_width"] == pytest.approx(0.0, abs=1e-12)


def test_one_pair_gives_an_unbounded_interval():
    interval = ratio_interval([1.0], [2.0])
    assert interval["low"] == 0.0
    assert math.isinf(interval["high"]), "one pair says nothing about the noise"


def test_ratio_interval_rejects_unpaired_lists():
    with pytest.raises(ValueError, match="equal, non-empty"):
        ratio_interval([1.0, 2.0], [1.0])


def test_interval_covers_the_true_ratio_at_about_its_level():
    # given 400 simulated benchmarks of 8 pairs, log-normal noise around a true ratio of 0.95
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(400):
        base = rng.uniform(3.0, 5.0, size=8)  # load drift: shared by both arms of a pair
        num = base * 0.95 * np.exp(rng.normal(0, 0.05, size=8))
        den = base * np.exp(rng.normal(0, 0.05, size=8))
        interval = ratio_interval(list(num), list(den))
        covered += interval["low"] <= 0.95 <= interval["high"]
    # then about 95 % of the intervals hold it (binomial sd at n = 400 is 1.1 %)
    assert 0.91 <= covered / 400 <= 0.99, covered


def test_bootstrap_agrees_with_the_t_interval_on_symmetric_noise():
    rng = np.random.default_rng(1)
    num = list(10 * np.exp(rng.normal(0, 0.03, size=30)))
    den = [10.0] * 30
    t_interval = ratio_interval(num, den)
    low, high = bootstrap_ratio_interval(num, den)
    assert low == pytest.approx(t_interval["low"], abs=0.005)
    assert high == pytest.approx(t_interval["high"], abs=0.005)


def test_mean_interval_matches_scipy():
    values = [35.2, 70.7, 99.1]
    interval = mean_interval(values)
    low, high = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))
    assert interval["low"] == pytest.approx(low)
    assert interval["high"] == pytest.approx(high)
    assert interval["n"] == 3


def test_shifted_moves_every_point():
    interval = shifted(ratio_interval([11.0, 12.0], [10.0, 10.0]), -1)
    assert interval["per_pair"] == pytest.approx([0.1, 0.2])
    assert interval["low"] < interval["estimate"] < interval["high"]
    assert interval["half_width"] == pytest.approx((interval["high"] - interval["low"]) / 2)


@pytest.mark.parametrize(
    ("low", "high", "goal", "direction", "expected"),
    [
        (0.96, 0.99, 0.95, "at_least", MET),
        (0.95, 0.99, 0.95, "at_least", MET),  # the goal itself counts as reached
        (0.90, 0.94, 0.95, "at_least", NOT_MET),
        (0.93, 0.97, 0.95, "at_least", CANNOT_TELL),  # the point estimate 0.95 alone would say "met"
        (0.02, 0.08, 0.10, "at_most", MET),
        (0.12, 0.20, 0.10, "at_most", NOT_MET),
        (0.05, 0.15, 0.10, "at_most", CANNOT_TELL),
    ],
)
def test_verdict_follows_the_interval(low, high, goal, direction, expected):
    assert verdict(low, high, goal, direction) == expected


class _FakeClock:
    """Seconds that advance only when a pair runs: a deterministic clock for the stopping rule."""

    def __init__(self, seconds_per_pair: float) -> None:
        self.now, self.step = 0.0, seconds_per_pair
        self.ran: list[int] = []

    def __call__(self) -> float:
        return self.now

    def run_pair(self, index: int) -> None:
        self.ran.append(index)
        self.now += self.step


def test_run_pairs_stops_when_the_bound_is_met_but_not_before_the_minimum():
    clock = _FakeClock(10.0)
    # given a half-width that is within the bound from the first pair on
    out = run_pairs(clock.run_pair, lambda: 0.01, bound=0.02, min_pairs=5, max_pairs=50, max_seconds=1e9, clock=clock)
    # then it still runs the minimum, and stops there
    assert clock.ran == [0, 1, 2, 3, 4]
    assert out["stopped"] == "bound met"
    assert out["is_cap_hit"] is False


def test_run_pairs_reports_the_pair_cap():
    clock = _FakeClock(1.0)

    out = run_pairs(clock.run_pair, lambda: 0.5, bound=0.02, min_pairs=2, max_pairs=7, max_seconds=1e9, clock=clock)
    assert out["pairs"] == 7
    assert out["stopped"] == "pair cap"
    assert out["is_cap_hit"] is True


def test_run_pairs_starts_no_pair_that_would_end_past_the_time_cap():
    clock = _FakeClock(30.0)

    # given 30 s pairs and 100 s: after 3 pairs (90 s) a 4th would end at 120 s
    out = run_pairs(clock.run_pair, lambda: 0.5, bound=0.02, min_pairs=2, max_pairs=50, max_seconds=100, clock=clock)
    assert out["pairs"] == 3
    assert out["stopped"] == "time cap"
    assert out["seconds"] == pytest.approx(90.0)


def test_default_run_seconds_spreads_the_once_per_run_cost():
    from benchmarks.throughput import default_run_seconds

    # given a 100-step stage of 5 s whose loop took 4.5 s: 0.5 s once per run
    seconds = default_run_seconds([5.0], [4.5], steps=100, run_steps=6000)
    # then 100 steps of a 6000-step run cost the loop's 4.5 s plus 1/60 of the 0.5 s
    assert seconds == pytest.approx([4.5 + 0.5 / 60])


def test_goals_table_carries_the_interval_bound_and_verdict():
    interval = {"estimate": 0.97, "low": 0.955, "high": 0.985, "half_width": 0.015, "pairs": 12}
    result = {
        "train_throughput_ratio": interval | {"clock": "cpu", "goal": ">= 0.95"},
        "train_throughput_verdict": MET,
        "train_throughput_ratio_wall": interval | {"low": 0.9, "high": 1.04, "half_width": 0.07},
        "train_throughput_verdict_wall": CANNOT_TELL,
        "train_throughput_stopping": {"bound": 0.02, "half_width": 0.015, "stopped": "bound met"},
    }
    rows = goals(result)
    assert rows["train_throughput_ratio"]["verdict"] == MET
    assert rows["train_throughput_ratio"]["is_bound_met"] is True
    assert rows["train_throughput_ratio"]["pairs"] == 12
    assert rows["train_throughput_ratio"]["benchmark"] == "throughput"
    assert rows["train_throughput_ratio_wall"]["verdict"] == CANNOT_TELL
    assert "prefect_overhead_frac" not in rows, "a benchmark that did not run has no row"


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [((0.90, 0.95), (0.94, 0.99), True), ((0.90, 0.93), (0.94, 0.99), False), ((0.9, 1.0), (0.95, 0.96), True)],
)
def test_overlaps(a, b, expected):
    assert overlaps({"low": a[0], "high": a[1]}, {"low": b[0], "high": b[1]}) is expected
    assert overlaps({"low": b[0], "high": b[1]}, {"low": a[0], "high": a[1]}) is expected, "symmetric"


def test_run_pairs_runs_two_pairs_whatever_the_time_cap():
    clock = _FakeClock(30.0)

    # given pairs longer than the whole time cap: one pair alone would give no interval at all
    out = run_pairs(clock.run_pair, lambda: 0.5, bound=0.02, min_pairs=5, max_pairs=50, max_seconds=10, clock=clock)
    assert out["pairs"] == 2
    assert out["stopped"] == "time cap"


def _noop(estimate: float, low: float, high: float) -> dict:
    return {"dvc_calls_extra_cpu_s": {"estimate": estimate, "low": low, "high": high}}


def _runs(own: list[float], server: list[float], stages: list[float]) -> list[dict[str, float]]:
    return [
        {"own_cpu_s": o, "server_cpu_s": s, "stages_cpu_s": st} for o, s, st in zip(own, server, stages, strict=True)
    ]


def test_within_run_overhead_is_the_t_interval_of_each_runs_own_cpu_over_its_stages():
    # given 3 flow runs whose own process spent 0.5-1.0 CPU s and the server 0.1-0.3 s, beside 10.5-12 s in the
    # stages' subprocesses, of which 0.5 s are the extra DVC start-ups a one-stage-at-a-time flow pays (known here)
    inside = _runs([0.5, 0.8, 1.0], [0.1, 0.2, 0.3], [10.5, 11.0, 12.0])
    # when
    interval = within_run_overhead(inside, _noop(0.5, 0.5, 0.5))
    # then each run's overhead is (own + server + extra) / (stages - extra), and the interval their t-interval
    per_run = [1.1 / 10.0, 1.5 / 10.5, 1.8 / 11.5]
    assert interval["per_run"] == pytest.approx(per_run)
    assert interval["estimate"] == pytest.approx(np.mean(per_run))
    half = stats.t.ppf(0.975, 2) * np.std(per_run, ddof=1) / math.sqrt(3)
    assert interval["half_width"] == pytest.approx(half) and interval["n"] == 3


def test_within_run_overhead_widens_by_the_uncertainty_of_the_dvc_start_ups():
    inside = _runs([0.6, 0.7, 0.5], [0.0] * 3, [10.5] * 3)
    exact = within_run_overhead(inside, _noop(0.5, 0.5, 0.5))
    # when the extra start-ups are only known to lie in [0.3, 0.7] s
    uncertain = within_run_overhead(inside, _noop(0.5, 0.3, 0.7))
    # then the estimate stays, and the interval reaches from the low end at 0.3 s to the high end at 0.7 s
    assert uncertain["estimate"] == pytest.approx(exact["estimate"])
    assert uncertain["low"] == pytest.approx(within_run_overhead(inside, _noop(0.3, 0.3, 0.3))["low"])
    assert uncertain["high"] == pytest.approx(within_run_overhead(inside, _noop(0.7, 0.7, 0.7))["high"])
    assert uncertain["half_width"] > exact["half_width"] + 0.015, "0.2 s either way on ~10 s moves each end ~0.02"


def test_the_prefect_bound_is_on_the_within_run_overhead_when_its_stopping_rule_names_it():
    inside = _runs([0.1, 0.15, 0.1, 0.1], [0.0] * 4, [10.5, 10.6, 10.4, 10.5])
    within = within_run_overhead(inside, _noop(0.5, 0.45, 0.55))  # about 0.06 a run
    paired = {"estimate": 0.05, "low": -0.05, "high": 0.15, "half_width": 0.1, "pairs": 4}
    result = {
        "prefect_overhead_frac_within_run": within | {"clock": "cpu", "goal": "<= 0.1"},
        "prefect_overhead_verdict_within_run": verdict(within["low"], within["high"], 0.10, "at_most"),
        "prefect_overhead_stopping": {"figure": "prefect_overhead_frac_within_run", "bound": 0.03,
                                      "half_width": within["half_width"], "stopped": "bound met"},
        "prefect_overhead_frac": paired | {"clock": "cpu", "goal": "<= 0.1"},
        "prefect_overhead_verdict": CANNOT_TELL,
        "prefect_overhead_frac_wall": paired,
        "prefect_overhead_verdict_wall": CANNOT_TELL,
    }  # fmt: skip
    rows = goals(result)
    within_row = rows["prefect_overhead_frac_within_run"]
    assert within_row["verdict"] == MET and within_row["pairs"] == 4 and within_row["high"] < 0.10, within_row
    assert within_row["bound"] == 0.03 and within_row["is_bound_met"] is True
    assert "bound" not in rows["prefect_overhead_frac"], "the paired ratio is the cross-check, no bound sought"
    # and a stopping rule that names no figure (throughput's) puts the bound on the paired ratio
    del result["prefect_overhead_stopping"]["figure"]
    rows = goals(result)
    assert "bound" in rows["prefect_overhead_frac"] and "bound" not in rows["prefect_overhead_frac_within_run"]


def test_ratios_pair_each_round_of_an_arm_with_the_baselines_round():
    # given wall seconds per round: fp32 drifts slower round by round, amp is always 4/5 of the same round's fp32
    seconds = {"fp32": {"wall": [1.0, 2.0, 3.0]}, "amp": {"wall": [0.8, 1.6, 2.4]}}
    # when speed-ups are taken, then pairing by round removes the drift: amp is 1.25x with no width
    amp = ratios(seconds, "fp32", ("wall",), speedup=True)["amp"]["wall"]
    assert amp["estimate"] == 1.25 and amp["half_width"] == 0.0 and amp["pairs"] == 3, amp
    assert "fp32" not in ratios(seconds, "fp32", ("wall",)), "the baseline is no arm of its own ratios"
    # and a cost (arm over baseline) is the speed-up's inverse
    assert ratios(seconds, "fp32", ("wall",))["amp"]["wall"]["estimate"] == 0.8
    # and an arm that is faster in one round only is reported with an interval that says so
    noisy = {"fp32": {"wall": [1.0, 1.0, 1.0]}, "compile": {"wall": [0.5, 1.0, 1.0]}}
    compile_ = ratios(noisy, "fp32", ("wall",), speedup=True)["compile"]["wall"]
    assert compile_["low"] < 1.0 < compile_["high"], compile_
