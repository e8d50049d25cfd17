"""Serving: the registered sampler behind a real `mlflow models serve` process, and loaded in a fresh process."""

from __future__ import annotations

import ast
import base64
import hashlib
import importlib.metadata
import io
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from cdgan import registry
from cdgan.models import build_models
from cdgan.params import ModelParams, SampleParams
from cdgan.ranking import IMAGE_OBJECTIVE
from tests.conftest import BIN, free_port, run, serving, start_server, stop_group
from tests.imports import import_closure, module_file

IMAGE_SHAPE = (1, 8, 8)
MODEL_METRICS = {"fid": 1.0, "kid": 0.25}  # what evaluation would have measured


@pytest.fixture(scope="module")
def image_model(mlflow_uri: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random image sampler (2 Langevin steps) registered as champion under a fresh name."""
    mlflow.set_tracking_uri(mlflow_uri)
    model = ModelParams(z_dim=4, channels=4)
    generator, energy = build_models(model, IMAGE_SHAPE)
    bundle = registry.save_bundle(
        tmp_path_factory.mktemp("bundle") / "bundle.pt",
        model,
        IMAGE_SHAPE,
        generator.state_dict(),
        energy.state_dict(),
        SampleParams(langevin_steps=2, step_size=0.01),
    )
    mlflow.set_experiment(f"serving-{uuid.uuid4().hex[:8]}")
    with mlflow.start_run():
        model_uri = registry.log_sampler(bundle, metrics=MODEL_METRICS)
    name = f"serve-{uuid.uuid4().hex[:8]}"
    registration = registry.register_version(model_uri, name, IMAGE_OBJECTIVE, {"fid": 1.0}, {"dataset": "digits"}, 0.0)
    assert registration.alias == registry.CHAMPION
    return f"models:/{name}@{registry.CHAMPION}"


@pytest.fixture(scope="module")
def served(image_model: str, mlflow_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow models serve` of the champion on a free loopback port; yields its /invocations URL."""
    port = free_port()
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", image_model, "--env-manager", "local",
           "-p", str(port), "-h", "127.0.0.1"]  # fmt: skip
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    # the venv's bin on PATH, as an activated venv or `make` has it: the command execs `uvicorn` by name
    env = {"MLFLOW_TRACKING_URI": mlflow_uri, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    server = start_server(cmd, f"http://127.0.0.1:{port}/ping", log, {**os.environ, **env})
    try:
        yield f"http://127.0.0.1:{port}/invocations"
    finally:
        stop_group(server)


ENV_BUILD_SECONDS = 1200  # a fresh virtualenv installs torch and mlflow: 3-5 min from this machine's disk


def _pyenv_python(model_uri: str) -> str | None:
    """The Python version the model was logged with, when pyenv (which MLflow's virtualenv manager builds the
    environment with) has it; None otherwise. MLflow would ask pyenv to download and compile a missing one."""
    version = yaml.safe_load(Path(mlflow.artifacts.download_artifacts(f"{model_uri}/python_env.yaml")).read_text())
    pyenv = shutil.which("pyenv")
    if pyenv is None:
        return None
    have = subprocess.run([pyenv, "versions", "--bare"], capture_output=True, text=True, check=True).stdout.split()
    return version["python"] if version["python"] in have else None


@pytest.mark.slow  # builds a fresh environment: minutes, and about 6 GB of disk while it lasts
def test_the_champion_serves_from_a_fresh_virtualenv_with_its_logged_requirements(
    image_model: str, mlflow_uri: str, tmp_path: Path
) -> None:
    # given MLflow's own virtualenv manager, with an empty environment root: nothing of this venv is reused
    python = _pyenv_python(image_model)
    if python is None:
        pytest.skip("MLflow's virtualenv manager needs pyenv with the model's Python version (python_env.yaml)")
    port, envs = free_port(), tmp_path / "envs"
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", image_model, "--env-manager", "virtualenv",
           "-p", str(port), "-h", "127.0.0.1"]  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "MLFLOW_ENV_ROOT": str(envs)}
    # when it builds the model's environment from the logged requirements and serves from it
    with serving(cmd, f"http://127.0.0.1:{port}/ping", tmp_path / "serve.log", env, ENV_BUILD_SECONDS):
        served = _samples(_invoke(f"http://127.0.0.1:{port}/invocations", [[3, 1]]))
    # then it answers as the model loaded here does, from an environment where cdgan is not installed: the
    # package travels with the model (code_paths), the rest comes from the pinned pip requirements
    local = mlflow.pyfunc.load_model(image_model).predict(pd.DataFrame({"n": [3], "seed": [1]}))
    np.testing.assert_allclose(served, local, rtol=1e-5, atol=1e-6)
    (venv,) = envs.iterdir()
    installed = {p.name.split("-")[0].lower() for p in venv.glob(f"lib/python{python[:4]}*/site-packages/*.dist-info")}
    assert "torch" in installed and "mlflow" in installed, installed
    assert "cdgan" not in installed, "the environment must not get cdgan from an index or this checkout"


def _invoke(url: str, rows: list[list[int]], params: dict | None = None) -> requests.Response:
    body = {"dataframe_split": {"columns": ["n", "seed"], "data": rows}} | ({"params": params} if params else {})
    return requests.post(url, json=body, timeout=60)


def _samples(response: requests.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["predictions"], dtype=np.float32)


def test_served_model_answers_with_the_shape_and_the_same_samples_per_seed(served: str, image_model: str) -> None:
    # when the same request is sent twice, and one with another seed
    first, again = _samples(_invoke(served, [[4, 1]])), _samples(_invoke(served, [[4, 1]]))
    other = _samples(_invoke(served, [[4, 2]]))

    # then the shape is (n, C, H, W), the same seed gives the same samples, another seed others
    assert first.shape == (4, *IMAGE_SHAPE)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other), "another seed must give other samples"
    local = mlflow.pyfunc.load_model(image_model).predict(pd.DataFrame({"n": [4], "seed": [1]}))
    np.testing.assert_array_equal(first, local, err_msg="the server and an in-process load disagree")


def test_served_png_format_is_one_base64_png_per_image(served: str) -> None:
    # when PNGs are asked for
    response = _invoke(served, [[2, 5], [1, 6]], {"format": "png"})

    # then each of the 3 images comes back as a base64 PNG holding the array output's pixels
    assert response.status_code == 200, response.text
    pictures = [Image.open(io.BytesIO(base64.b64decode(row["png"]))) for row in response.json()["predictions"]]
    assert [(p.format, p.mode, p.size) for p in pictures] == [("PNG", "L", (8, 8))] * 3
    x = _samples(_invoke(served, [[2, 5], [1, 6]]))
    expected = np.clip(np.rint((x[:, 0] + 1) * 127.5), 0, 255).astype(np.uint8)  # (N, H, W)
    np.testing.assert_array_equal(np.stack([np.asarray(p) for p in pictures]), expected)


def test_a_bad_request_is_http_400_with_the_reason(served: str) -> None:
    response = _invoke(served, [[2, 0]], {"format": "gif"})
    assert response.status_code == 400 and "format must be one of" in response.text, response.text
    response = _invoke(served, [[0, 0]])
    assert response.status_code == 400 and "n must be > 0" in response.text, response.text


# the draw both processes make: 3 samples of seed 0 from the model in `model`, printed as "<shape> <sha256>"
DRAW = (
    "x = model.predict(pd.DataFrame({'n': [3], 'seed': [0]}))\n"
    "print(x.shape, hashlib.sha256(x.tobytes()).hexdigest())\n"
)


@pytest.fixture(scope="module")
def local_digest(image_model: str) -> str:
    """The sha256 of DRAW's samples from the champion loaded in this process."""
    x = mlflow.pyfunc.load_model(image_model).predict(pd.DataFrame({"n": [3], "seed": [0]}))
    return hashlib.sha256(x.tobytes()).hexdigest()


def _assert_drew_the_same(printed: str, local_digest: str, message: str) -> None:
    shape, digest = printed.rsplit(" ", 1)
    assert shape == str((3, *IMAGE_SHAPE))
    assert digest == local_digest, message


def test_a_fresh_process_loads_the_champion_by_alias(
    image_model: str, local_digest: str, mlflow_uri: str, tmp_path: Path
) -> None:
    # when a new interpreter, outside the repository, loads the model by alias
    code = "import hashlib, sys, mlflow, pandas as pd\nmodel = mlflow.pyfunc.load_model(sys.argv[1])\n" + DRAW
    result = run([sys.executable, "-c", code, image_model], tmp_path, env={"MLFLOW_TRACKING_URI": mlflow_uri})

    # then it draws the samples an in-process load draws
    _assert_drew_the_same(result.stdout.strip().splitlines()[-1], local_digest, "a fresh process drew other samples")


def _third_party_imports(module: str) -> set[str]:
    """Top-level names of the modules outside cdgan and the standard library that `module` imports."""
    tree = ast.parse(module_file(module).read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 0}
    tops = {name.split(".")[0] for name in names if name}
    return {top for top in tops if top != "cdgan" and top not in sys.stdlib_module_names and top != "__future__"}


def test_the_model_s_requirements_name_every_package_its_code_imports_pinned(image_model: str) -> None:
    # given the distributions behind every module that the cdgan code a loaded model runs imports
    owners = importlib.metadata.packages_distributions()
    imported = {top for module in import_closure("cdgan.registry") for top in _third_party_imports(module)}

    # when the logged model's requirements are read
    requirements = Path(mlflow.pyfunc.get_model_dependencies(image_model)).read_text().split()
    pinned = dict(line.split("==") for line in requirements)

    # then they name every package the code imports (mlflow's modules come in mlflow, mlflow-skinny and
    # mlflow-tracing: one will do), each pinned to the installed version, and not cdgan (no index has it)
    missing = {top for top in imported if not {d.lower() for d in owners[top]} & {n.lower() for n in pinned}}
    assert not missing, f"the model imports {sorted(missing)} but its requirements do not name them"
    assert pinned["torch"] == importlib.metadata.version("torch")
    assert all(pinned[name] == importlib.metadata.version(name) for name in pinned)
    assert not any(line.startswith("cdgan") for line in requirements), requirements


def test_the_model_loads_where_cdgan_is_not_installed(
    image_model: str, local_digest: str, mlflow_uri: str, tmp_path: Path
) -> None:
    # when an isolated interpreter (-I: no PYTHONPATH, no user site) drops every sys.path entry that holds
    # cdgan and the editable install's import finder (pip install -e of cdgan and pipelines maps their folders
    # with a finder, not a sys.path entry), and then loads the model by alias
    code = (
        "import hashlib, importlib.util, sys\n"
        "from pathlib import Path\n"
        "sys.path = [p for p in sys.path if not (Path(p or '.') / 'cdgan' / '__init__.py').exists()]\n"
        "sys.meta_path = [f for f in sys.meta_path if not getattr(f, '__module__', '').startswith('__editable__')]\n"
        "assert importlib.util.find_spec('cdgan') is None, 'cdgan is still importable'\n"
        "import mlflow, pandas as pd\n"
        "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "import cdgan\n"
        "print(Path(cdgan.__file__).parent.parent.name)\n"
    ) + DRAW
    result = run([sys.executable, "-I", "-c", code, image_model], tmp_path, env={"MLFLOW_TRACKING_URI": mlflow_uri})

    # then cdgan came from the model's own code/ folder, and it draws the samples an in-process load draws
    where, last = result.stdout.strip().splitlines()[-2:]
    assert where == "code", f"cdgan was imported from {where}, not the model's code/"
    _assert_drew_the_same(last, local_digest, "the model's own code drew other samples")


def test_evaluation_metrics_belong_to_the_logged_model_that_each_version_points_at(image_model: str) -> None:
    # given the champion version, registered from a model logged with its evaluation's metrics
    name = image_model.removeprefix("models:/").split("@")[0]
    version = MlflowClient().get_model_version_by_alias(name, registry.CHAMPION)

    # then its logged model (the version's source, models:/m-...) holds them as metrics, which MLflow 3's model
    # pages show, not only as version tags
    assert version.source.startswith("models:/m-"), version.source
    model_id = version.source.removeprefix("models:/")
    logged = mlflow.get_logged_model(model_id)
    assert {metric.key: metric.value for metric in logged.metrics} == MODEL_METRICS
    assert all(metric.model_id == model_id for metric in logged.metrics)
