#!/usr/bin/env bash
# The model's GPU checks (issue 4's GPU targets) as one prepared run for a lent GPU machine.
#
#   bash scripts/device_check.sh prepare   # here, once: wheels the GPU image lacks -> .whl,
#                                          # the shared cubes -> .devdata (both git-ignored)
#   device run: command "bash scripts/device_check.sh run", carry [".whl", ".devdata"],
#               timeout_s 540; the figures come back in $OUT (bench_*.json, train_*.txt, log.txt)
#
# On the machine: torch's CUDA device, then `python -m core bench` for the model on the
# benchmark cube (be-flanders-a mirror-tiled, 70 S2 dates, 20 queries): 64 px with 8 samples and
# with 1 (target <= 2 s), 512 px with 8 samples (target <= 30 s), the same 512 px with a tiny
# network (the CPU-side floor, benchmarks/cpu_floor.py), then 200 training steps on the GPU
# (steps per second, for planning a longer run). Each step is bounded by `timeout` so one
# slow check cannot eat the lease. DEVICE=cpu QUICK=1 runs the same steps small on a CPU, to
# check the script here before spending device time.
set -uo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
prepare)
  set -e
  mkdir -p .whl .devdata/cubes
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl netCDF4==1.7.2 cftime==1.6.4.post1
  data="${FIELDFLOW_DATA_DIR:-../shared/data}/cubes"
  cp -f "$data"/*.nc .devdata/cubes/  # read there through FIELDFLOW_DATA_DIR; never committed
  du -sh .whl .devdata
  exit 0
  ;;
run) ;;
*)
  echo "usage: bash scripts/device_check.sh prepare|run" >&2
  exit 2
  ;;
esac

OUT="${OUT:-/tmp/device_check}"
mkdir -p "$OUT"
DEVICE="${DEVICE:-cuda}"
log="$OUT/log.txt"
: >"$log"
say() { echo "== $* ($(date -u +%H:%M:%S))" | tee -a "$log"; }

if ! python3 -c "import netCDF4" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { say "wheels did not install"; exit 1; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -d .devdata/cubes ]; then
  export FIELDFLOW_DATA_DIR="$PWD/.devdata"
fi
export PYTHONUNBUFFERED=1

if [ -n "${QUICK:-}" ]; then
  small=32 large=64 repeats=1 steps=3
else
  small=64 large=512 repeats=5 steps=200
fi

say "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true; } | tee -a "$log"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$log"

bench() {  # name, timeout s, bench arguments...
  local name=$1 limit=$2
  shift 2
  say "bench $name"
  timeout "$limit" python3 -m core bench --methods model --device "$DEVICE" --dates 70 \
    --queries 20 --json "$OUT/bench_$name.json" "$@" 2>&1 | tee -a "$log"
  echo "exit ${PIPESTATUS[0]}" | tee -a "$log"
}
bench "${small}_k8" 150 --sizes "$small" --samples 8 --repeats "$repeats"
bench "${small}_k1" 120 --sizes "$small" --samples 1 --repeats "$repeats"
bench "${large}_k8" 200 --sizes "$large" --samples 8 --repeats 1 --no-trace --timeout 190

# The same large field with a tiny network: the CPU-side floor of the GPU target on this
# machine's cores (input features in threads, the smoother's processes, percentiles).
say "cpu floor $large"
timeout 120 python3 benchmarks/cpu_floor.py --size "$large" --top 25 >"$OUT/cpu_floor_$large.txt" 2>&1
echo "exit $?" | tee -a "$log"
grep -m 1 "^size" "$OUT/cpu_floor_$large.txt" | tee -a "$log"

say "train $steps steps"
timeout 150 python3 -m core train --device "$DEVICE" --steps "$steps" --batch-size 8 \
  --holdout be-flanders-c,hu-alfold --validation-episodes 8 --out "$OUT/probe.pt" \
  2>&1 | tee "$OUT/train_$DEVICE.txt" | tail -n 3 | tee -a "$log"
rm -f "$OUT/probe.pt"  # only its time matters
say "done"
