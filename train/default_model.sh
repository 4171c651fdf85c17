#!/usr/bin/env bash
# The GPU stages of the embedded default model (docs/default_model.md), as they ran on one H200 through the
# device tool (each stage is one call of <= 10 minutes; $OUT is what comes back). From the repository root:
#   bash train/default_model.sh vae      # frozen encoders + stage 1 (VAE), exported with its latent statistics
#   bash train/default_model.sh dit      # stage 2 (DiT) on walks encoded by models/sandbox-encoders; resumable
# Environment: VAE_SECONDS / DIT_SECONDS (training time of the stage; SIGTERM then saves a checkpoint),
# OUT (results), WORK (scratch). Wheels the GPU image lacks travel in .whl/ (device README).
set -euo pipefail
OUT=${OUT:-/tmp/default_model_out}; WORK=${WORK:-/tmp/default_model_work}; mkdir -p "$OUT" "$WORK"
if [ -d .whl ] && ! python3 -c "import grain" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
stage=${1:?stage: vae | dit}
case "$stage" in
vae)
  python3 -m train.default_model encoders "$WORK/encoders"
  timeout -s TERM "${VAE_SECONDS:-420}" python3 -m train.train --config sandbox-vae --workdir="$WORK/vae" \
      --tensorboard=false --progress=false "${@:2}" || echo "train exited $?"
  cp "$WORK/vae/metrics.jsonl" "$OUT/vae_metrics.jsonl"; cp "$WORK/vae/config.json" "$OUT/vae_config.json"
  python3 - "$WORK/vae" "$OUT/vae_ema.safetensors" <<'PY'
import sys
from yume_jax.core.tensors import save_safetensors
from yume_jax.train.tasks.vae import trained_params
params, step = trained_params(sys.argv[1])
save_safetensors(sys.argv[2], params, {"step": str(step)})
PY
  cp -r "$WORK/encoders" "$OUT/encoders"
  python3 -m train.default_model export-vae "$WORK/vae" "$WORK/encoders/vae"
  python3 -m train.default_model eval-vae "$WORK/encoders/vae" | tee "$OUT/vae_eval.json"
  cp -r "$WORK/encoders/vae" "$OUT/encoders/vae"
  ;;
dit)
  ENC=${ENCODERS:-models/sandbox-encoders}
  timeout -s TERM "${DIT_SECONDS:-420}" python3 -m train.train --config sandbox-world --workdir="$WORK/dit" \
      --data.path="$ENC" --tensorboard=false --progress=false "${@:2}" || echo "train exited $?"
  cp "$WORK/dit/metrics.jsonl" "$OUT/dit_metrics.jsonl"; cp "$WORK/dit/config.json" "$OUT/dit_config.json"
  python3 - "$WORK/dit" "$OUT/dit_state" <<'PY'
import sys, numpy as np
from pathlib import Path
from yume_jax.core import params as P
from yume_jax.core.tensors import save_safetensors
from yume_jax.train.checkpoint import read_state
step, st = read_state(Path(sys.argv[1]) / "checkpoints")
out = Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
for part in ("params", "ema"):
    flat = {k: np.asarray(v, np.float32) for k, v in P.flatten(st["dit"][part]).items()}
    shard, size, n = {}, 0, 0
    for k in sorted(flat):
        shard[k] = flat[k]; size += flat[k].nbytes
        if size > 12 << 20:
            save_safetensors(out / f"{part}-{n}.safetensors", shard); shard, size, n = {}, 0, n + 1
    if shard:
        save_safetensors(out / f"{part}-{n}.safetensors", shard)
(out / "step").write_text(str(step))
print("saved step", step)
PY
  ;;
*) echo "unknown stage $stage" >&2; exit 2;;
esac
