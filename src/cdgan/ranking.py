"""What "better" means: the one ranking of trained models by their metrics/eval.json figures.

The champion gate, the tuner and its pruner, the sweep report and its time to target, and the train stage's
best checkpoint all rank by `objective_for(is_image)`. It imports nothing of cdgan, so a stage that ranks
depends on this file alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Objective:
    """What "better" means for one kind of data (`objective_for`): the champion gate, the tuner and its pruner,
    the sweep report and its time to target all rank by it.

    Images: `fid`, lower is better. 2-D mixtures: `modes`, higher is better, ties broken by `hq_frac`: a mode
    more always wins; of two samplers covering as many modes, the one with more samples near a mode does.
    `score` is modes + hq_frac / 2, which orders as (modes, hq_frac) does because modes is a count and hq_frac
    a share in [0, 1]; the gate's margin (`register.min_improvement`) is in its units.
    """

    metric: str  # a metrics/eval.json key
    lower_is_better: bool
    tie_break: str | None = None  # a share in [0, 1], better in the metric's direction; `metric` is then a count
    target: str = ""  # the reference point a training run aims for, a metrics/eval.json key
    target_slack: float = 0.0  # how far short of `target` still counts as reaching it

    @property
    def keys(self) -> tuple[str, ...]:
        """The metrics `score` reads."""
        return (self.metric,) if self.tie_break is None else (self.metric, self.tie_break)

    @property
    def name(self) -> str:
        return self.metric if self.tie_break is None else f"{self.metric}+{self.tie_break}/2"

    @property
    def direction(self) -> str:  # an Optuna study's
        return "minimize" if self.lower_is_better else "maximize"

    def score(self, metrics: Mapping[str, object]) -> float:
        """The one number ranked; `metrics` may hold strings (a registered version's tags)."""
        value = float(metrics[self.metric])
        return value if self.tie_break is None else value + float(metrics[self.tie_break]) / 2

    def gain(self, new: Mapping[str, object], old: Mapping[str, object]) -> float:
        """How much better `new` scores than `old`; negative when it is worse."""
        diff = self.score(new) - self.score(old)
        return -diff if self.lower_is_better else diff

    def sort_key(self, metrics: Mapping[str, object]) -> tuple[bool, float]:
        """Sorting by it puts the best first, and a NaN score last."""
        score = self.score(metrics)
        return math.isnan(score), score if self.lower_is_better else -score

    def describe(self, metrics: Mapping[str, object]) -> str:
        return ", ".join(f"{key} {float(metrics[key]):.4g}" for key in self.keys)

    def target_value(self, evaluation: Mapping[str, float]) -> float:
        """The value of `metric` a run has to reach: `target` less the slack, in the metric's direction."""
        return evaluation[self.target] + (self.target_slack if self.lower_is_better else -self.target_slack)

    def reaches(self, value: float, target: float) -> bool:
        return value <= target if self.lower_is_better else value >= target


IMAGE_OBJECTIVE = Objective("fid", lower_is_better=True, target="fid_gmm")  # target: the Gaussian mixture's FID
# target: all but one of the modes a perfect sampler covers
MIXTURE_OBJECTIVE = Objective("modes", False, tie_break="hq_frac", target="modes_floor", target_slack=1.0)


def objective_for(is_image: bool) -> Objective:
    return IMAGE_OBJECTIVE if is_image else MIXTURE_OBJECTIVE
