"""The prepare stage: the training and held-out splits in data/prepared/ and, for images, the domain classifier
behind FID with its reference statistics. No MLflow: its only record is metrics/prepare.json."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cdgan.classifier import StackedClassifier, classifier_accuracy, fit_classifier
from cdgan.data import STACKED_BASE, build_splits, save_dataset
from cdgan.files import write_json
from cdgan.params import Params, Paths
from cdgan.reference import save_reference
from cdgan.stages.edge import run_stage


@dataclass(frozen=True)
class PrepareResult:
    n_examples: int
    data_shape: tuple[int, ...]
    classifier_accuracy: float | None

    def summary(self) -> str:
        accuracy = "" if self.classifier_accuracy is None else f", classifier accuracy {self.classifier_accuracy:.3f}"
        return f"prepared {self.n_examples} examples of shape {self.data_shape}{accuracy}"


def prepare(params: Params, paths: Paths) -> PrepareResult:
    """The training and held-out splits and, for images, the domain classifier: fitted on the training
    split, its accuracy measured and its FID reference statistics taken on the held-out split."""
    splits = build_splits(params.data)
    accuracy = None
    if params.data.is_image:
        # stacked sets: a digit classifier on the plain digits' training split, applied per channel
        is_stacked = params.data.dataset in STACKED_BASE
        base = {"dataset": STACKED_BASE.get(params.data.dataset)}
        labelled = build_splits(params.data.model_copy(update=base)) if is_stacked else splits
        classifier = fit_classifier(
            torch.from_numpy(labelled.train.x),
            torch.from_numpy(labelled.train.y),
            params.data.classifier_epochs,
            params.data.seed,
        )
        accuracy = classifier_accuracy(
            classifier, torch.from_numpy(labelled.heldout.x), torch.from_numpy(labelled.heldout.y)
        )
        if is_stacked:
            classifier = StackedClassifier(classifier, splits.train.shape[0])
        save_reference(paths.classifier, classifier, torch.from_numpy(splits.heldout.x), accuracy)
    else:
        paths.classifier.unlink(missing_ok=True)
    save_dataset(paths.heldout, splits.heldout)
    save_dataset(paths.dataset, splits.train)
    summary = {
        "n_examples": len(splits.train.x),
        "n_heldout": len(splits.heldout.x),
        "n_classes": splits.train.n_classes,
    }
    write_json(
        paths.metrics / "prepare.json", summary | ({"classifier_accuracy": accuracy} if accuracy is not None else {})
    )
    return PrepareResult(len(splits.train.x), splits.train.shape, accuracy)


def main(argv: list[str] | None = None) -> None:
    run_stage(prepare, argv)


if __name__ == "__main__":
    main()
