"""The inference pipeline: the components (DiT, VAE, text encoder with its prompt cache, CLIP image encoder
for I2V models), their mesh, and the compiled samplers (spec/yume.md "Sampling").

A :class:`Pipeline` is shared: any number of exploration sessions (yume_jax/rollout.py) run on one pipeline,
and the sampler programs are compiled once per (sampler config, chunk length, caching interval, progress
hook) and then per input shape, so a second session with the same config and shapes compiles nothing.
Sampling calls are serialised by a lock (one device, many sessions: a web server's browser tabs); the
per-step progress hook is routed to the calling session, so it is not baked into the program.

Several devices (``load_pipeline(path, mesh=...)`` or :meth:`Pipeline.with_mesh`; the mesh from
:func:`yume_jax.sharding.sampling_mesh`, e.g. ``context=4,cfg=2``): the DiT's parameters are placed by the
logical axis table (yume_jax/sharding.py ``RULES``: replicated over ``cfg`` and ``context``, split over
``tensor``/``fsdp`` where given), the latents and tokens of every evaluation are sharded over ``context``
(sequence parallel; the DiT's self-attention reshards to a head split by all-to-all (Ulysses) where the heads
divide, else gathers keys/values; ``seq_parallel``, yume_jax/models/attention.py), and
with a ``cfg`` axis of size 2 the conditional and unconditional halves of a guided batch run on the two
halves of the mesh (yume_jax/sampling/cfg.py ``guided_split``). All of it is JAX sharding (NamedSharding,
``with_sharding_constraint``, ``shard_map``), no hand-written collectives. The VAE's decode (and encode) is
split spatially along the image width over as many of each process's devices as the mesh's context size
(:func:`vae_mesh`, yume_jax/vae/stream.py), its outputs coming back to the process's first device; the text
and image encoders stay on that device. The mesh may span several processes (jax.distributed, multi-host): every
process runs the same session with the same inputs, the sampler's inputs become global replicated arrays and
its output comes back to each process as a local array.
"""
from __future__ import annotations

import functools
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from yume_jax import sharding
from yume_jax.sampling import api as sampling
from yume_jax.sampling import cache as block_cache

PIPELINE_JSON = "pipeline.json"
COMPILE_CACHE_ENV = "YUME_JAX_COMPILE_CACHE"
# the name of JAX's monitoring event for one XLA compile (public through jax.monitoring listeners; the constant
# itself lives in a private module, so it is spelled here; tests/test_compile_bound.py fails if it changes)
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


# -- compiles: counting them, and JAX's persistent compilation cache --------------------------------

class CompileCounter:
    """Process-wide counts of XLA programs, from JAX's monitoring events: ``requests`` (every program JAX
    had to obtain, compiled or read back), ``cache_hits`` (read back from the persistent compilation cache),
    ``compiled`` = requests - cache_hits (real XLA compiles). Listeners are registered once per process;
    :meth:`snapshot` and differences of snapshots measure a span of work."""

    _installed = False
    requests = 0
    cache_hits = 0
    compile_s = 0.0

    @classmethod
    def install(cls) -> None:
        if cls._installed:
            return
        from jax import monitoring

        def on_duration(event, duration, **kw):
            if event == BACKEND_COMPILE_EVENT:
                cls.requests += 1
                cls.compile_s += float(duration)

        def on_event(event, **kw):
            if event == "/jax/compilation_cache/cache_hits":
                cls.cache_hits += 1

        monitoring.register_event_duration_secs_listener(on_duration)
        monitoring.register_event_listener(on_event)
        cls._installed = True

    @classmethod
    def snapshot(cls) -> dict:
        cls.install()
        return dict(requests=cls.requests, cache_hits=cls.cache_hits, compiled=cls.requests - cls.cache_hits,
                    compile_s=round(cls.compile_s, 3))


def default_compile_cache_dir() -> Path:
    """``$YUME_JAX_CACHE/xla`` (default ``~/.cache/yume-jax/xla``), beside the explorer's default model."""
    import os

    return Path(os.environ.get("YUME_JAX_CACHE", Path.home() / ".cache" / "yume-jax")) / "xla"


def enable_compile_cache(where: Optional[str] = None) -> Optional[Path]:
    """Turn on JAX's persistent compilation cache for this process, so a second launch reads its programs
    back instead of compiling them; returns the directory, or None when disabled.

    ``where``: a directory, ``"off"`` (disabled), or None: ``$YUME_JAX_COMPILE_CACHE`` if set (which may
    also be ``off``), else :func:`default_compile_cache_dir`. Every program is cached, however small or
    quick to compile (min compile time 0, min entry size 0): on CPU most programs compile in well under
    JAX's default one-second threshold. Call before the first compile."""
    import os

    if where is None:
        where = os.environ.get(COMPILE_CACHE_ENV) or str(default_compile_cache_dir())
    CompileCounter.install()
    if str(where).strip().lower() in ("off", "none", "0", "false", ""):
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    path = Path(where).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


@dataclass
class Pipeline:
    dit: object  # yume_jax.models.loader.DiT
    vae: object  # yume_jax.vae.WanVAE
    text_encoder: object  # yume_jax.encoders.TextEncoder
    image_encoder: object = None  # yume_jax.encoders.ImageEncoder (I2V models)
    defaults: dict = field(default_factory=dict)  # pipeline.json: defaults for RolloutConfig
    source: str = ""
    _samplers: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)
    _progress: Optional[Callable] = field(default=None, init=False, repr=False, compare=False)

    @property
    def z_dim(self) -> int:
        return self.vae.cfg.z_dim

    @property
    def mesh(self):
        """The DiT's mesh (None: one device)."""
        return self.dit.mesh

    @property
    def cfg_parallel(self) -> bool:
        """Guided sampling splits cond/uncond over the mesh's ``cfg`` axis (present, size 2)."""
        m = self.mesh
        return m is not None and m.shape.get(sharding.CFG_AXIS, 1) == 2

    def with_mesh(self, mesh) -> "Pipeline":
        """This pipeline with its DiT's parameters placed on ``mesh`` (None: gathered onto one device): a new
        pipeline sharing the encoders, with its own compiled samplers and the VAE on :func:`vae_mesh`."""
        from yume_jax.models.loader import DiT

        if mesh is self.mesh:
            return self
        params = self.dit.params
        if mesh is None:
            params = jax.tree.map(lambda x: jax.device_put(_local(x), jax.local_devices()[0]), params)
        dit = DiT(nnx.merge(self.dit.graphdef, params), self.dit.runtime, mesh=mesh)
        vae = None if self.vae is None else self.vae.with_mesh(vae_mesh(mesh))
        return Pipeline(dit=dit, vae=vae, text_encoder=self.text_encoder, image_encoder=self.image_encoder,
                        defaults=self.defaults, source=self.source)

    @property
    def conditioned(self) -> bool:
        """Wan I2V input layout: noisy latents + 4 mask channels + conditioning latents."""
        return self.dit.config.in_channels == 2 * self.z_dim + 4

    @property
    def ti2v(self) -> bool:
        """Wan 2.2 TI2V layout (Yume-5B): the 48-channel Wan 2.2 VAE's latents in, no I2V channels. The public
        5B sampler keeps history clean (t = 0 on it) with 4 Euler steps: the explorer's defaults for it."""
        return self.z_dim == 48 and self.dit.config.in_channels == self.z_dim

    def run_defaults(self) -> dict:
        """Defaults for a run: pipeline.json's, over the layout's (TI2V: clean history, 4 Euler steps)."""
        base = {"history_mode": "clean", "steps": 4, "sampler": "euler"} if self.ti2v else {}
        return {**base, **self.defaults}

    def sampler_config(self, *, name: str | None = None, steps: int | None = None, cfg_scale: float | None = None,
                       aam: bool = False) -> sampling.SamplerConfig:
        """The sampler of a run on this pipeline: :func:`sampler_config` of :meth:`run_defaults`."""
        return sampler_config(self.run_defaults(), name=name, steps=steps, cfg_scale=cfg_scale, aam=aam)

    def check(self):
        c = self.dit.config
        if c.in_channels not in (self.z_dim, 2 * self.z_dim + 4):
            raise ValueError(f"DiT takes {c.in_channels} input channels; the VAE has z = {self.z_dim} "
                             f"(expected {self.z_dim} or {2 * self.z_dim + 4})")
        if self.text_encoder.config.dim != c.text_dim:
            raise ValueError(f"text encoder dim {self.text_encoder.config.dim} != DiT text_dim {c.text_dim}")
        if c.image_dim is not None:
            if self.image_encoder is None:
                raise ValueError("this DiT has image cross-attention but the pipeline has no image encoder")
            if self.image_encoder.config.dim != c.image_dim:
                raise ValueError(f"image encoder dim {self.image_encoder.config.dim} != DiT image_dim {c.image_dim}")

    def default_cache_blocks(self) -> tuple[int, ...]:
        """Cached layers when a run names none: pipeline.json's ``cache_blocks``, else the middle
        round(num_layers / 4) (the paper's 10 of 40; sampling/cache.py ``default_count``)."""
        if "cache_blocks" in self.defaults:
            return tuple(self.defaults["cache_blocks"])
        n, k = self.dit.config.num_layers, block_cache.default_count(self.dit.config.num_layers)
        return tuple(range((n - k) // 2, (n - k) // 2 + k))

    # -- the model seen by the samplers ------------------------------------------------------------
    def velocity_model(self, chunk_frames: int, cache_refresh: int = 0):
        """``model(params, x, sigma, ctx) -> v`` shaped like x (zeros on the history frames) for latents
        [history | chunk of ``chunk_frames``]; ``ctx``: text, [image], [y: I2V channels]. A scalar sigma is
        Yume 1.0 (history at the chunk's t); a per-position sigma is Yume 1.5 (clean history, t = 0 on it).
        With ``cache_refresh`` > 0: the stateful ``model(params, x, sigma, ctx, step, cache) -> (v, cache)``
        with a block residual cache refreshed every ``cache_refresh`` steps (sampling/cache.py)."""
        n, graphdef, mesh, runtime = chunk_frames, self.dit.graphdef, self.dit.mesh, self.dit.runtime  # not params

        def model(params, x, sigma, ctx, *stateful):
            f = x.shape[2]
            inp = jnp.concatenate([x, ctx["y"]], axis=1) if "y" in ctx else x
            sigma = jnp.asarray(sigma, jnp.float32)
            if sigma.ndim == 0:  # renoise mode: one t for every token
                t, ht = jnp.broadcast_to(sigma * 1000.0, (x.shape[0],)), None
            else:  # clean mode: per-position sigma, 0 on history; the chunk's sigma is its last frame's
                t = jnp.broadcast_to(sigma.reshape(sigma.shape[0], -1)[:, -1] * 1000.0, (x.shape[0],))
                ht = 0.0
            kw = dict(chunk=None if n == f else n, history_timestep=ht if n != f else None, runtime=runtime)
            if stateful:
                step, cache = stateful
                kw.update(cache=cache, refresh=block_cache.refreshes(cache_refresh, step))
            with sharding.use_mesh(_trace_mesh(mesh)):
                # sequence parallel: the latents split over ``context`` along their rows (the DiT's tokens
                # are constrained to ("batch", "seq", ...) inside; non-dividing sizes stay replicated)
                inp = sharding.constrain(inp, ("batch", None, None, "seq", None))
                out = nnx.merge(graphdef, params)(inp, t, ctx["text"], ctx.get("image"), **kw)
            v, cache = out if stateful else (out, None)
            if n != f:
                pad = jnp.zeros(x.shape[:2] + (f - n,) + x.shape[3:], v.dtype)
                v = jnp.concatenate([pad, v], axis=2)
            v = v.astype(x.dtype)
            return (v, cache) if stateful else v

        return model

    # -- compiled samplers -------------------------------------------------------------------------
    def sampler(self, config: sampling.SamplerConfig, chunk_frames: int, *, cache_refresh: int = 0,
                progress: bool = False) -> sampling.Sampler:
        """The shared jitted sampler for this key (built on first use; jit then caches per shape). Its program is
        shared with every pipeline of the same DiT graph, mesh and run-time policy in this process
        (``sampling.Sampler(share=...)``): a second pipeline compiles no sampler again."""
        key = (config, int(chunk_frames), int(cache_refresh), bool(progress))
        if key not in self._samplers:
            share = (self.dit.graphdef, self.dit.mesh, self.dit.runtime, int(chunk_frames), int(cache_refresh))
            split = self.cfg_parallel and config.cfg_scale != 1.0
            self._samplers[key] = sampling.Sampler(config, self.velocity_model(chunk_frames, cache_refresh),
                                                   mesh=self.mesh if split else None, cfg_axis=sharding.CFG_AXIS,
                                                   on_step=self._on_step if progress else None, share=share)
        return self._samplers[key]

    @property
    def compiles(self) -> int:
        """Sampler traces (compiles) over all the samplers of this pipeline."""
        return sum(s.traces for s in self._samplers.values())

    def _on_step(self, i):
        if self._progress is not None:
            self._progress(int(i))

    def sample(self, config: sampling.SamplerConfig, chunk_frames: int, noise, cond, uncond=None, *,
               key=None, frozen=None, cache: Optional[block_cache.CacheConfig] = None,
               on_step: Optional[Callable[[int], None]] = None, block: bool = True) -> jax.Array:
        """Denoise [history | chunk] ``noise`` to latents with the shared compiled sampler. ``block=False``
        returns as soon as the program is dispatched (JAX asynchronous dispatch; the lock then serialises
        dispatch, and the device runs the sessions' programs in order); a progress hook always blocks, as it
        is routed to its session only while the lock is held.

        ``cond``/``uncond``: contexts (text, [image], [y]); ``uncond`` is ignored without guidance.
        ``cache``: block residual caching (its blocks are data: any layout of the same size reuses the
        program). ``on_step(i)``: called once per sampling step (twice per index with AAM)."""
        guided = config.cfg_scale != 1.0
        sampler = self.sampler(config, chunk_frames, cache_refresh=cache.refresh if cache else 0,
                               progress=on_step is not None)
        state = None
        if cache is not None:
            c = self.dit.config
            tokens = self.dit.model.num_tokens(noise.shape[2], noise.shape[3], noise.shape[4], chunk_frames)
            state = block_cache.init(cache, c.num_layers, noise.shape[0] * (2 if guided else 1), tokens, c.dim)
        mesh = self.mesh
        if mesh is not None:  # the inputs replicated over the mesh (global arrays when it spans processes)
            noise, cond, uncond, key, frozen, state = (
                _replicate(t, mesh) for t in (noise, cond, uncond, key, frozen, state))
        with self._lock:
            self._progress = on_step
            try:
                out = sampler(self.dit.params, noise, cond, uncond if guided else None,
                              key=key if config.stochastic else None, frozen=frozen, state=state)
                if mesh is not None:
                    out = _gather(out, mesh)
                return jax.block_until_ready(out) if block or on_step is not None else out
            finally:
                self._progress = None


def _trace_mesh(mesh):
    """The mesh to shard against while tracing: inside a ``shard_map`` with manual axes (CFG-parallel halves)
    the context's abstract mesh, so nested constraints and shard_maps see those axes as manual."""
    if mesh is None:
        return None
    am = jax.sharding.get_abstract_mesh()
    return am if not am.empty and am.manual_axes else mesh


def _replicate(tree, mesh):
    """``tree``'s arrays replicated over ``mesh``; every process holds the same values (same session, same
    seed), so across processes each contributes its full local copy."""
    rep = NamedSharding(mesh, PartitionSpec())
    if jax.process_count() == 1:
        return jax.tree.map(lambda x: jax.device_put(x, rep), tree)

    def put(x):
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = np.asarray(jax.random.key_data(x))
            return jax.random.wrap_key_data(jax.make_array_from_process_local_data(rep, data),
                                            impl=jax.random.key_impl(x))
        return jax.make_array_from_process_local_data(rep, np.asarray(x))

    return jax.tree.map(put, tree)


def _local(x):
    """A (replicated) global array as this process's local copy."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return x
    return x.addressable_data(0)


@functools.lru_cache(maxsize=16)
def _replicated_identity(mesh):
    return jax.jit(lambda x: x, out_shardings=NamedSharding(mesh, PartitionSpec()))


def _gather(out, mesh):
    """The sampler's output replicated, then this process's copy on its first device, committed there: where
    a mesh pipeline's VAE puts every output (:func:`vae_mesh`), so the latents, the VAE's inputs and outputs
    all have one placement and each VAE program compiles once per shape."""
    local = _local(_replicated_identity(mesh)(out))
    if local.sharding.device_set != {jax.local_devices()[0]}:
        local = jax.device_put(local, jax.local_devices()[0])
    return local


def vae_mesh(mesh):
    """The VAE's mesh on a sampling ``mesh`` (None: none): a ``context`` axis of the sampling mesh's context size
    over this process's first devices, so decode and encode are split spatially over as many devices as the
    DiT's sequence (yume_jax/vae/stream.py); of one device (this process's first) when the context size is 1
    or exceeds this process's devices, which still gives the VAE one committed placement."""
    if mesh is None:
        return None
    local = jax.local_devices()
    n = mesh.shape["context"]
    n = n if n <= len(local) else 1
    return sharding.make_mesh({"context": n}, local[:n])


def sampler_config(defaults: dict, *, name: str | None = None, steps: int | None = None,
                   cfg_scale: float | None = None, aam: bool = False) -> sampling.SamplerConfig:
    """A run's sampler: arguments given (not None) over the pipeline.json ``defaults``' ``sampler``, ``steps``,
    ``cfg``, ``shift`` and ``sigmas`` (a distilled student's explicit schedule, used when the step count is its
    own; python -m train.export_student writes it), over 4 Euler steps with CFG 5."""
    d = defaults
    sig = d.get("sigmas")
    steps = steps or d.get("steps") or (len(sig) - 1 if sig else 4)
    return sampling.SamplerConfig(
        name=name or d.get("sampler", "euler"), steps=steps, shift=d.get("shift", 3.0),
        cfg_scale=cfg_scale if cfg_scale is not None else d.get("cfg", 5.0),
        explicit_sigmas=tuple(sig) if sig and len(sig) == steps + 1 else None,
        aam=sampling.AAMConfig(steps=min(4, steps)) if aam else None)


def load_pipeline(path, mesh=None, seq_parallel: str = "auto") -> Pipeline:
    """A pipeline directory: dit/, vae/, text_encoder/, [image_encoder/], pipeline.json, [SHA256SUMS: a shipped
    directory, every listed file verified first, CheckpointError naming one that differs]. ``mesh``: the DiT's
    parameters placed on it and sampling sharded over it (:func:`yume_jax.sharding.sampling_mesh`);
    ``seq_parallel``: the self-attention's strategy over its context axis (auto, ulysses, gather;
    yume_jax/models/attention.py), ValueError (one line) when ``ulysses`` cannot split the model's heads."""
    import yume_jax
    from yume_jax.core.checkpoint import CHECKSUMS, verify_checksums
    from yume_jax.models.attention import seq_parallel_strategy

    path = Path(path)
    for part in ("dit", "vae", "text_encoder"):
        if not (path / part).is_dir():
            raise FileNotFoundError(f"{path}: not a yume_jax pipeline directory (missing {part}/)")
    if (path / CHECKSUMS).is_file():
        verify_checksums(path)
    defaults = json.loads((path / PIPELINE_JSON).read_text()) if (path / PIPELINE_JSON).exists() else {}
    dit = yume_jax.load_dit(path / "dit", mesh=mesh, seq_parallel=seq_parallel)
    seq_parallel_strategy(mesh, dit.config.num_heads, seq_parallel)  # a forced ulysses that cannot split: now
    pipe = Pipeline(dit=dit, vae=yume_jax.load_vae(path / "vae").with_mesh(vae_mesh(mesh)),
                    text_encoder=yume_jax.load_text_encoder(path / "text_encoder"),
                    image_encoder=(yume_jax.load_image_encoder(path / "image_encoder")
                                   if (path / "image_encoder").is_dir() else None),
                    defaults=defaults, source=str(path))
    pipe.check()
    return pipe
