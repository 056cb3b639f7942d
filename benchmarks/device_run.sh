#!/usr/bin/env bash
# The CUDA benchmarks in one run of bounded length, for a GPU machine whose time is short.
#
#   bash benchmarks/device_run.sh OUTDIR
#
# Each benchmark runs under its own time cap (seconds, below) and writes its JSON into OUTDIR
# as it goes; all output goes to OUTDIR/run.log. The GPU rows of README.md's tables come from such a run.
# DEVICES=cpu DRY=1 runs the same steps on the CPU with tiny settings (to check the script).
set -u
out=${1:?usage: device_run.sh OUTDIR}
mkdir -p "$out"
log="$out/run.log"
py=${PYTHON:-python3}
devices=${DEVICES:-cuda}
export PYTHONUNBUFFERED=1 DMSQ_PROGRESS=none
export DMSQ_CACHE=${DMSQ_CACHE:-/tmp/dmsq-device-cache}

step() {  # step NAME CAP_SECONDS COMMAND...
  local name=$1 cap=$2
  shift 2
  echo "=== $name (cap ${cap} s) start $(date -u +%T)" | tee -a "$log"
  timeout -s INT -k 15 "$cap" "$@" >>"$log" 2>&1
  echo "=== $name rc=$? end $(date -u +%T)" | tee -a "$log"
}

{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  "$py" -c "import torch, sys; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} >>"$log" 2>&1

if [ "${DRY:-0}" = 1 ]; then
  dm_args=(--sizes 8 --epochs 1,2 --quick)
  caps=(40 40 40 300 40)
else
  # L = 32, the paper's U-Net, both training recipes, acceptance after 40, 100, 250 epochs
  dm_args=(--sizes 32 --channels 32,64,128,256 --epochs 40,100,250)
  caps=(70 50 55 330 45)
fi
step dm_throughput "${caps[0]}" "$py" benchmarks/dm_throughput.py --quick --devices "$devices" \
  --json "$out/dm_throughput.json"
step samplers "${caps[1]}" "$py" benchmarks/samplers.py --devices "$devices" --json "$out/samplers.json"
step hmc_throughput "${caps[2]}" "$py" benchmarks/hmc_throughput.py --quick --devices "$devices" \
  --json "$out/hmc_throughput.json"
step dm_mc_cost "${caps[3]}" "$py" benchmarks/dm_mc_cost.py "${dm_args[@]}" --recipes skip+lognormal,paper \
  --devices "$devices" --json "$out/dm_mc_cost.json"
step compile "${caps[4]}" "$py" benchmarks/dm_throughput.py --quick --compile-only --devices "$devices" \
  --json "$out/compile.json"
ls -la "$out" >>"$log"
