"""Typed training configurations with named presets (issue 7; facts: spec/yume.md "Training objective").

    cfg = configs.train.resolve("tiny-sandbox", ["--optim.lr=3e-4", "--mesh.fsdp=2", "--model.dit.num_layers=2"])

``--key=value`` overrides any field, nested with dots (``--objective.mvdt=false``). Two fields are
open dictionaries checked against their target dataclass: ``model.dit`` (fields of
:class:`yume_jax.models.config.DiTConfig` overriding the model preset) and ``data.raw`` (fields of
:class:`yume_jax.data.pipeline.RawConfig` overriding the raw-clip preset). Values are parsed with
the field's type (``none`` for optional fields, ``true/false``, ``1,2`` or ``(1, 2)`` for tuples).

Errors that need no devices (unknown keys, bad values, inconsistent sections) are raised by
:func:`resolve`; errors that need the device count (a mesh that does not divide the devices, a batch
not divisible by the data-parallel size) by :func:`check_devices`. Both are :class:`ConfigError`
(a ValueError) with one line naming the key, and both run before anything is compiled.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from configs import models as model_presets
from yume_jax import configlib
from yume_jax.configlib import ConfigError
from yume_jax.train.tasks.vae import VAETaskConfig


@dataclass(frozen=True)
class ModelConfig:
    preset: str = "tiny-yume"  # a name in configs.models.PRESETS
    dit: dict = field(default_factory=dict)  # DiTConfig overrides, e.g. {"num_layers": 2}
    init: str | None = None  # converted Wan/Yume checkpoint dir (python -m yume_jax.convert); None: random
    seed: int = 0  # random init (and fresh Yume extras when starting from a Wan checkpoint)


@dataclass(frozen=True)
class DataConfig:
    source: str = "sandbox"  # sandbox: world clips + stand-in encoder; latents: python -m train.build_latents
    #                          output (real VAE/umT5/CLIP features); synthetic: random latents. Presets of real
    #                          models (yume14b-540p) default to latents and refuse to run without --data.path
    path: str | None = None  # sandbox clips (Sekai or Yume layout; None: <workdir>/world) or the latent dataset dir
    layout: str | None = None  # None: detect
    generate: int = 0  # sandbox: render this many world videos into `path` when it holds none
    generate_frames: int = 60  # frames per rendered world video
    world: str = "tiny"  # yume_jax.data.world.PRESETS name for rendering (its size must fit raw height/width)
    raw_preset: str = "tiny"  # yume_jax.data.pipeline.RAW_PRESETS name
    raw: dict = field(default_factory=dict)  # RawConfig overrides, e.g. {"chunk_frames": 9}
    history_latents: tuple[int, ...] = ()  # round history latent frames down to one of these (bounds compiles)
    latent_channels: int = 16  # z of the (stand-in) VAE
    vae_stride: tuple[int, int, int] = (4, 8, 8)
    text_len: int = 512  # text tokens after zero padding (Wan: 512)
    image_tokens: int = 257  # image-encoder tokens (CLIP ViT-H/14: 257)
    synthetic_history: int = 0  # synthetic: history latent frames of every sample
    num_workers: int = 0  # Grain multiprocessing workers
    seed: int = 0
    log_samples: bool = False  # write the ids of every sample each process consumed to samples.p<i>.jsonl
    max_skip_fraction: float = 0.5  # fail when more samples than this were skipped (broken clips/records) ...
    min_attempts: int = 32  # ... once this many were tried; a dataset where nothing decodes fails there too


@dataclass(frozen=True)
class ObjectiveConfig:
    history: str = "noised"  # noised: same t as the chunk (Yume 1.0); clean: t = 0 on history tokens (Yume 1.5)
    mvdt: bool = True  # masked pass + unmasked pass, losses summed (needs sideblock + mask_token)
    mask_low: float = 0.3  # mask ratio r = mask_low + U(0, mask_width)
    mask_width: float = 0.2
    mask_buckets: int = 5  # distinct masked-token counts per sequence length (bounded compiles; law-preserving rounding)
    t_mean: float = 0.0  # logit-normal location / scale
    t_std: float = 1.0
    shift: float = 3.0  # t' = shift t / (1 + (shift - 1) t)
    i2v: bool = True  # conditioning channels (mask + clean latents of the conditioning frames) if the model has them


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-5
    schedule: str = "constant"  # constant | cosine | linear (after warmup)
    warmup_steps: int = 0
    decay_steps: int | None = None  # None: the run's total steps
    end_lr_ratio: float = 0.0  # cosine/linear end value as a fraction of lr
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 1e-3
    clip_norm: float = 1.0  # global-norm clipping; 0 disables
    ema_decay: float = 0.0  # 0 disables the EMA copy of the parameters
    grad_accum: int = 1  # micro-batches per optimizer step
    nonfinite: str = "stop"  # NaN/inf loss or gradients: stop (exit 2, no checkpoint of it) | skip (the update)


@dataclass(frozen=True)
class MeshConfig:
    data: int = 1
    fsdp: int = -1
    context: int = 1
    tensor: int = 1

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RuntimeConfig:
    dtype: str = "bfloat16"  # compute dtype; parameters and optimizer state stay float32
    attention: str = "auto"
    seq_parallel: str = "auto"  # over mesh.context: auto | ulysses (all-to-all head split) | gather (K/V all-gather)
    remat: str = "full"
    scan_layers: bool = True


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 1000  # steps between saves (a final save always happens)
    max_to_keep: int = 3
    async_save: bool = True


@dataclass(frozen=True)
class DistConfig:
    """jax.distributed; all None: single process (or the cluster auto-detection of jax, if ``auto``)."""

    coordinator: str | None = None  # host:port of process 0
    num_processes: int | None = None
    process_id: int | None = None
    auto: bool = False  # jax.distributed.initialize() with no arguments (SLURM, TPU pods, ...)


@dataclass(frozen=True)
class DistillConfig:
    """The distillation task (``--task=distill``, :mod:`yume_jax.train.tasks.distill`; docs/distillation.md).
    The student's learning rate and optimiser are ``--optim.*`` (EMA: ``--optim.ema_decay``)."""

    teacher: str | None = None  # teacher DiT: a pipeline dir (its dit/) or a converted checkpoint; None:
    #                             --model.init, else one random init shared by teacher, student and critic (tests)
    student_steps: int = 4  # the student's Euler steps (its sigmas: shifted_sigmas(student_steps, shift) ...)
    shift: float = 3.0
    sigmas: tuple[float, ...] = ()  # ... or these explicit sigmas (student_steps + 1 values, decreasing, ending in 0)
    guidance: float = 5.0  # CFG scale of the teacher's score (1: no unconditional evaluation)
    critic_steps: int = 2  # critic + discriminator updates per student step
    critic_lr: float = 1e-5  # the critic's (fake score + discriminator head) AdamW learning rate
    dmd_weight: float = 1.0  # distribution matching loss of the student
    adv_weight: float = 0.05  # generator-side hinge loss of the student
    disc_weight: float = 1.0  # discriminator hinge loss in the critic's objective (next to its flow loss)
    features_from: str = "critic"  # the discriminator reads the critic's (trained with it) or the teacher's features
    feature_layers: tuple[int, ...] = ()  # DiT blocks whose outputs the head reads; (): the middle block
    disc_hidden: int = 128  # hidden width of the discriminator head
    t_min: float = 0.02  # re-noising range of the DMD gradient (uniform t)
    t_max: float = 0.98
    history: str = "both"  # history mode of the trained rollouts: noised | clean | both (alternating steps)
    self_history: bool = True  # the last history frames are the student's own sample (train as it samples)


@dataclass(frozen=True)
class TrainConfig:
    name: str = "tiny-sandbox"
    task: str = "flow"  # the training task (TASKS): flow (rectified flow + MVDT on the DiT), ...
    workdir: str | None = None  # None: runs/<name>
    steps: int = 300
    batch_size: int = 2  # global samples per optimizer step
    seed: int = 0  # noise, timesteps, mask ratios
    log_every: int = 10
    tensorboard: bool = True
    progress: bool = True
    peak_tflops: float | None = None  # per-device peak for MFU; None: from the device kind (GPU), else no MFU
    compile_cache: str | None = None  # persistent XLA compilation cache directory (restarts skip compiles)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    vae: VAETaskConfig = field(default_factory=VAETaskConfig)  # --task=vae: yume_jax.train.tasks.vae.VAETaskConfig
    distill: DistillConfig = field(default_factory=DistillConfig)  # --task=distill

    # derived views ------------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return Path(self.workdir if self.workdir is not None else f"runs/{self.name}")

    def dit_config(self):
        return model_presets.get(self.model.preset, **_dit_overrides(self.model.dit))

    def raw_config(self):
        from yume_jax.data.pipeline import RAW_PRESETS
        return RAW_PRESETS[self.data.raw_preset].replace(**self.data.raw)

    def runtime_obj(self):
        from yume_jax.models.config import Runtime
        r = self.runtime
        return Runtime(dtype=r.dtype, attention=r.attention, seq_parallel=r.seq_parallel, remat=r.remat,
                       scan_layers=r.scan_layers)

    def to_dict(self) -> dict:
        return configlib.jsonable(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    def replace(self, **kw) -> "TrainConfig":
        return dataclasses.replace(self, **kw)


# ------------------------------------------------------------------------------------------------
# presets

def _tiny_sandbox() -> TrainConfig:
    """tiny-yume on rendered sandbox clips (48x80 px -> 6x10 latents, chunk 9 frames -> 3 latents), CPU."""
    return TrainConfig(
        name="tiny-sandbox", steps=300, batch_size=2, log_every=25,
        model=ModelConfig(preset="tiny-yume"),
        data=DataConfig(source="sandbox", generate=4, generate_frames=60, world="tiny", raw_preset="tiny",
                        raw={"history_buckets": (0, 4, 8)}, history_latents=(1, 2), text_len=16, image_tokens=17),
        objective=ObjectiveConfig(mask_buckets=1),  # one MVDT shape on CPU: masked count round(0.4 N)
        optim=OptimConfig(lr=2e-3, schedule="cosine", warmup_steps=20, weight_decay=0.0, end_lr_ratio=0.1),
        runtime=RuntimeConfig(dtype="float32", remat="none"),
        checkpoint=CheckpointConfig(every=100))


def _tiny_synthetic() -> TrainConfig:
    """tiny-yume (3 layers) on random latents of one shape (2 history + 2 chunk latent frames of 8x8): tests."""
    return TrainConfig(
        name="tiny-synthetic", steps=8, batch_size=8, log_every=1,
        model=ModelConfig(preset="tiny-yume", dit={"num_layers": 3}),
        data=DataConfig(source="synthetic", raw={"chunk_frames": 5, "height": 64, "width": 64}, synthetic_history=2,
                        text_len=8, image_tokens=5),
        objective=ObjectiveConfig(mask_buckets=1),  # one MVDT shape on CPU: masked count round(0.4 N)
        optim=OptimConfig(lr=1e-3, warmup_steps=2, schedule="cosine", weight_decay=1e-3),
        runtime=RuntimeConfig(dtype="float32", remat="none"),
        checkpoint=CheckpointConfig(every=2, max_to_keep=3))


def _tiny_t2v() -> TrainConfig:
    """tiny-t2v (plain Wan, no history, no MVDT) on random latents."""
    base = _tiny_synthetic()
    return base.replace(name="tiny-t2v", model=ModelConfig(preset="tiny-t2v"),
                        data=dataclasses.replace(base.data, synthetic_history=0),
                        objective=ObjectiveConfig(mvdt=False))


def _wan13b_480p() -> TrainConfig:
    """Wan2.1 T2V 1.3B at 480x832x81 (latent 21x60x104, 32,760 tokens), bf16 compute, fp32 master, remat."""
    return TrainConfig(
        name="wan1.3b-480p", steps=10000, batch_size=1, log_every=10,
        model=ModelConfig(preset="wan2.1-t2v-1.3b"),
        data=DataConfig(source="sandbox", world="480p", raw_preset="yume",
                        raw={"chunk_frames": 81, "height": 480, "width": 832, "i2v_prob": 0.0, "history_min": 0,
                             "history_max_short": 0, "history_max_long": 0}, generate_frames=161),
        objective=ObjectiveConfig(mvdt=False),
        optim=OptimConfig(lr=1e-5, weight_decay=1e-3, clip_norm=1.0),
        runtime=RuntimeConfig(dtype="bfloat16", remat="full"),
        checkpoint=CheckpointConfig(every=500))


def _yume14b_540p() -> TrainConfig:
    """Yume I2V 14B at 544x960, chunk 33 frames (9 latents of 68x120) after compressed history, MVDT, the
    reference optimiser settings (spec/yume.md "Training objective"); ``--model.init=<converted ckpt>``.

    Real encoders by default: the data are a latent dataset (``--data.path``, written by
    ``python -m train.build_latents`` with the real VAE, umT5 and CLIP); without one the config is refused.
    ``--data.source=sandbox`` asks for the stand-in encoders on rendered 540p sandbox clips instead."""
    return TrainConfig(
        name="yume14b-540p", steps=10000, batch_size=1, log_every=10,
        model=ModelConfig(preset="yume-i2v-14b"),
        data=DataConfig(source="latents", world="540p", raw_preset="yume",
                        raw={"history_buckets": (16, 32, 64, 128, 256, 512, 1000)},
                        history_latents=(4, 8, 16, 32, 64, 128, 250), generate_frames=401),
        objective=ObjectiveConfig(history="noised", mvdt=True),
        optim=OptimConfig(lr=1e-5, weight_decay=1e-3, clip_norm=1.0),
        runtime=RuntimeConfig(dtype="bfloat16", remat="full"),
        checkpoint=CheckpointConfig(every=500))


def _sandbox_vae() -> TrainConfig:
    """Stage 1 of the embedded default model (docs/default_model.md): the sandbox-2.1 VAE (Wan 2.1
    architecture, base width 16) on 96x160 sandbox walks rendered on the device; one H200."""
    return TrainConfig(
        name="sandbox-vae", task="vae", steps=6000, batch_size=32, log_every=100, progress=True,
        mesh=MeshConfig(data=-1, fsdp=1),
        vae=VAETaskConfig(preset="sandbox-2.1", frames=9, clips=1024, clip_frames=48, world="default"),
        optim=OptimConfig(lr=1e-3, schedule="cosine", warmup_steps=200, weight_decay=0.0, end_lr_ratio=0.05,
                          b2=0.99, clip_norm=1.0, ema_decay=0.999),
        checkpoint=CheckpointConfig(every=1000, max_to_keep=2))


def _tiny_vae() -> TrainConfig:
    """The VAE task at test size: tiny-2.1 on 48x80 walks (CPU)."""
    return TrainConfig(
        name="tiny-vae", task="vae", steps=4, batch_size=8, log_every=1, progress=False, tensorboard=False,
        mesh=MeshConfig(data=-1, fsdp=1),
        vae=VAETaskConfig(preset="tiny-2.1", frames=5, clips=2, clip_frames=8, world="tiny", dtype="float32"),
        optim=OptimConfig(lr=1e-3, weight_decay=0.0, ema_decay=0.9),
        checkpoint=CheckpointConfig(every=2, max_to_keep=2))


def _sandbox_world() -> TrainConfig:
    """Stage 2 of the embedded default model (docs/default_model.md): the sandbox-yume DiT (Yume I2V layout,
    MVDT, clean history as Yume 1.5) on walks rendered on the device and encoded per batch by the stage-1 VAE
    and the frozen sandbox encoders (``--data.path=<pipeline dir>``): chunks of 2 latent frames (8 video frames)
    after 1..22 history latent frames or the image start; one H200."""
    return TrainConfig(
        name="sandbox-world", steps=20000, batch_size=32, log_every=100,
        model=ModelConfig(preset="sandbox-yume"),
        data=DataConfig(source="pool", generate=1024, generate_frames=96, world="default", raw_preset="sandbox",
                        raw={"chunk_frames": 5, "i2v_prob": 0.3}, history_latents=(1, 2, 3, 5, 8, 12, 17, 22),
                        text_len=512, image_tokens=17),
        objective=ObjectiveConfig(history="clean", mvdt=True, mask_buckets=2),
        optim=OptimConfig(lr=3e-4, schedule="constant", warmup_steps=300, weight_decay=0.0, b2=0.99, clip_norm=1.0,
                          ema_decay=0.999),
        runtime=RuntimeConfig(dtype="bfloat16", remat="none"),
        checkpoint=CheckpointConfig(every=1000, max_to_keep=2))
def _tiny_distill() -> TrainConfig:
    """DMD2 + adversarial distillation of tiny-yume (2 layers, random teacher) to a 2-step student on random
    latents (2 history + 2 chunk latent frames of 8x8): tests, CPU."""
    base = _tiny_synthetic()
    return base.replace(name="tiny-distill", task="distill", steps=6,
                        model=ModelConfig(preset="tiny-yume", dit={"num_layers": 2, "history_tiers": ("2x",)}),
                        objective=ObjectiveConfig(mvdt=False),
                        optim=OptimConfig(lr=1e-3, weight_decay=0.0, clip_norm=1.0, ema_decay=0.9),
                        distill=DistillConfig(student_steps=2, guidance=3.0, critic_steps=2, critic_lr=1e-3,
                                              adv_weight=0.1, disc_hidden=16))


PRESETS = {
    "sandbox-world": _sandbox_world,
    "sandbox-vae": _sandbox_vae,
    "tiny-vae": _tiny_vae,
    "tiny-sandbox": _tiny_sandbox,
    "tiny-synthetic": _tiny_synthetic,
    "tiny-t2v": _tiny_t2v,
    "wan1.3b-480p": _wan13b_480p,
    "yume14b-540p": _yume14b_540p,
    "tiny-distill": _tiny_distill,
}


def get(name: str) -> TrainConfig:
    if name in PRESETS:
        return PRESETS[name]()
    p = Path(name)
    if p.suffix == ".json" and p.is_file():
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise ConfigError(f"--config {p}: not a valid config.json ({e})") from None
        if not isinstance(d, dict):
            raise ConfigError(f"--config {p}: not a valid config.json (a JSON object expected)")
        try:
            return from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"--config {p}: {e}") from None
        except (ValueError, TypeError) as e:
            raise ConfigError(f"--config {p}: {type(e).__name__}: {e}") from None
    raise ConfigError(f"unknown config {name!r}; named configs: {', '.join(sorted(PRESETS))} "
                      "(or the path of a saved config.json)")


# ------------------------------------------------------------------------------------------------
# overrides (yume_jax.configlib)

def _open_dicts() -> dict:
    from yume_jax.data.pipeline import RawConfig
    from yume_jax.models.config import DiTConfig
    return {("model", "dit"): DiTConfig, ("data", "raw"): RawConfig}


def from_dict(d: dict) -> TrainConfig:
    """A config from its JSON form (unknown keys are errors)."""
    return configlib.load(TrainConfig, d, _open_dicts())


def parse_overrides(args: list[str]) -> list[tuple[str, str]]:
    return configlib.parse_overrides(args)


def override(cfg: TrainConfig, overrides: list[tuple[str, str]] | dict) -> TrainConfig:
    return configlib.override(cfg, overrides, _open_dicts())


def resolve(name: str, args: list[str] | dict = ()) -> TrainConfig:
    """Preset ``name`` with ``--key=value`` overrides, validated (no devices needed)."""
    cfg = get(name)
    cfg = override(cfg, parse_overrides(list(args)) if not isinstance(args, dict) else args)
    validate(cfg)
    return cfg


# ------------------------------------------------------------------------------------------------
# validation

def _dit_overrides(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def _check(cond: bool, msg: str):
    if not cond:
        raise ConfigError(msg)


def validate(cfg: TrainConfig) -> None:
    """Everything that can be checked without devices; raises ConfigError naming the key."""
    _check(cfg.model.preset in model_presets.PRESETS,
           f"--model.preset={cfg.model.preset!r} is not a model preset; known: {sorted(model_presets.PRESETS)}")
    try:
        dit = cfg.dit_config()
    except (ValueError, TypeError) as e:
        raise ConfigError(f"--model.dit: {e}") from None
    _check(cfg.task in TASKS, f"--task={cfg.task!r} unknown; known: {sorted(TASKS)}")
    _check(cfg.steps >= 1, f"--steps must be >= 1, got {cfg.steps}")
    _check(cfg.batch_size >= 1, f"--batch_size must be >= 1, got {cfg.batch_size}")
    _check(cfg.log_every >= 1, f"--log_every must be >= 1, got {cfg.log_every}")
    _check(cfg.peak_tflops is None or (math.isfinite(cfg.peak_tflops) and cfg.peak_tflops > 0),
           "--peak_tflops must be positive and finite")
    _check_numbers(cfg)
    o = cfg.optim
    _check(o.nonfinite in ("stop", "skip"), f"--optim.nonfinite must be stop or skip, got {o.nonfinite!r}")
    _check(o.lr > 0, f"--optim.lr must be positive, got {o.lr}")
    _check(o.schedule in ("constant", "cosine", "linear"),
           f"--optim.schedule must be constant, cosine or linear, got {o.schedule!r}")
    _check(o.warmup_steps >= 0, "--optim.warmup_steps must be >= 0")
    _check(o.decay_steps is None or o.decay_steps >= 1, "--optim.decay_steps must be >= 1")
    _check(0.0 <= o.ema_decay < 1.0, f"--optim.ema_decay must be in [0, 1), got {o.ema_decay}")
    _check(o.grad_accum >= 1, f"--optim.grad_accum must be >= 1, got {o.grad_accum}")
    _check(o.clip_norm >= 0, "--optim.clip_norm must be >= 0")
    _check(cfg.batch_size % o.grad_accum == 0,
           f"--batch_size={cfg.batch_size} is not divisible by --optim.grad_accum={o.grad_accum}")
    m = cfg.mesh.as_dict()
    _check(all(v == -1 or v >= 1 for v in m.values()), f"--mesh sizes must be >= 1 or -1, got {m}")
    _check(list(m.values()).count(-1) <= 1, f"at most one --mesh axis may be -1, got {m}")
    try:
        cfg.runtime_obj()
    except ValueError as e:
        raise ConfigError(f"--runtime: {e}") from None
    ob = cfg.objective
    _check(ob.history in ("noised", "clean"), f"--objective.history must be noised or clean, got {ob.history!r}")
    _check(0.0 <= ob.mask_low and ob.mask_width >= 0 and ob.mask_low + ob.mask_width < 1.0,
           "--objective.mask_low + mask_width must be in [0, 1)")
    _check(ob.mask_buckets >= 1, "--objective.mask_buckets must be >= 1")
    _check(ob.t_std > 0 and ob.shift > 0, "--objective.t_std and shift must be positive")
    _check(not ob.mvdt or (dit.sideblock and dit.mask_token),
           f"--objective.mvdt=true needs a model with sideblock and mask_token; {cfg.model.preset} has none "
           "(use a yume preset or --objective.mvdt=false)")
    ic = dit.in_channels
    z = cfg.data.latent_channels
    _check(dit.out_channels == z, f"the model predicts {dit.out_channels} channels but --data.latent_channels={z}")
    _check(ic in (z, 2 * z + 4), f"model in_channels={ic} must be latent_channels ({z}) or the I2V layout "
           f"2*{z}+4 = {2 * z + 4} (noisy + mask + conditioning latents)")
    d = cfg.data
    _check(d.source in ("sandbox", "latents", "synthetic", "pool"),
           f"--data.source must be sandbox, latents, synthetic or pool, got {d.source!r}")
    _check(d.source != "pool" or (d.path and d.generate >= 1),
           "--data.source=pool needs --data.path=<pipeline dir with the frozen vae/, text_encoder/, image_encoder/> "
           "and --data.generate=<walks to render> >= 1")
    _check(d.source != "latents" or d.path,
           f"--config {cfg.name}: --data.source=latents (real encoders) needs --data.path=<latent dataset dir, "
           "written by python -m train.build_latents --vae ... --text-encoder ... [--image-encoder ...]>; "
           "or set --data.source=sandbox to train on stand-in encoders")
    try:
        raw = cfg.raw_config()
    except KeyError:
        from yume_jax.data.pipeline import RAW_PRESETS
        raise ConfigError(f"--data.raw_preset={d.raw_preset!r} unknown; known: {sorted(RAW_PRESETS)}") from None
    except (ValueError, TypeError) as e:
        raise ConfigError(f"--data.raw: {e}") from None
    st, sh, sw = d.vae_stride
    _check(len(d.vae_stride) == 3, "--data.vae_stride needs 3 entries")
    _check(raw.height % sh == 0 and raw.width % sw == 0,
           f"--data.raw height/width {raw.height}x{raw.width} must be multiples of the VAE stride {sh}x{sw}")
    pt, ph, pw = dit.patch_size
    lh, lw = raw.height // sh, raw.width // sw
    _check(lh % ph == 0 and lw % pw == 0, f"latent size {lh}x{lw} must be a multiple of the patch {dit.patch_size}")
    _check(d.text_len >= 1 and d.image_tokens >= 1, "--data.text_len and image_tokens must be >= 1")
    _check(all(h >= 0 for h in d.history_latents), "--data.history_latents must be >= 0")
    has_hist = d.synthetic_history > 0 if d.source == "synthetic" else (
        d.source == "latents" or raw.history_max_long > 0 or raw.i2v_prob > 0)
    _check(not has_hist or dit.history_tiers or d.history_latents == (0,),
           f"the data has history frames but {cfg.model.preset} has no history embeddings (use a yume preset, "
           "or set --data.history_latents=0 / no history in the data)")
    _check(d.synthetic_history >= 0, "--data.synthetic_history must be >= 0")
    if cfg.task == "distill":
        _validate_distill(cfg.distill, dit)
    c = cfg.checkpoint
    _check(c.every >= 1 and c.max_to_keep >= 1, "--checkpoint.every and max_to_keep must be >= 1")
    ds = cfg.dist
    given = [ds.coordinator is not None, ds.num_processes is not None, ds.process_id is not None]
    _check(all(given) or not any(given), "--dist.coordinator, num_processes and process_id go together")
    _check(not (ds.auto and any(given)), "--dist.auto excludes explicit --dist settings")


def _check_numbers(cfg: TrainConfig) -> None:
    """Every float field finite (NaN/inf never reach the optimizer or the data pipeline), ranges where the
    meaning needs one; integer fields non-negative where a count."""
    for section in ("optim", "objective", "data", "model", "checkpoint"):
        sec = getattr(cfg, section)
        for f in dataclasses.fields(sec):
            v = getattr(sec, f.name)
            if isinstance(v, float):
                _check(math.isfinite(v), f"--{section}.{f.name} must be finite, got {v}")
    for name in ("steps", "batch_size", "log_every", "seed"):
        _check(isinstance(getattr(cfg, name), int), f"--{name} must be an integer")
    _check(cfg.seed >= 0, f"--seed must be >= 0, got {cfg.seed}")
    o, d = cfg.optim, cfg.data
    _check(0.0 <= o.b1 < 1.0 and 0.0 <= o.b2 < 1.0, f"--optim.b1 and b2 must be in [0, 1), got {o.b1}, {o.b2}")
    _check(o.eps > 0, f"--optim.eps must be positive, got {o.eps}")
    _check(o.weight_decay >= 0, f"--optim.weight_decay must be >= 0, got {o.weight_decay}")
    _check(0.0 <= o.end_lr_ratio <= 1.0, f"--optim.end_lr_ratio must be in [0, 1], got {o.end_lr_ratio}")
    _check(0.0 <= d.max_skip_fraction <= 1.0, f"--data.max_skip_fraction must be in [0, 1], got {d.max_skip_fraction}")
    _check(d.min_attempts >= 1, f"--data.min_attempts must be >= 1, got {d.min_attempts}")
    _check(d.seed >= 0 and cfg.model.seed >= 0, "--data.seed and --model.seed must be >= 0")
    _check(d.generate >= 0 and d.generate_frames >= 1 and d.num_workers >= 0,
           "--data.generate and num_workers must be >= 0, generate_frames >= 1")
    _check(d.latent_channels >= 1 and all(s >= 1 for s in d.vae_stride),
           "--data.latent_channels and vae_stride must be >= 1")
def _validate_distill(ds: DistillConfig, dit) -> None:
    from yume_jax.sampling.schedules import explicit_sigmas
    _check(ds.student_steps >= 1, f"--distill.student_steps must be >= 1, got {ds.student_steps}")
    _check(ds.shift > 0, "--distill.shift must be positive")
    if ds.sigmas:
        try:
            sig = explicit_sigmas(ds.sigmas)
        except ValueError as e:
            raise ConfigError(f"--distill.sigmas: {e}") from None
        _check(len(sig) == ds.student_steps + 1, f"--distill.sigmas has {len(sig)} values; "
               f"--distill.student_steps={ds.student_steps} needs {ds.student_steps + 1}")
    _check(ds.guidance >= 1.0, f"--distill.guidance must be >= 1, got {ds.guidance}")
    _check(ds.critic_steps >= 1, f"--distill.critic_steps must be >= 1, got {ds.critic_steps}")
    _check(ds.critic_lr > 0, "--distill.critic_lr must be positive")
    _check(min(ds.dmd_weight, ds.adv_weight, ds.disc_weight) >= 0, "--distill weights must be >= 0")
    _check(ds.features_from in ("critic", "teacher"),
           f"--distill.features_from must be critic or teacher, got {ds.features_from!r}")
    _check(all(0 <= i < dit.num_layers for i in ds.feature_layers),
           f"--distill.feature_layers {ds.feature_layers} must be in 0..{dit.num_layers - 1}")
    _check(ds.disc_hidden >= 1, "--distill.disc_hidden must be >= 1")
    _check(0.0 <= ds.t_min < ds.t_max <= 1.0, "--distill.t_min < t_max must lie in [0, 1]")
    _check(ds.history in ("noised", "clean", "both"),
           f"--distill.history must be noised, clean or both, got {ds.history!r}")


def check_devices(cfg: TrainConfig, num_devices: int, num_processes: int = 1) -> dict[str, int]:
    """The concrete mesh shape for ``num_devices``; errors for a mesh or batch that does not fit."""
    from yume_jax.train.trainer import resolve_mesh
    try:
        return resolve_mesh(cfg.mesh.as_dict(), num_devices, cfg.batch_size, cfg.optim.grad_accum, num_processes)
    except ValueError as e:
        raise ConfigError(str(e)) from None


# ------------------------------------------------------------------------------------------------
# the sections each part of a run takes

def trainer_config(cfg: TrainConfig):
    """The loop's section (:class:`yume_jax.train.trainer.TrainerConfig`)."""
    from yume_jax.train.trainer import TrainerConfig
    c = cfg.checkpoint
    return TrainerConfig(run_dir=cfg.run_dir, steps=cfg.steps, batch_size=cfg.batch_size,
                         grad_accum=cfg.optim.grad_accum, mesh=cfg.mesh.as_dict(), log_every=cfg.log_every,
                         tensorboard=cfg.tensorboard, progress=cfg.progress, peak_tflops=cfg.peak_tflops,
                         checkpoint_every=c.every, max_to_keep=c.max_to_keep, async_save=c.async_save,
                         log_samples=cfg.data.log_samples, nonfinite=cfg.optim.nonfinite)


def make_task(cfg: TrainConfig):
    """The task object of ``cfg.task`` (the trainer's :class:`yume_jax.train.task.Task`)."""
    if cfg.task not in TASKS:
        raise ConfigError(f"--task={cfg.task!r} unknown; known: {sorted(TASKS)}")
    return TASKS[cfg.task](cfg)


def flow_task(cfg: TrainConfig):
    """The rectified-flow + MVDT task (:class:`yume_jax.train.tasks.flow.FlowTask`) of ``cfg``."""
    from yume_jax.train.tasks.flow import FlowTask
    return FlowTask(dit=cfg.dit_config(), raw=cfg.raw_config(), data=cfg.data, objective=cfg.objective,
                    optim=cfg.optim, runtime=cfg.runtime_obj(), steps=cfg.steps, seed=cfg.seed,
                    init=cfg.model.init, model_seed=cfg.model.seed)


def vae_task(cfg: TrainConfig):
    """The VAE task (:class:`yume_jax.train.tasks.vae.VAETask`): the Wan 2.1 VAE on sandbox walks."""
    from yume_jax.data import world
    from yume_jax.presets import vae as vae_preset
    from yume_jax.train.tasks.vae import VAETask
    v = cfg.vae
    try:
        arch = vae_preset(v.preset, **{k: tuple(x) if isinstance(x, list) else x for k, x in v.arch.items()})
        return VAETask(vae=arch, task=v, optim=cfg.optim, world=world.PRESETS[v.world], steps=cfg.steps,
                       seed=cfg.seed, model_seed=cfg.model.seed)
    except (KeyError, ValueError, TypeError) as e:
        raise ConfigError(f"--vae: {e}") from None


def distill_task(cfg: TrainConfig):
    """The DMD2 + adversarial distillation task (:class:`yume_jax.train.tasks.distill.DistillTask`) of ``cfg``."""
    from yume_jax.train.tasks.distill import DistillTask
    return DistillTask(dit=cfg.dit_config(), raw=cfg.raw_config(), data=cfg.data, objective=cfg.objective,
                       optim=cfg.optim, runtime=cfg.runtime_obj(), steps=cfg.steps, seed=cfg.seed,
                       init=cfg.model.init, model_seed=cfg.model.seed, distill=cfg.distill)


TASKS = {"flow": flow_task, "vae": vae_task, "distill": distill_task}  # --task=NAME -> builder(cfg) of the trainer's task
