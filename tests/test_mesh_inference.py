"""Sampling on a device mesh (yume_jax/pipeline.py, yume_jax/rollout.py, infer.explore --mesh / --dist.*):
an exploration sharded over ``context`` (sequence parallel: Ulysses all-to-all, as the tiny DiT's 4 heads
divide it, or the K/V gather), over ``cfg`` (conditional and unconditional halves on different devices), over
``tensor`` and over combinations equals the one-device exploration of the tiny pipeline, and two processes on
loopback (jax.distributed, 4 CPU devices each, one mesh over both) equal one process. The VAE split spatially
over ``context`` decodes like one device.

Tolerance: float32 everywhere (matmul precision "highest", tests/conftest.py); the sharded programs reorder
reductions (the CFG psum, the attention's all-to-all or gather, the split VAE convolutions), measured
differences ~7e-6 on the first chunk's latents (unit scale), so ``atol = rtol = 1e-4`` there (well under any
real sharding bug, which moves latents by O(1)). Later chunks start from a history that went through the VAE
decode -> encode loop and are sampled with one guided step (CFG 5), which amplifies that difference ~20x
(measured 1.3e-4 to 2e-4 on chunks 2 and 3 for cfg=2,context=4, also with the VAE on one device): ``1e-3``."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from yume_jax import sharding
from yume_jax.pipeline import CompileCounter, load_pipeline
from yume_jax.rollout import Session
from yume_jax.testing import save_tiny_pipeline

ROOT = Path(__file__).resolve().parents[1]
TOL = dict(atol=1e-4, rtol=1e-4)  # the first chunk
TOL_LATER = dict(atol=1e-3, rtol=1e-3)  # chunks after a decode -> encode round and a guided step
# the explorer's flags, shared by the in-process runs and the two-process CLI run (so one reference serves
# both). 64x64: latents 8x8, 16 tokens per latent frame, every token count divides context=4 (really
# sharded); --max-history 5: chunks 2 and 3 trim the same 7 stored frames to 5 (chunk 3 compiles nothing).
# CFG 5 from pipeline.json.
FLAGS = ["--actions", "W,A+→,W", "--steps", "1", "--height", "64", "--width", "64", "--max-history", "5",
         "--compile-cache", "off"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from PIL import Image

    from infer import explore

    tmp = tmp_path_factory.mktemp("mesh")
    path = save_tiny_pipeline(tmp / "pipe")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp / "start.png")
    flags = ["--checkpoint", str(path), "--image", str(tmp / "start.png"), *FLAGS]
    pipe = load_pipeline(path)
    a = explore.parse_args(flags)
    config = explore.build_config(a, pipe)
    assert config.sampler.cfg_scale == 5.0 and config.sampler.steps == 1
    return flags, pipe, config, explore.read_image(a.image)


def _explore(tiny, mesh=None):
    _, pipe, config, image = tiny
    session = Session(pipe, config, image=image, mesh=mesh)
    lat, frames, compiled = [], [], []
    for action in FLAGS[1].split(","):
        before = CompileCounter.snapshot()["requests"]
        f, _ = session.step(action)
        compiled.append(CompileCounter.snapshot()["requests"] - before)
        lat.append(np.asarray(session.history))
        frames.append(f)
    session.compiled = compiled  # XLA programs obtained per chunk
    return session, lat, frames


@pytest.fixture(scope="module")
def reference(tiny):
    return _explore(tiny)


@pytest.mark.slow
@pytest.mark.parametrize("spec,strategy", [("context=4", "ulysses"), ("cfg=2", "gather"),
                                           ("cfg=2,context=2,tensor=2", "ulysses")])  # cfg=2,context=4: 2 processes
def test_sharded_exploration_equals_one_device(tiny, reference, spec, strategy):
    from yume_jax.models.attention import seq_parallel_strategy

    mesh = sharding.sampling_mesh(spec)
    shape = sharding.parse_mesh_spec(spec)
    session, lat, frames = _explore(tiny, mesh)
    pipe = session.pipe
    assert session.mesh is mesh and pipe.cfg_parallel == ("cfg" in spec)
    assert {a: mesh.shape[a] for a in shape} == shape
    assert seq_parallel_strategy(mesh, pipe.dit.config.num_heads) == strategy
    # the DiT's parameters live on the mesh (replicated over cfg and context, split over tensor)
    leaf = jax.tree.leaves(pipe.dit.params)[0]
    assert leaf.sharding.mesh.devices.size == mesh.devices.size
    if "tensor" in shape:
        assert pipe.dit.params["blocks"]["ffn"]["fc1"]["kernel"][...].sharding.spec[2] == "tensor"
    # the VAE is split over as many devices as the context axis: its stream caches live split along the width
    n = shape.get("context", 1)
    assert pipe.vae.mesh.shape["context"] == n
    if n > 1:
        assert "context" in tuple(session.decode_state.caches[0][0].sharding.spec)
    # the third chunk (the second's shapes) compiles nothing: the gathered latents, committed to the first
    # device like every VAE output, reuse the sampler's, the VAE's and the history window's programs
    assert session.compiled[0] > 0 and session.compiled[2] == 0, session.compiled
    _, ref_lat, ref_frames = reference
    for i, (got, want) in enumerate(zip(lat, ref_lat)):
        np.testing.assert_allclose(got, want, err_msg=f"chunk {i + 1}", **(TOL if i == 0 else TOL_LATER))
    for got, want in zip(frames, ref_frames):
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_mesh_spec_errors():
    assert sharding.parse_mesh_spec("context=4,cfg=2") == {"context": 4, "cfg": 2}
    assert dict(sharding.sampling_mesh("cfg=2,context=-1").shape) == dict(cfg=2, data=1, fsdp=1, context=4,
                                                                          tensor=1)
    for bad, msg in [("context=3,tensor=3", "needs 9 devices"), ("context=16", "needs 16 devices"),
                     ("cfg=4", "cfg must be 1 or 2"), ("seq=2", "AXIS=SIZE"), ("context=x", "integer"),
                     ("context=0", ">= 1"), ("", "names no axis"), ("context=-1,tensor=-1", "at most one")]:
        with pytest.raises(ValueError, match=msg) as e:
            sharding.sampling_mesh(bad)
        assert "\n" not in str(e.value)


def test_explore_cli_mesh_flag_error(capsys):
    from infer import explore

    code = explore.main(["--mesh", "context=16", "--actions", "W", "--out", "/nonexistent/x.mp4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--mesh context=16" in err[0] and "needs 16 devices" in err[0]


def test_explore_cli_forced_ulysses_that_cannot_split_is_one_line(tiny, capsys):
    """The tiny DiT's 4 heads do not divide context=8: ``--seq-parallel ulysses`` is a one-line error before
    any sampling (auto would take the K/V gather)."""
    from infer import explore

    flags = tiny[0] + ["--mesh", "context=8", "--seq-parallel", "ulysses", "--out", "/nonexistent/x.mp4"]
    code = explore.main(flags)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "seq_parallel=ulysses splits the 4 heads over context=8" in err[-1], err


WORKER = textwrap.dedent('''
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import numpy as np
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")
    from infer import explore
    from yume_jax import rollout

    pid, out_dir, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    submit = rollout.Session.submit
    latents = []

    def record(self, action, **kw):  # each process's history after every chunk (its local copy)
        chunk = submit(self, action, **kw)
        latents.append(np.asarray(self.history))
        assert self.mesh.devices.size == 8 and jax.process_count() == 2 and jax.local_device_count() == 4
        return chunk

    rollout.Session.submit = record
    code = explore.main(argv)
    np.save(os.path.join(out_dir, f"latents.p{pid}.npy"), np.stack(latents))
    sys.exit(code)
''')


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_process(tiny, reference, tmp_path):
    """``infer.explore --mesh cfg=2,context=4 --dist.*`` as two processes of 4 CPU devices on loopback: both
    processes hold the one-process exploration's latents (the same flags, one device), and only process 0
    writes the video. One chunk (``--actions W``) keeps it cheap."""
    flags = [f if f != FLAGS[1] else "W" for f in tiny[0]]
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)
    port, out = _port(), tmp_path / "walk.mp4"
    procs = [subprocess.Popen([sys.executable, str(script), str(i), str(tmp_path), *flags, "--out", str(out),
                               "--mesh", "cfg=2,context=4", f"--dist.coordinator=127.0.0.1:{port}",
                               "--dist.num_processes=2", f"--dist.process_id={i}"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, o in zip(procs, outs):
        assert p.returncode == 0, o[-4000:]
    assert "wrote" in outs[0] and "wrote" not in outs[1]
    meta = json.loads(out.with_suffix(".mp4.json").read_text())
    assert meta["finished"] is True and len(meta["chunks"]) == 1
    assert sorted(f for f in os.listdir(tmp_path) if not f.startswith(".")) == ["latents.p0.npy", "latents.p1.npy", "walk.mp4", "walk.mp4.json",
                                            "worker.py"]
    want = reference[1][0]
    for pid in range(2):
        got = np.load(tmp_path / f"latents.p{pid}.npy")
        assert got.shape == (1,) + want.shape
        np.testing.assert_allclose(got[0], want, **TOL)


def test_vae_split_decode_equals_one_device():
    """The tiny Wan 2.1 VAE on a context=4 mesh (yume_jax/vae/stream.py ``with_mesh``): a two-call stream
    decode (the first latent frame, then one more from the saved state) equals the one-device decode, max abs
    error <= 1e-4 on outputs in [-1, 1] (float32; the split convolutions sum in another order, measured ~3e-6),
    and the stream's caches really are split along the width. XLA optimisations off: the time is compiles."""
    from yume_jax.presets import VAE as PRESETS
    from yume_jax.vae import WanVAE
    from yume_jax.vae.params import init_params

    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        cfg = PRESETS["tiny-2.1"]
        vae = WanVAE(cfg, init_params(cfg, 0))
        split = vae.with_mesh(sharding.make_mesh({"context": 4}, jax.devices()[:4]))
        z = np.random.default_rng(0).standard_normal((1, cfg.z_dim, 2, 4, 8)).astype(np.float32)
        outs = {}
        for name, v in (("one", vae), ("split", split)):
            a, state = v.stream_decode(z[:, :, :1])
            b, state = v.stream_decode(z[:, :, 1:], state)
            if name == "split":  # every causal cache of the steady state: split along the width
                assert all("context" in tuple(c.sharding.spec) for c in state.caches[0])
            outs[name] = (np.asarray(a), np.asarray(b))
            assert b.sharding.device_set == {jax.devices()[0]}  # back home, like the one-device decode
        for got, want in zip(outs["split"], outs["one"]):
            np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
        assert split.with_mesh(None).mesh is None
    finally:
        jax.config.update("jax_disable_most_optimizations", old)
