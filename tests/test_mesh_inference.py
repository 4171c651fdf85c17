"""Sampling on a device mesh (yume_jax/pipeline.py, yume_jax/rollout.py, infer.explore --mesh / --dist.*):
an exploration sharded over ``context`` (sequence parallel), over ``cfg`` (conditional and unconditional
halves on different devices) and over both equals the one-device exploration of the tiny pipeline, and two
processes on loopback (jax.distributed, 4 CPU devices each, one mesh over both) equal one process.

Tolerance: float32 everywhere (matmul precision "highest", tests/conftest.py); the sharded programs reorder
reductions (the CFG psum, the gathered attention), measured differences ~4e-6 on latents of unit scale, so
``atol = rtol = 1e-4`` (well under any real sharding bug, which moves latents by O(1))."""
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
TOL = dict(atol=1e-4, rtol=1e-4)
# the explorer's flags, shared by the in-process runs and the two-process CLI run (so one reference serves
# both). 64x64: latents 8x8, 16 tokens per latent frame, every token count divides context=4 (really
# sharded); --max-history 5: chunk 2 has chunk 1's shapes (no new compile). CFG 5 from pipeline.json.
FLAGS = ["--actions", "W,A+→", "--steps", "1", "--height", "64", "--width", "64", "--max-history", "5",
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
@pytest.mark.parametrize("spec", ["context=4", "cfg=2", "cfg=2,context=4"])
def test_sharded_exploration_equals_one_device(tiny, reference, spec):
    mesh = sharding.sampling_mesh(spec)
    session, lat, frames = _explore(tiny, mesh)
    assert session.mesh is mesh and session.pipe.cfg_parallel == ("cfg" in spec)
    assert dict(mesh.shape)["context"] == (4 if "context" in spec else 1)
    # the DiT's parameters live on the mesh (replicated over cfg and context)
    leaf = jax.tree.leaves(session.pipe.dit.params)[0]
    assert leaf.sharding.mesh.devices.size == mesh.devices.size
    # the second chunk (same shapes) compiles nothing: the gathered latents reuse the VAE's programs
    assert session.compiled[1] == 0, session.compiled
    _, ref_lat, ref_frames = reference
    for got, want in zip(lat, ref_lat):
        np.testing.assert_allclose(got, want, **TOL)
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
