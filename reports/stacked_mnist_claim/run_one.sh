#!/bin/bash
# run_one.sh NAME KEY=VALUE... : a stacked-mnist project in /tmp/sm/NAME from the prepared base, then train + evaluate
set -u
name=$1; shift
src=/work/main; base=/tmp/sm/base; dir=/tmp/sm/$name
source $src/.venv/bin/activate
export OMP_NUM_THREADS=${THREADS:-1}
rm -rf "$dir"; mkdir -p "$dir/data" "$dir/metrics"
cp -r $base/data/prepared "$dir/data/"; cp $base/metrics/prepare.json "$dir/metrics/"; cp $base/params.yaml "$dir/"
cd "$dir"
python - "$@" <<'PY'
import sys, yaml
raw = yaml.safe_load(open("params.yaml"))
for kv in sys.argv[1:]:
    key, value = kv.split("=", 1)
    section, name = key.split(".")
    raw[section][name] = yaml.safe_load(value)
yaml.safe_dump(raw, open("params.yaml", "w"), sort_keys=False)
PY
start=$(date +%s); cdgan train > train.log 2>&1; rc=$?; end=$(date +%s)
echo "train rc=$rc seconds=$((end-start))" > timing.txt
cdgan evaluate > eval.log 2>&1; echo "evaluate rc=$? seconds=$(( $(date +%s)-end ))" >> timing.txt
