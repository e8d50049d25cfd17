"""Serving: the registered sampler behind a real `mlflow models serve` process, and loaded in a fresh process."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from PIL import Image

from cdgan import registry
from cdgan.models import build_models
from cdgan.params import ModelParams, SampleParams
from tests.conftest import BIN, run

IMAGE_SHAPE = (1, 8, 8)
START_SECONDS = 180  # a server imports mlflow and torch first: ~30 s on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(cmd: list[str], ready_url: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start `cmd` in its own process group and wait until `ready_url` answers 200; stop it on failure."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}, start_new_session=True
        )
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        try:
            if requests.get(ready_url, timeout=2).status_code == 200:
                return process
        except requests.RequestException:
            pass  # not listening yet
        if process.poll() is not None:
            break
        time.sleep(0.25)
    stop_server(process)
    raise AssertionError(f"{' '.join(cmd)} did not answer {ready_url}:\n{log.read_text()[-3000:]}")


def stop_server(process: subprocess.Popen) -> None:
    """Stop the server's whole process group (its workers too), even if the command itself already ended."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue
        time.sleep(0.2)  # let workers of the group exit after their parent


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
        model_uri = registry.log_sampler(bundle)
    name = f"serve-{uuid.uuid4().hex[:8]}"
    registration = registry.register_version(model_uri, name, "fid", 1.0, True, {"dataset": "digits"}, 0.0)
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
    server = start_server(cmd, f"http://127.0.0.1:{port}/ping", env, log)
    try:
        yield f"http://127.0.0.1:{port}/invocations"
    finally:
        stop_server(server)


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


def test_a_fresh_process_loads_the_champion_by_alias(image_model: str, mlflow_uri: str, tmp_path: Path) -> None:
    # given the samples an in-process load draws
    x = mlflow.pyfunc.load_model(image_model).predict(pd.DataFrame({"n": [3], "seed": [0]}))

    # when a new interpreter, outside the repository, loads the model by alias
    code = (
        "import hashlib, sys, mlflow, pandas as pd\n"
        "x = mlflow.pyfunc.load_model(sys.argv[1]).predict(pd.DataFrame({'n': [3], 'seed': [0]}))\n"
        "print(x.shape, hashlib.sha256(x.tobytes()).hexdigest())\n"
    )
    result = run([sys.executable, "-c", code, image_model], tmp_path, env={"MLFLOW_TRACKING_URI": mlflow_uri})

    # then it draws the same samples
    shape, digest = result.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    assert shape == str((3, *IMAGE_SHAPE))
    assert digest == hashlib.sha256(x.tobytes()).hexdigest(), "a fresh process drew other samples"
