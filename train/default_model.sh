#!/usr/bin/env bash
# The GPU stages of the embedded default model (docs/default_model.md), as they ran on one H200 through the
# device tool (each stage is one call of <= 10 minutes; $OUT is what comes back). From the repository root:
#   bash train/default_model.sh vae      # frozen encoders + stage 1 (VAE), exported with its latent statistics
#   bash train/default_model.sh dit      # stage 2 (DiT) on walks encoded by models/sandbox-encoders;
#   INIT=<previous \$OUT/dit> bash train/default_model.sh dit   # the next call continues from its EMA weights
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
  INIT=${INIT:+--model.init=$INIT}  # the previous call's $OUT/dit (EMA weights, bf16): resume across calls
  timeout -s TERM "${DIT_SECONDS:-420}" python3 -m train.train --config sandbox-world --workdir="$WORK/dit" \
      --data.path="$ENC" --tensorboard=false --progress=false $INIT "${@:2}" || echo "train exited $?"
  cp "$WORK/dit/metrics.jsonl" "$OUT/dit_metrics.jsonl"; cp "$WORK/dit/config.json" "$OUT/dit_config.json"
  python3 -m train.default_model export-dit "$WORK/dit" "$OUT/dit"
  ;;
*) echo "unknown stage $stage" >&2; exit 2;;
esac
