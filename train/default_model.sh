#!/usr/bin/env bash
# The GPU stages of the embedded default model (docs/default_model.md), one device call each (<= 10 minutes;
# $OUT is what comes back). From the repository root:
#   bash train/default_model.sh smoke    # the whole chain at toy size (~1 min on a GPU, ~6 on 2 CPU cores)
#   bash train/default_model.sh vae      # frozen encoders + stage 1 (VAE), exported with its latent statistics
#   bash train/default_model.sh dit      # stage 2 (DiT) on walks encoded by models/sandbox-encoders; also
#                                        # $OUT/pipeline (shipped layout: bf16, SHA256SUMS)
#   SEED=1 INIT=<previous $OUT/dit> bash train/default_model.sh dit   # the next call continues from its EMA
#                                        # weights on fresh walks (SEED=2 for the one after, ...)
#   PIPE=<a shipped pipeline> bash train/default_model.sh evaluate   # infer.evaluate: teacher and explorer settings
# Environment: VAE_SECONDS / DIT_SECONDS (training time of the stage; SIGTERM then saves a checkpoint),
# OUT (results), WORK (scratch). Wheels the GPU image lacks (grain, array_record, portpicker, dm-tree, ftfy,
# wcwidth, tensorboardX) travel in .whl/: `bash train/gpu_wheels.sh` fetches them (device README).
set -euo pipefail
OUT=${OUT:-/tmp/default_model_out}; WORK=${WORK:-/tmp/default_model_work}; mkdir -p "$OUT" "$WORK"
if [ -d .whl ] && ! python3 -c "import grain" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
stage=${1:?stage: smoke | vae | dit | evaluate}
case "$stage" in
smoke)  # every stage at toy size, in order, on this machine's device: a broken link fails in a minute
  W="$WORK/smoke"; rm -rf "$W"; mkdir -p "$W"
  python3 -m train.default_model encoders "$W/enc"
  python3 -m train.train --config sandbox-vae --workdir="$W/vae" --tensorboard=false --progress=false \
      --steps=3 --batch_size=2 --vae.clips=2 --vae.clip_frames=12 --checkpoint.every=3
  python3 -m train.default_model export-vae "$W/vae" "$W/enc/vae"
  python3 -m train.default_model eval-vae "$W/enc/vae" --walks 2
  python3 -m train.train --config sandbox-world --workdir="$W/dit" --data.path="$W/enc" --tensorboard=false \
      --progress=false --steps=2 --batch_size=2 --data.generate=2 --data.generate_frames=24 \
      --data.history_latents=1,2 --checkpoint.every=2
  python3 -m train.default_model export-dit "$W/dit" "$W/dit_export"
  python3 -m train.train --config sandbox-world --workdir="$W/dit2" --data.path="$W/enc" --tensorboard=false \
      --progress=false --steps=1 --batch_size=2 --data.generate=2 --data.generate_frames=24 \
      --data.history_latents=1,2 --checkpoint.every=1 --model.init="$W/dit_export"
  python3 -m train.default_model ship "$W/dit2" "$W/pipeline"
  if python3 -c "import av" 2>/dev/null; then  # PyAV writes the MP4 (not carried to the GPU image: train/gpu_wheels.sh)
    python3 -m infer.explore --checkpoint "$W/pipeline" --actions "W,→" --steps 2 --out "$W/walk.mp4"
  fi
  python3 -m infer.evaluate --checkpoint "$W/pipeline" --cases quick --steps 2 --out "$W/eval"
  du -sh "$W/pipeline"; echo "smoke: every stage ran" | tee "$OUT/smoke.txt"
  ;;
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
  SEED=${SEED:-0}  # walks [SEED, i]: give each call its own (1, 2, ...) so every call trains on fresh walks
  [ "$SEED" != 777 ] || { echo "SEED 777 is the held-out walks' seed (train/default_model.py HELD_OUT_SEED)" >&2; exit 2; }
  timeout -s TERM "${DIT_SECONDS:-420}" python3 -m train.train --config sandbox-world --workdir="$WORK/dit" \
      --data.path="$ENC" --data.seed="$SEED" --tensorboard=false --progress=false $INIT "${@:2}" \
      || echo "train exited $?"
  cp "$WORK/dit/metrics.jsonl" "$OUT/dit_metrics.jsonl"; cp "$WORK/dit/config.json" "$OUT/dit_config.json"
  python3 -m train.default_model export-dit "$WORK/dit" "$OUT/dit"
  python3 -m train.default_model ship "$WORK/dit" "$OUT/pipeline"
  ;;
evaluate)  # the issue's measurements: the 50-step CFG teacher settings and the explorer's defaults
  PIPE=${PIPE:-models/sandbox-world}
  python3 -m infer.evaluate --checkpoint "$PIPE" --compare "name=teacher-50-cfg5,steps=50,cfg=5" \
      "name=explorer-default" truth noise --out "$OUT/eval" "${@:2}"
  ;;
*) echo "unknown stage $stage" >&2; exit 2;;
esac
