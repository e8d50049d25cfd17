"""The register stage: the evaluated sampler logged into its training run and registered as a version of
`register.model_name`, with the `champion` alias moved only when it is better on a comparable evaluation."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from cdgan import registry, tracking
from cdgan.data import load_dataset
from cdgan.errors import CdganError
from cdgan.files import read_json, write_json
from cdgan.params import Params, Paths
from cdgan.ranking import objective_for
from cdgan.stages.edge import run_stage
from cdgan.stages.trained import load_trained


@dataclass(frozen=True)
class RegisterResult:
    version: int
    alias: str
    reason: str

    def summary(self) -> str:
        return f"registered version {self.version} as {self.alias}: {self.reason}"


def register(params: Params, paths: Paths, force: bool = False) -> RegisterResult:
    """Log the sampler into the training run and register a version of `register.model_name`, gated by
    `registry.register_version` on the data's objective (`ranking.objective_for`), compared only with a
    champion measured on the same terms: registry.SCALE_KEYS, as metrics/eval.json records them.

    The version is tagged with the lineage (git_commit, git_dirty, dvc_lock_sha256, data_sha256: the
    sha256 of data/prepared/dataset.npz, mlflow_run_id), every number in metrics/eval.json, the gate's terms
    and `forced`;
    its model holds the params (MLmodel metadata) and the sample grid. The version exists only from here
    on, so it goes back into the run as tags model_name, model_version, model_alias and into
    metrics/register.json, not into metrics/eval.json.
    """
    run_id = read_json(paths.train_metrics)["mlflow_run_id"]
    evaluation = read_json(paths.eval_metrics)
    missing = [key for key in registry.SCALE_KEYS if key not in evaluation]
    if missing:
        raise CdganError(
            f"{paths.eval_metrics}: lacks {missing}, the terms the champion gate compares; rerun evaluate (dvc repro)"
        )
    picture = paths.eval_plots / "samples.png"
    if not picture.exists():
        raise CdganError(f"{picture}: not found; run the evaluate stage first (dvc repro)")
    objective = objective_for(params.data.is_image)
    real_shape = load_dataset(paths.dataset).shape
    generator, energy = load_trained(params, paths, real_shape)
    sampling = params.sample
    comparable = {key: str(evaluation[key]) for key in registry.SCALE_KEYS}
    numbers = {key: float(value) for key, value in evaluation.items() if type(value) in (int, float)}
    name = params.register.model_name
    with tempfile.TemporaryDirectory() as tmp, tracking.tracked_run(params, paths, run_id):
        bundle = registry.save_bundle(
            Path(tmp) / "bundle.pt", params.model, real_shape, generator.state_dict(), energy.state_dict(), sampling
        )
        model_uri = registry.log_sampler(bundle, tracking.flat_params(params), picture, numbers)
        tags = {k: str(evaluation[k]) for k in numbers} | tracking.lineage_tags(paths.root) | {"mlflow_run_id": run_id}
        reg = registry.register_version(
            model_uri, name, objective, numbers, comparable, params.register.min_improvement, force, tags
        )
        tracking.set_tags({"model_name": name, "model_version": str(reg.version), "model_alias": reg.alias})
    write_json(
        paths.register_metrics,
        {"model_name": params.register.model_name, "version": reg.version, "alias": reg.alias,
         "is_champion": reg.alias == registry.CHAMPION, "reason": reg.reason, "mlflow_run_id": run_id},
    )  # fmt: skip
    return RegisterResult(reg.version, reg.alias, reg.reason)


def main(argv: list[str] | None = None) -> None:
    run_stage(register, argv)


if __name__ == "__main__":
    main()
