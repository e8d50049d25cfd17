"""Data-parallel training under torchrun: two ranks train the single-process model; only rank 0 writes."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from cdgan import distributed
from tests.conftest import run, tiny_raw

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# The real console script under torchrun, each rank in its own copy of the project so that anything
# rank 1 wrote would show; `torchrun -m cdgan train` runs both ranks in the one directory.
PER_RANK_DIRS = ["--no-python", "sh", "-c", 'cd "rank$RANK" && exec cdgan train']
LOCAL_STORE = {"MLFLOW_TRACKING_URI": ""}  # each project's own mlruns/, whatever the session set
# 2-D data (MLPs, no BatchNorm), with the replay buffer (all-gathered) and R1 (double backward) on
SHARDED = {
    "data": {"dataset": "grid25", "n_points": 500},
    "train": {"batch_size": 64, "replay_size": 128, "replay_frac": 0.5, "real_gp": 0.1},
}


def _prepared_copies(root: Path, names: list[str], **sections: dict) -> list[Path]:
    """The same prepared project under each name: prepared once, then copied."""
    first = root / names[0]
    first.mkdir(parents=True)
    (first / "params.yaml").write_text(yaml.safe_dump(tiny_raw(**sections)))
    run(["cdgan", "prepare"], first)
    for name in names[1:]:
        shutil.copytree(first, root / name)
    return [root / name for name in names]


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _n_runs(project: Path) -> int:
    client = MlflowClient(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return len(client.search_runs(experiments))


@pytest.mark.parametrize(
    "variant",
    [
        {"data_loading": "device"},
        {"data_loading": "stream", "num_workers": 1, "loss": "wgan-gp"},  # interpolation weights: a share each
    ],
    ids=["device-cd", "stream-wgan-gp"],
)
def test_two_ranks_train_the_single_process_model_and_rank_1_writes_nothing(tmp_path: Path, variant: dict) -> None:
    # given one prepared project for a plain run and one per torchrun rank, the data on the device or streamed
    sections = SHARDED | {"train": SHARDED["train"] | variant}
    single, rank0, rank1 = _prepared_copies(tmp_path, ["single", "rank0", "rank1"], **sections)
    rank1_before = _tree(rank1)

    # when the same global batch is trained by one process and by two
    run(["cdgan", "train"], single, env=LOCAL_STORE)
    run([*TORCHRUN, *PER_RANK_DIRS], tmp_path, env=LOCAL_STORE)

    # then both halves together took the single-process steps: the same weights up to float rounding
    for name in ("generator.pt", "energy.pt"):
        expected = torch.load(single / "models" / name, weights_only=True)
        actual = torch.load(rank0 / "models" / name, weights_only=True)
        assert actual.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")
    assert _n_runs(rank0) == 1, "one MLflow run for the whole job"
    assert _tree(rank1) == rank1_before, "rank 1 wrote no model, metric, checkpoint or MLflow store"


def test_global_batch_that_does_not_split_over_the_ranks_is_refused(tmp_path: Path) -> None:
    # given a global batch of 63 for 2 processes (checked first: no prepared data needed)
    project = tmp_path
    (project / "params.yaml").write_text(yaml.safe_dump(tiny_raw(train={"batch_size": 63})))

    # when
    result = run([*TORCHRUN, "-m", "cdgan", "train"], project, check=False, env=LOCAL_STORE)

    # then every rank stops with the one clear error before writing anything
    assert result.returncode != 0
    assert "train.batch_size (63) is the global batch and must divide evenly over the 2" in result.stderr
    assert not (project / "models").exists() and not (project / "mlruns").exists()


def test_a_plain_process_is_rank_0_of_1_and_keeps_every_row() -> None:
    x = torch.arange(6.0)
    with distributed.process_group(torch.device("cpu")) as device:
        assert device == torch.device("cpu")
        assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
        assert torch.equal(distributed.share(x), x) and torch.equal(distributed.gather_shares(x), x)
        assert distributed.mean_values({"loss": torch.tensor(0.5)}) == {"loss": 0.5}
