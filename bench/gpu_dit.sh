#!/usr/bin/env bash
# One device call: JAX DiT vs the PyTorch reference (eager, compiled) at the shapes.
# Usage on the device (carry .whl): bash bench/gpu_dit.sh "14b-i2v:9x68x120 1.3b-t2v:21x60x104"
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for spec in $1; do
  m=${spec%%:*}; lat=${spec##*:}
  python3 bench/dit_forward.py --model "$m" --latent "$lat" ${JAX_ARGS:-} 2>&1 | grep -v Warning | tee -a "$OUT/dit.jsonl"
  python3 shared_bench/torch_wan_reference.py --model "$m" --latent "$lat" 2>&1 | tail -1 | tee -a "$OUT/dit.jsonl"
  python3 shared_bench/torch_wan_reference.py --model "$m" --latent "$lat" --compile 2>&1 | tail -1 | tee -a "$OUT/dit.jsonl"
done
