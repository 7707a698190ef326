#!/usr/bin/env bash
# One call of the device tool on a lent GPU machine (README, "Measured on a GPU"): install the carried wheel part
# (scripts/install_gpu.py device-install), then run the GPU benchmark within a time budget; results go to
# bench_results/gpu there (kept while the machine stays warm, so the next call continues them) and to $OUT.
#
#   bash scripts/gpu_device_call.sh PART TIER [benchmark arguments...]
#   e.g. bash scripts/gpu_device_call.sh p1 bench --budget-s 480 --suites zero knife
#
# PART is a folder under .whl/ (written by scripts/pack_device_wheels.py) carried with the call; TIER (bench or
# e2e) must be complete once it is installed.
set -euo pipefail
part=$1
tier=$2
shift 2
out=${OUT:-/tmp/reasondistill-out}
mkdir -p "$out"
python3 scripts/install_gpu.py device-install ".whl/$part" --need "$tier" --json "$out/install-$part.json"
export PYTHONPATH=/tmp/reasondistill-site PYTHONUNBUFFERED=1
status=0
python3 -m ray_jobs.benchmarks.gpu --out bench_results/gpu --copy-to "$out" "$@" || status=$?
logs=$(cd bench_results/gpu && ls -d logs work/device.json e2e/runs/ray-head.log 2>/dev/null || true)
[ -z "$logs" ] || tar -czf "$out/logs-$part.tar.gz" -C bench_results/gpu $logs
exit "$status"
