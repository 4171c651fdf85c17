"""Throughput accounting (FLOPs, MFU) and metric sinks (console line, JSONL, TensorBoard).

FLOPs are counted analytically, matmuls only (2 m n k), as MFU is usually defined: a training step is
3 x the forward FLOPs (forward + backward for activations and weights), rematerialisation NOT counted.
The forward covers patch and history embeddings, text/image embeddings, every block (self-attention
projections and scores, cross-attention over text and image tokens, FFN), the MVDT pass (first blocks
on the kept tokens, the side block and the remaining blocks on all tokens) and the head.

MFU = FLOPs per second per device / the device's peak dense bf16 FLOP/s (:data:`PEAK_TFLOPS`, vendor
figures; override with ``--peak_tflops``). TensorBoard event files come from ``tensorboardX`` (no
TensorFlow needed).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from yume_jax.models import masking, memory

# dense bf16 peak per device (vendor data sheets), matched against jax's device_kind
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "H800": 989.4, "A100": 312.0, "A800": 312.0, "L40S": 362.1,
               "B200": 2250.0, "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0,
               "TPU v5": 459.0, "TPU v6 lite": 918.0, "TPU v6e": 918.0}


def peak_tflops(device_kind: str) -> float | None:
    for k in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if k.lower() in device_kind.lower():
            return PEAK_TFLOPS[k]
    return None


def _block(d: int, ffn: int, lq: int, lt: int, li: int) -> float:
    f = 2 * lq * d * d * 4 + 4 * lq * lq * d  # self-attention q, k, v, o and QK^T, PV
    f += 2 * lq * d * d * 2 + 2 * lt * d * d * 2 + 4 * lq * lt * d  # cross-attention over text
    if li:
        f += 2 * li * d * d * 2 + 4 * lq * li * d  # image keys/values and attention
    return f + 2 * lq * d * ffn * 2


def forward_flops(dit, frames: int, height: int, width: int, chunk: int, text_len: int, image_tokens: int = 0,
                  keep: int | None = None) -> dict[str, float]:
    """FLOPs of the plain forward and of the MVDT forward (``keep`` kept tokens) for one sample."""
    d, pt, ph, pw = dit.dim, *dit.patch_size
    ci = dit.in_channels
    li = image_tokens if dit.image_dim is not None else 0
    n_chunk = (chunk // pt) * (height // ph) * (width // pw)
    emb = 2 * n_chunk * ci * pt * ph * pw * d
    hist_tokens = 0
    for g in memory.schedule(frames - chunk):
        gh, gw = memory.grid_after(g.tier, height, width)
        n = g.frames * gh * gw
        hist_tokens += n
        if g.tier == "base":
            emb += 2 * n * ci * ph * pw * d
        elif g.tier == "2x_f+16x":
            h4, w4 = math.ceil(height / 4), math.ceil(width / 4)
            emb += 2 * g.frames * h4 * w4 * ci * 16 * ci + 2 * n * ci * 32 * 32 * d
        else:
            k = memory.KERNEL[g.tier]
            emb += 2 * n * ci * k * k * d
    tokens = n_chunk + hist_tokens
    emb += 2 * text_len * (dit.text_dim * d + d * d)
    if li:
        emb += 2 * li * (dit.image_dim * dit.image_dim + dit.image_dim * d)
    head = 2 * n_chunk * d * dit.out_channels * pt * ph * pw
    blk = _block(d, dit.ffn_dim, tokens, text_len, li)
    plain = emb + dit.num_layers * blk + head
    out = {"tokens": tokens, "plain": float(plain), "masked": 0.0}
    if keep is not None:
        split = masking.split_layer(dit.num_layers)
        out["masked"] = float(emb + split * _block(d, dit.ffn_dim, keep, text_len, li)
                              + (1 + dit.num_layers - split) * blk + head)
    return out


def train_flops(fwd: dict[str, float]) -> float:
    """FLOPs of one training sample: 3 x (plain + masked forward)."""
    return 3.0 * (fwd["plain"] + fwd["masked"])


def truncate_jsonl(path: Path, last_step: int) -> int:
    """Keep the records of ``path`` with ``step <= last_step`` (a resumed run redoes the later ones) and
    drop lines a kill cut short; rewritten atomically (temporary file + rename). Returns the lines dropped."""
    if not path.is_file():
        return 0
    keep, dropped = [], 0
    with open(path, "rb") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
                ok = isinstance(rec, dict) and int(rec["step"]) <= last_step and line.endswith(b"\n")
            except (ValueError, KeyError, TypeError):
                ok = False
            if ok:
                keep.append(line)
            else:
                dropped += 1
    if dropped:
        tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
        with open(tmp, "wb") as fh:
            fh.writelines(keep)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    return dropped


class Sinks:
    """metrics.jsonl (every step) and TensorBoard scalars, written by process 0 only. ``start_step``: the
    step the run starts from; records of later steps (from a run that went past its last checkpoint) are
    dropped from metrics.jsonl and purged from TensorBoard, so each step appears once."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, start_step: int = 0):
        self.enabled = enabled
        self.jsonl = None
        self.tb = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        truncate_jsonl(run_dir / "metrics.jsonl", start_step)
        self.jsonl = open(run_dir / "metrics.jsonl", "a")
        if tensorboard:
            from tensorboardX import SummaryWriter
            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1 if start_step else None)

    def write(self, step: int, values: dict[str, float]):
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if v is not None and math.isfinite(v):
                    self.tb.add_scalar(f"train/{k}", v, step)

    def flush(self):
        if self.enabled:
            self.jsonl.flush()
            if self.tb is not None:
                self.tb.flush()

    def close(self):
        if self.enabled and not self.jsonl.closed:
            self.jsonl.close()
            if self.tb is not None:
                self.tb.close()
