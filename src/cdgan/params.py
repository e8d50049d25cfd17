"""Typed params.yaml sections, validated once at the edge, and the fixed output paths."""

from __future__ import annotations

import os
import posixpath
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from cdgan.errors import CdganError

POINT_DATASETS = ("grid25", "ring8")
IMAGE_DATASETS = (
    "digits", "stacked-digits", "mnist10k", "stacked-mnist", "mnist", "fashion-mnist", "cifar10", "folder"
)  # fmt: skip
Dataset = Literal[
    "grid25", "ring8", "digits", "stacked-digits", "mnist10k", "stacked-mnist", "mnist", "fashion-mnist", "cifar10",
    "folder",
]  # fmt: skip
LossName = Literal["cd", "bce", "lsgan", "hinge", "wgan-gp"]
ALLOW_EXTERNAL_PATHS_ENV = "CDGAN_ALLOW_EXTERNAL_PATHS"  # =1: path params may leave the project directory
MAX_STEP_SIZE = 10.0  # Langevin step sizes past this blow samples up (IGEBM, with clipped gradients, uses 10)
PIXEL_RANGE = (-1.0, 1.0)  # pixel values of every image data set, real and generated (the generator ends in tanh)


def is_image_shape(data_shape: tuple[int, ...]) -> bool:
    """Whether data of this shape (one example's) are images, (C, H, W), rather than (2,) points.

    The one test of the data's kind once data exist; before, `DataParams.is_image` tells it from the data
    set's name, and every data set in IMAGE_DATASETS is prepared as (C, H, W).
    """
    return len(data_shape) == 3


def base_side(side: int) -> int:
    """The side the conv nets start (generator) and end (energy net) at: `side` halved while it stays even and
    at least 4. Image sides are 4 * 2**n (base 4, as DCGAN at 64) or 7 * 2**n (base 7, as DCGANs for 28x28 MNIST)."""
    while side % 2 == 0 and side // 2 >= 4:
        side //= 2
    return side


def _inside_project(path: str, info: ValidationInfo) -> str:
    """A path param read from a params file must stay in the project: relative, with no `..` leaving it.

    The check is lexical, so it holds wherever the stage runs (its cwd is the project) and touches no
    file: a symlink inside the project is followed, which is how a project points at shared data on
    purpose. Checked only when `parse_params` validates (its context says whether CDGAN_ALLOW_EXTERNAL_PATHS
    was set); sections built in code (tests, notebooks) take any path.
    """
    if info.context is None or info.context.get("allow_external_paths"):
        return path
    normal = posixpath.normpath(PurePath(path).as_posix())
    if PurePath(path).is_absolute() or normal == ".." or normal.startswith("../"):
        raise ValueError(
            "must be a path inside the project directory (relative, no '..' leaving it, e.g. data/raw); "
            "move or symlink the files into the project, or set "
            f"{ALLOW_EXTERNAL_PATHS_ENV}=1 to allow paths outside it"
        )
    return path


def _not_bool(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("Input should be a valid number, not true or false")  # YAML's true would read as 1.0
    return value


# Ints and bools are strict: `steps: true` or `steps: "10"` is a typo, not 1 or 10. Floats take ints and numeric
# strings, as YAML 1.1 reads `5e-5` (no dot) as a string, but not bools.
Float = Annotated[float, BeforeValidator(_not_bool)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)  # `.inf` or `.nan` is never a setting


class DataParams(_Section):
    dataset: Dataset = "digits"
    root: str = "data/raw"  # torchvision files or the image folder; never downloaded into git
    download: StrictBool = True  # try torchvision's download when files under `root` are missing
    image_size: StrictInt = Field(8, ge=4)  # images are padded or resized to this side; 4 * 2**n or 7 * 2**n
    n_points: StrictInt = Field(10_000, gt=0)  # samples drawn for 2-D mixtures
    classifier_epochs: StrictInt = Field(10, ge=1)  # epochs of the domain classifier behind FID
    heldout_frac: Float = Field(0.2, gt=0, lt=1)  # share held out: FID reference, k-NN metrics, classifier accuracy
    seed: StrictInt = 0

    @field_validator("image_size")
    @classmethod
    def _is_power_of_two_times_four_or_seven(cls, size: int) -> int:
        if base_side(size) not in (4, 7):
            raise ValueError(f"must be 4 * 2**n or 7 * 2**n (8, 14, 16, 28, 32, 56, 64, ...), got {size}")
        return size

    @property
    def is_image(self) -> bool:
        """Whether the data set is one of images, known from its name before it is built (see is_image_shape)."""
        return self.dataset in IMAGE_DATASETS

    _root_inside_project = field_validator("root")(_inside_project)


class ModelParams(_Section):
    z_dim: StrictInt = Field(16, gt=0)  # latent size
    hidden: StrictInt = Field(128, gt=0)  # MLP width (2-D data)
    channels: StrictInt = Field(32, gt=0)  # base conv width (images)
    energy_channels: StrictInt | None = Field(None, gt=0)  # the energy net's base conv width; None = channels
    spectral_norm: StrictBool = True  # spectral norm on every energy-net layer (IGEBM)


class TrainParams(_Section):
    loss: LossName = "cd"
    cd_k: StrictInt = Field(0, ge=0)  # Langevin steps from G(z); 0 = plain energy gap
    langevin_step_size: Float = Field(0.01, gt=0, le=MAX_STEP_SIZE)  # x <- x - step_size * dE/dx + noise * eps
    langevin_noise: Float = Field(0.005, ge=0)
    langevin_grad_clip: Float = Field(0.0, ge=0)  # clip dE/dx elementwise in the chain (IGEBM); 0 = off
    replay_size: StrictInt = Field(0, ge=0)  # buffer of past chain samples (IGEBM); 0 = off
    replay_frac: Float = Field(0.0, ge=0, le=1)  # share of chains started from the buffer instead of G(z)
    energy_reg: Float = Field(0.1, ge=0)  # L2 penalty on energy magnitudes (cd)
    real_gp: Float = Field(0.0, ge=0)  # gradient penalty |dE/dx|^2 on real data (R1); 0 = off
    gp_weight: Float = Field(10.0, ge=0)  # gradient penalty weight for wgan-gp
    generator_objective: Literal["energy", "cooperative"] = "energy"  # lower E(G(z)), or regress G(z) onto x_k
    steps: StrictInt = Field(2000, gt=0)  # generator steps
    n_critic: StrictInt = Field(1, ge=1)  # energy-net steps per generator step
    batch_size: StrictInt = Field(64, gt=0)  # global: each torchrun process trains on batch_size / world size
    lr: Float = Field(2e-4, gt=0)  # generator, and energy net unless lr_e is set
    lr_e: Float | None = Field(None, gt=0)
    lr_decay: Float = Field(0.0, ge=0, le=1)  # share of the steps, at the end, over which both lrs fall linearly to 0
    beta1: Float = Field(0.5, ge=0, lt=1)
    beta2: Float = Field(0.999, ge=0, lt=1)
    ema: Float = Field(0.999, ge=0, lt=1)  # generator EMA decay; 0 disables it
    energy_ema: Float = Field(0.0, ge=0, lt=1)  # EMA decay of the energy net the sampler refines on; 0 = the last
    log_every: StrictInt = Field(50, gt=0)
    eval_every: StrictInt = Field(500, ge=0)  # score (FID or modes) during training; 0 = never
    checkpoint_every: StrictInt = Field(500, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data_loading: Literal["auto", "device", "stream"] = "auto"  # auto: stream on CUDA past device_data_mb
    device_data_mb: Float = Field(2048.0, gt=0)  # a CUDA device holds prepared data up to this size whole
    num_workers: StrictInt = Field(2, ge=0)  # DataLoader workers gathering streamed batches; 0 = in the loop's process
    amp: StrictBool = False  # bf16 autocast of the forward passes (GPUs with bf16; CPUs too, usually slower)
    channels_last: StrictBool = False  # NHWC memory layout for the conv nets (image data only); faster convs on GPUs
    compile: StrictBool = False  # torch.compile both networks; not with spectral norm or gradient penalties
    seed: StrictInt = 0

    @model_validator(mode="after")
    def _cooperative_needs_a_chain(self) -> TrainParams:
        if self.generator_objective == "cooperative" and (self.loss != "cd" or self.cd_k == 0):
            raise ValueError("generator_objective=cooperative needs loss=cd and cd_k > 0 (G regresses onto x_k)")
        return self

    @model_validator(mode="after")
    def _compile_differentiates_once(self) -> TrainParams:
        if self.compile and (self.loss == "wgan-gp" or self.real_gp > 0):
            raise ValueError(
                "compile=true cannot take gradient penalties (loss wgan-gp, real_gp > 0): "
                "torch.compile does not differentiate twice"
            )
        return self


class SampleParams(_Section):
    """The model's output: G(z) refined by Langevin steps on E (evaluate, `cdgan sample`, the registered model).

    Langevin at temperature T samples p ~ exp(-E / T) (times the latent prior in latent space, as DDLS);
    T = 0 is noiseless descent on E, which pulls every sample to an energy minimum (see cdgan.sampler).
    """

    space: Literal["data", "latent"] = "data"  # data: refine x = G(z); latent: refine z, then G(z) (DDLS)
    langevin_steps: StrictInt = Field(0, ge=0)  # 0 = raw G(z)
    step_size: Float = Field(0.01, gt=0, le=MAX_STEP_SIZE)
    temperature: Float = Field(0.0, ge=0)  # noise sqrt(2 * step_size * temperature) per step


class EvaluateParams(_Section):
    """Scores of image models; 2-D data sets always report `modes` and `hq_frac` and use only n_samples and seed."""

    n_samples: StrictInt = Field(2000, gt=1)
    metrics: tuple[Literal["fid", "kid", "precision_recall", "density_coverage", "inception_score"], ...] = ("fid",)
    feature_extractor: Literal["domain", "inception"] = "domain"  # domain: the classifier `prepare` trains
    inception_weights: str = "data/inception/pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid's file; never fetched
    kid_subsets: StrictInt = Field(100, gt=0)  # KID: mean and std over this many random subsets
    kid_subset_size: StrictInt = Field(1000, gt=1)  # at most min(n_samples, real examples)
    nearest_k: StrictInt = Field(5, gt=0)  # k of the k-NN balls behind precision, recall, density, coverage
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: StrictInt = Field(0, ge=0)

    @field_validator("metrics")
    @classmethod
    def _has_fid_once_each(cls, metrics: tuple[str, ...]) -> tuple[str, ...]:
        if "fid" not in metrics:
            raise ValueError("must include fid (register ranks image models by it)")
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"lists a metric twice: {list(metrics)}")
        return metrics

    @field_serializer("metrics")
    def _as_list(self, metrics: tuple[str, ...]) -> list[str]:
        return list(metrics)  # as params.yaml writes it; a tuple keeps the frozen section hashable

    _weights_inside_project = field_validator("inception_weights")(_inside_project)


class RegisterParams(_Section):
    model_name: str = Field("cdgan", min_length=1)
    min_improvement: Float = Field(0.0, ge=0)  # a challenger must beat the champion by this much


with warnings.catch_warnings():
    # `register` is the params.yaml section name; it shadows only ABCMeta.register, which nothing calls on Params
    warnings.filterwarnings("ignore", message='Field name "register"')

    class Params(_Section):
        data: DataParams = DataParams()
        model: ModelParams = ModelParams()
        train: TrainParams = TrainParams()
        sample: SampleParams = SampleParams()
        evaluate: EvaluateParams = EvaluateParams()
        register: RegisterParams = RegisterParams()


def _experiment_project() -> Path | None:
    """The project a DVC experiment belongs to, or None outside one.

    `dvc exp run` sets DVC_EXP_NAME, and DVC_ROOT to the project's root, also when the experiment runs in a
    copy of it (--queue, --temp: .dvc/tmp/exps/...), where the working directory is the copy.
    """
    if os.environ.get("DVC_EXP_NAME") and os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"])
    return None


@dataclass(frozen=True)
class Paths:
    """Where every stage reads and writes: outputs relative to `root` (the project directory, or the copy a
    DVC experiment runs in), what outlives a run (the MLflow store, resume checkpoints) under `project`."""

    root: Path = Path()
    project: Path | None = field(default_factory=_experiment_project)  # None: `root`; DVC_ROOT in an experiment

    @property
    def home(self) -> Path:
        """The project itself: stores here are shared by every run, and DVC never deletes them."""
        return self.root if self.project is None else self.project

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def dataset(self) -> Path:
        return self.prepared / "dataset.npz"

    @property
    def heldout(self) -> Path:
        """The held-out split: never trained on, the reference every evaluation scores against."""
        return self.prepared / "heldout.npz"

    @property
    def classifier(self) -> Path:
        return self.prepared / "classifier.pt"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def generator(self) -> Path:
        return self.models / "generator.pt"

    @property
    def energy(self) -> Path:
        return self.models / "energy.pt"

    @property
    def checkpoint(self) -> Path:
        return self.models / "checkpoint.pt"

    @property
    def resume(self) -> Path:
        """In-progress checkpoints, one per (params, data) key; outside DVC's outputs so a rerun finds them."""
        return self.home / ".cdgan" / "resume"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def train_metrics(self) -> Path:
        return self.metrics / "train.json"

    @property
    def reference_metrics(self) -> Path:
        return self.metrics / "reference.json"

    @property
    def eval_metrics(self) -> Path:
        return self.metrics / "eval.json"

    @property
    def register_metrics(self) -> Path:
        return self.metrics / "register.json"

    @property
    def train_plots(self) -> Path:
        return self.root / "plots" / "train"

    @property
    def eval_plots(self) -> Path:
        return self.root / "plots" / "eval"

    @property
    def mlruns(self) -> Path:
        return self.home / "mlruns"


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate params.yaml; every problem becomes one CdganError naming the keys."""
    return parse_params(read_params_yaml(Path(path)), source=str(path))


class _ParamsLoader(yaml.SafeLoader):
    """YAML as params files are read: a key written twice is an error, not the last value, and `5e-5`
    (no dot, a string to YAML 1.1) is a float, as YAML 1.2 and every other reader have it."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"{key} is written twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line: what and where."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        return f"{err.problem} at line {err.problem_mark.line + 1}, column {err.problem_mark.column + 1}"
    return " ".join(str(err).split())


def read_params_yaml(path: Path) -> dict:
    """The raw sections of a params file, not yet validated (flows apply overrides to it first)."""
    try:
        raw = yaml.load(path.read_text(), Loader=_ParamsLoader)
    except FileNotFoundError:
        raise CdganError(f"{path}: params file not found; pass --params PATH or run from the project root") from None
    except OSError as err:  # a folder, no permission
        raise CdganError(f"{path}: cannot read the params file ({err.strerror}); pass --params PATH") from None
    except UnicodeDecodeError as err:
        raise CdganError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    except yaml.YAMLError as err:
        raise CdganError(f"{path}: not valid YAML ({_yaml_problem(err)})") from None
    if raw is None:
        raise CdganError(f"{path}: empty; copy the project's params.yaml, or `git checkout params.yaml`")
    if not isinstance(raw, dict):
        raise CdganError(f"{path}: expected a mapping of sections (data, model, train, sample, evaluate, register)")
    return raw


def parse_params(raw: dict, source: str = "params", allow_external_paths: bool | None = None) -> Params:
    """Validate raw sections; path params must stay inside the project unless `allow_external_paths`
    (default: the environment variable CDGAN_ALLOW_EXTERNAL_PATHS is 1)."""
    if allow_external_paths is None:
        allow_external_paths = os.environ.get(ALLOW_EXTERNAL_PATHS_ENV, "") == "1"
    try:
        return Params.model_validate(raw, context={"allow_external_paths": allow_external_paths})
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in issue['loc'])}: {issue['msg']} (got {issue.get('input')!r})"
            for issue in err.errors()
        )
        raise CdganError(f"{source}: {problems}") from None
