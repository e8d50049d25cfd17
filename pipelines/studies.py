"""The Optuna side of `cdgan-tune`: the YAML search space, the study in its storage (created, continued, its
interrupted trials queued again), the objective, and what a finished study leaves: the best params as a preset
(an overlay of params.yaml), plots and a summary. No Prefect here: pipelines.tune runs the trials as a flow."""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import optuna
import yaml
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)
from optuna.trial import FrozenTrial, TrialState

from cdgan.errors import CdganError
from cdgan.files import write_atomic
from cdgan.params import DataParams, Params, parse_params, read_params_yaml
from cdgan.ranking import objective_for
from pipelines.overrides import resolve_params, with_overrides

SPACE_TYPES = ("float", "int", "categorical")
SPACE_FIELDS = {"float": {"low", "high", "log"}, "int": {"low", "high", "log"}, "categorical": {"choices"}}
PRUNE_AFTER_TRIALS = 3  # MedianPruner: no pruning until this many trials have finished
OWNER_ATTR = "cdgan.owner"  # host:pid of the flow that asked the trial: a RUNNING trial whose pid is gone was killed
REQUEUED_ATTR = "cdgan.requeued_from"
STUDY_ATTR = "cdgan.study"  # the space and data set a study was created with; a resume must match them
JOURNAL_PREFIX = "journal:"
STORAGE_FORMS = "expected journal:PATH (a journal file) or an RDB URL such as sqlite:///PATH or postgresql://HOST/DB"


class StudyRef(NamedTuple):
    """What a trial needs to open its study in another thread or on a Dask worker (the pruner is not stored)."""

    storage: str  # as `resolve_storage` returns it, opened by `open_storage`
    name: str
    pruner: optuna.pruners.BasePruner


def default_storage(project: Path) -> str:
    return f"sqlite:///{project / 'sweeps' / 'optuna.db'}"


def resolve_storage(storage: str | None, project: Path) -> str:
    """The study storage every process of a study opens, by this string: `default_storage` for None,
    `journal:PATH` (Optuna's journal file, for a shared filesystem; a relative PATH is under `project`) with PATH
    made absolute, or an RDB URL (sqlite:///PATH, postgresql://...) whose database driver is installed.
    Raises CdganError for anything else, before the storage is touched."""
    if storage is None:
        return default_storage(project)
    if storage.startswith(JOURNAL_PREFIX):
        path = storage.removeprefix(JOURNAL_PREFIX)
        if not path:
            raise CdganError(f"--storage {storage!r}: expected journal:PATH, a journal file such as sweeps/optuna.log")
        path = project / Path(path).expanduser()
        if path.is_dir():
            raise CdganError(f"--storage {storage!r}: {path} is a directory; journal:PATH names a file")
        return f"{JOURNAL_PREFIX}{path}"
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        dialect = make_url(storage).get_dialect()
    except (ArgumentError, NoSuchModuleError) as err:
        raise CdganError(f"--storage {storage!r}: {STORAGE_FORMS} ({err})") from None
    try:
        dialect.import_dbapi()
    except ImportError as err:
        raise CdganError(
            f"--storage {storage!r}: the {dialect.name} driver {err.name} is not installed; install it, or name "
            "an installed driver in the URL as DIALECT+DRIVER://"
        ) from None
    return storage


def open_storage(storage: str) -> optuna.storages.BaseStorage:
    """The Optuna storage of a `resolve_storage` string: a JournalStorage on the file of `journal:PATH` (its
    folder made), else the RDB storage of the URL (a sqlite file's folder made)."""
    if storage.startswith(JOURNAL_PREFIX):
        path = Path(storage.removeprefix(JOURNAL_PREFIX))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    if storage.startswith("sqlite:///"):
        Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.get_storage(storage)


def study_inputs(
    project: Path, space: str, trials: int, params_path: str, base: dict[str, Any]
) -> tuple[dict[str, Any], Params, dict[str, BaseDistribution]]:
    """What a study runs, validated before any trial: the raw params (`params_path` on the project's params.yaml,
    then the dotted `base` overrides), them parsed, and the search space in `space`. Raises CdganError."""
    if not (project / "dvc.yaml").is_file():
        raise CdganError(f"{project / 'dvc.yaml'} not found: cdgan-tune runs the pipeline of a project directory")
    raw = resolve_params(project, params_path, base)
    params = parse_params(raw, str(params_path))
    distributions = read_space(project / space, raw)
    if trials < 1:
        raise CdganError(f"cdgan-tune: trials must be >= 1 (got {trials})")
    return raw, params, distributions


def read_space(path: Path, raw: dict[str, Any]) -> dict[str, BaseDistribution]:
    """The search space in `path` (dotted params.yaml keys -> {type, low, high, log} or {type, choices}) as
    Optuna distributions. Every problem goes into one CdganError, and the params at both ends of each range
    (and every choice) must pass `parse_params` on top of `raw`: a bad key or bound fails here, before any trial."""
    try:
        spec = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise CdganError(f"{path}: search space file not found") from None
    except yaml.YAMLError as err:
        raise CdganError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(spec, dict) or not spec:
        raise CdganError(
            f"{path}: expected a mapping of dotted params keys to {{type, low, high}} or {{type, choices}}"
        )
    problems: list[str] = []
    space: dict[str, BaseDistribution] = {}
    for key, entry in spec.items():
        try:
            space[key] = _distribution(key, entry)
        except ValueError as err:
            problems.append(f"{key}: {err}")
            continue
        values = (
            space[key].choices if isinstance(space[key], CategoricalDistribution) else (entry["low"], entry["high"])
        )
        for value in values:
            try:
                parse_params(with_overrides(raw, {key: value}), f"{key}={value!r}")
            except CdganError as err:
                problems.append(str(err))
    if problems:
        raise CdganError(f"{path}: " + "; ".join(problems))
    return space


def _distribution(key: Any, entry: Any) -> BaseDistribution:
    """One space entry as an Optuna distribution; ValueError says what is wrong with it."""
    if not isinstance(key, str) or key.count(".") != 1:
        raise ValueError("expected a dotted params.yaml key such as train.lr")
    if key == "data.dataset":
        raise ValueError("a study tunes one data set (one MLflow experiment); set data.dataset in --params")
    if not isinstance(entry, dict):
        raise ValueError("expected {type: float|int, low, high[, log]} or {type: categorical, choices}")
    kind = entry.get("type")
    if kind not in SPACE_TYPES:
        raise ValueError(f"unknown type {kind!r}; expected one of {', '.join(SPACE_TYPES)}")
    extra = set(entry) - SPACE_FIELDS[kind] - {"type"}
    if extra:
        raise ValueError(f"unknown fields {sorted(extra)} for type {kind}")
    if kind == "categorical":
        choices = entry.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ValueError("categorical needs a non-empty list of choices")
        return CategoricalDistribution(choices)
    number = int if kind == "int" else (int, float)
    low, high, log = entry.get("low"), entry.get("high"), entry.get("log", False)
    for name, value in (("low", low), ("high", high)):
        if not isinstance(value, number) or isinstance(value, bool):
            raise ValueError(f"{name} must be {'an integer' if kind == 'int' else 'a number'} (got {value!r})")
    if low > high:
        raise ValueError(f"low > high ({low} > {high})")
    if not isinstance(log, bool):
        raise ValueError(f"log must be true or false (got {log!r})")
    if log and low <= 0:
        raise ValueError(f"log needs low > 0 (got {low})")
    return IntDistribution(low, high, log=log) if kind == "int" else FloatDistribution(float(low), float(high), log=log)


def open_study(
    storage: str, name: str, data: DataParams, space: dict[str, BaseDistribution], logger: Any
) -> optuna.Study:
    """The study `name` in `storage` (a `resolve_storage` string), created for this search space and data set
    (in the direction of the data set's objective), or continued if it was created for the same ones, its
    interrupted trials queued again (`requeue_interrupted`)."""
    signature = {"space": {key: distribution_to_json(d) for key, d in space.items()}, "dataset": data.dataset}
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # trials are logged by this flow, not per Optuna call
    study = optuna.create_study(
        storage=open_storage(storage),
        study_name=name,
        direction=objective_for(data.is_image).direction,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNE_AFTER_TRIALS),
        load_if_exists=True,
    )
    # a resumed study draws afresh: TPE's random start seeded as before would repeat the first trials' params
    study.sampler = optuna.samplers.TPESampler(seed=len(study.trials))
    before = study.user_attrs.get(STUDY_ATTR)
    if before is None:
        study.set_user_attr(STUDY_ATTR, signature)
    elif before != signature:
        raise CdganError(
            f"study {name!r} in {storage} was made with another search space or data set ({before}); "
            "give this one another --name"
        )
    requeue_interrupted(study, logger)
    return study


def load_trial(ref: StudyRef, number: int) -> optuna.Trial:
    """Trial `number` of the study, opened afresh from its storage (its own connection), with the study's pruner."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(ref.storage)
    study = optuna.load_study(study_name=ref.name, storage=storage, pruner=ref.pruner)
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(ref.name), number)
    return optuna.Trial(study, trial_id)


def requeue_interrupted(study: optuna.Study, logger: Any) -> None:
    """Trials left RUNNING by a flow process of this host that is gone: failed, and queued again with their params.

    RUNNING trials of other hosts (several nodes on one storage) or of live processes are left alone.
    """
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner_host, _, pid = str(trial.user_attrs.get(OWNER_ATTR, "")).rpartition(":")
        if owner_host != host or not pid.isdigit() or _is_alive(int(pid)):
            continue
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={REQUEUED_ATTR: trial.number})
        logger.warning(
            "trial %d was interrupted (its flow, pid %s, is gone): failed and queued again", trial.number, pid
        )


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def best_trial(study: optuna.Study, failure: BaseException | None) -> FrozenTrial:
    try:
        return study.best_trial
    except ValueError:  # no complete trial
        if failure is not None:
            raise failure from None
        raise CdganError(f"study {study.study_name!r} has no complete trial (all pruned or failed)") from None


def write_preset(
    project: Path, name: str, raw: dict[str, Any], study: optuna.Study, best: FrozenTrial, metric: str
) -> Path:
    """presets/tuned-<name>.yaml: an overlay of the project's params.yaml holding the keys where `raw` (the best
    trial's params) differs from it, and a header saying where they came from and how to apply them."""
    path = project / "presets" / f"tuned-{name}.yaml"
    parse_params(raw, str(path))  # the space's ends were checked; this is the combination that won
    overlay = differing_keys(raw, read_params_yaml(project / "params.yaml"))
    header = (
        f"# Tuned by cdgan-tune, study {name!r}: trial {best.number} of {len(study.trials)}, {metric} objective "
        f"{best.value:.6g}.\n# Values from the search: "
        + ", ".join(f"{key}={value}" for key, value in best.params.items())
        + "\n# The keys where these params differ from params.yaml as it was then (a search value equal to its"
        + f"\n# params.yaml value is left out). Use: cdgan params apply presets/tuned-{name}.yaml && dvc repro\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: tmp.write_text(header + yaml.safe_dump(overlay, sort_keys=False)))
    return path


def differing_keys(raw: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The keys of `raw` whose value differs from `base`'s or that `base` lacks, nested as in `raw`:
    `overlay_params(base, differing_keys(raw, base))` validates to the same params as `raw`."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        below = base.get(key)
        if isinstance(value, dict):
            inner = differing_keys(value, below if isinstance(below, dict) else {})
            if inner:
                out[key] = inner
        elif key not in base or below != value:
            out[key] = value
    return out


def write_plots(study: optuna.Study, folder: Path) -> list[Path]:
    """Optimisation history, intermediate values (what the pruner saw) and, from 2 complete trials on,
    parameter importances, as PNG files in `folder`."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    plots = {"history": vis.plot_optimization_history, "intermediate": vis.plot_intermediate_values}
    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) >= 2:
        plots["importances"] = vis.plot_param_importances
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, plot in plots.items():
        # rc_context: optuna's plots switch to its ggplot style, which must not reach this process's later pictures
        with warnings.catch_warnings(), plt.rc_context():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            axes = plot(study)
        figure = axes.figure
        path = folder / f"{name}.png"
        write_atomic(path, lambda tmp, figure=figure: figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
        plt.close(figure)
        out.append(path)
    return out


def state_counts(study: optuna.Study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def write_summary(path: Path, study: optuna.Study, best: FrozenTrial, metric: str, storage: str, preset: Path) -> str:
    keys = list(best.params)
    rows = "".join(
        f"| {t.number} | {t.state.name} | {'' if t.value is None else f'{t.value:.4g}'} | "
        + " | ".join(str(t.params.get(key, "")) for key in keys)
        + " |\n"
        for t in study.get_trials(deepcopy=False)
    )
    states = ", ".join(f"{count} {state.lower()}" for state, count in state_counts(study).items())
    markdown = (
        f"# cdgan-tune {study.study_name}\n\nStudy `{study.study_name}` in `{storage}`: {states}; objective "
        f"{metric} ({study.direction.name.lower()}).\n\nBest: trial {best.number}, {best.value:.6g}, "
        + ", ".join(f"`{key}={value}`" for key, value in best.params.items())
        + f"; preset `{preset.name}`.\n\n| trial | state | {metric} | "
        + " | ".join(keys)
        + " |\n|---|---|---|"
        + "---|" * len(keys)
        + "\n"
        + rows
        + f"\n![history](tune-{study.study_name}/history.png)\n"
    )
    write_atomic(path, lambda tmp: tmp.write_text(markdown))
    return markdown
