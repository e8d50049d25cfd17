"""The pipeline stages, one module each (prepare, reference, train, evaluate, register), plus `sample`.

A stage module holds the stage function, which the `cdgan` CLI, the tests and the benchmarks call, and a `main`
that dvc.yaml runs as `python -m cdgan.stages.<stage>`. It imports only the code its stage runs, so the dvc.yaml
deps derived from those imports (tests/test_dvc_yaml.py) rerun a stage exactly when that code changes. This file
imports nothing: every stage would depend on what it imported.
"""
