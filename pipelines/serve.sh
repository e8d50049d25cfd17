#!/usr/bin/env bash
# `make serve`: a local Prefect server, the project's deployments, a worker and the MLflow UI, all on 127.0.0.1.
# Ctrl-C (or any of them failing) stops all of them.
set -euo pipefail
PREFECT_PORT=${PREFECT_PORT:-4200}
MLFLOW_PORT=${MLFLOW_PORT:-5000}
OPTUNA_PORT=${OPTUNA_PORT:-8080}
export PREFECT_API_URL="http://127.0.0.1:${PREFECT_PORT}/api"
export CDGAN_PROJECT_DIR="$PWD"
pids=()
stop() {
  trap - EXIT INT TERM
  kill "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 15); do
    alive=0; for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0
    sleep 1
  done
  kill -9 "${pids[@]}" 2>/dev/null || true  # a worker that lost its server can hang on shutdown
}
trap stop EXIT INT TERM

prefect server start --host 127.0.0.1 --port "$PREFECT_PORT" & pids+=($!)
for _ in $(seq 60); do curl -sf "$PREFECT_API_URL/health" >/dev/null && break; sleep 1; done
curl -sf "$PREFECT_API_URL/health" >/dev/null || { echo "serve: Prefect server did not start on port $PREFECT_PORT" >&2; exit 1; }

prefect work-pool inspect cdgan-local >/dev/null 2>&1 || prefect work-pool create cdgan-local --type process
prefect --no-prompt deploy --all
prefect worker start --pool cdgan-local & pids+=($!)
mkdir -p mlruns
mlflow ui --backend-store-uri "${MLFLOW_TRACKING_URI:-sqlite:///mlruns/mlflow.db}" --host 127.0.0.1 --port "$MLFLOW_PORT" & pids+=($!)
mkdir -p sweeps  # the tuning studies' storage, as cdgan-tune opens it by default
optuna-dashboard "sqlite:///sweeps/optuna.db" --host 127.0.0.1 --port "$OPTUNA_PORT" & pids+=($!)

echo "Prefect UI: http://127.0.0.1:${PREFECT_PORT}   MLflow UI: http://127.0.0.1:${MLFLOW_PORT}   Optuna dashboard: http://127.0.0.1:${OPTUNA_PORT}   (Ctrl-C stops all)"
wait -n
