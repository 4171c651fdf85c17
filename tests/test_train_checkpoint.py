"""Checkpoints across mesh shapes: a state saved on one mesh restores bit-exactly onto other meshes (and
one device) with the new mesh's shardings, the data iterator resumes at the saved position, and a CLI
run resumed on a different mesh continues the training curve (to float32 reduction-order tolerance)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import train as tc
from yume_jax import sharding
from yume_jax.core import params as Pm
from yume_jax.train import checkpoint as ck
from yume_jax.train import data as data_lib
from yume_jax.train import state as state_lib

ROOT = Path(__file__).resolve().parents[1]


def test_restore_onto_other_meshes(tmp_path):
    cfg = tc.resolve("tiny-synthetic", {"optim.ema_decay": "0.9"})
    task = tc.flow_task(cfg)
    abstract = task.abstract_state()
    mesh_a = sharding.make_mesh({"fsdp": 8})
    state = task.init_state(task.state_shardings(mesh_a))
    # make the optimizer state non-trivial without compiling a training step
    state["dit"]["opt_state"] = jax.tree.map(lambda x: x + 0.25 if x.dtype == np.float32 else x,
                                             state["dit"]["opt_state"])
    it = iter(data_lib.dataset(cfg.data, task.raw, task.dit, 2, 0, 1))
    for _ in range(3):
        next(it)
    saver = ck.Checkpointer(tmp_path / "ckpt", max_to_keep=2)
    saver.save(7, state, it)
    expected_next = next(it)  # advancing after save() must not change what was saved
    saver.close()
    host = jax.device_get(state)

    for shape, devices in [({"data": 2, "tensor": 4}, None), ({"fsdp": 2, "context": 2, "tensor": 2}, None),
                           ({"fsdp": 1}, jax.devices()[:1])]:
        mesh = sharding.make_mesh(shape, devices=devices)
        sh = task.state_shardings(mesh)
        it2 = iter(data_lib.dataset(cfg.data, task.raw, task.dit, 2, 0, 1))
        loader = ck.Checkpointer(tmp_path / "ckpt")
        assert loader.latest_step() == 7
        got = loader.restore(7, state_lib.with_shardings(abstract, sh), it2)
        loader.close()
        for a, b, s in zip(jax.tree.leaves(got), jax.tree.leaves(host), jax.tree.leaves(sh)):
            assert a.sharding == s
            assert np.array_equal(np.asarray(a), b)
        k = got["dit"]["params"]["blocks"]["ffn"]["fc1"]["kernel"]
        assert k.sharding.spec == sh["dit"]["params"]["blocks"]["ffn"]["fc1"]["kernel"].spec
        if mesh.shape["tensor"] > 1:
            assert k.sharding.spec[2] == "tensor"
        nxt = next(it2)
        assert all(np.array_equal(nxt[key], expected_next[key]) for key in expected_next)


def _cli(workdir, cache, *extra, devices=8):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    cmd = [sys.executable, "-m", "train.train", "--config", "tiny-t2v", "--log_every=1", "--progress=false",
           "--tensorboard=false", "--optim.schedule=constant", f"--workdir={workdir}", f"--compile_cache={cache}",
           *extra]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return r.stderr


def _losses(workdir):
    out = {}
    for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out[r["step"]] = r["loss"]
    return out


@pytest.mark.slow
def test_cli_resume_on_another_mesh(tmp_path):
    cache = tmp_path / "cache"
    a = tmp_path / "a"
    _cli(a, cache, "--steps=2", "--mesh.fsdp=8")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    _cli(a, cache, "--steps=3", "--mesh.fsdp=8")  # continue on the same mesh
    err = _cli(b, cache, "--steps=3", "--mesh.fsdp=2", "--mesh.tensor=2", "--mesh.data=2")  # on another mesh
    assert "resumed from" in err and "config differs" in err and "mesh.tensor" in err
    la, lb = _losses(a), _losses(b)
    assert sorted(la) == sorted(lb) == [1, 2, 3]
    np.testing.assert_allclose([lb[3]], [la[3]], rtol=1e-5)
    _, sa = ck.read_state(a / "checkpoints")
    _, sb = ck.read_state(b / "checkpoints")
    pa, pb = Pm.flatten(sa["dit"]["params"]), Pm.flatten(sb["dit"]["params"])
    for k in pa:
        np.testing.assert_allclose(pb[k], pa[k], rtol=0, atol=1e-5, err_msg=k)  # 1e-2 * lr
    assert json.loads((b / "config.json").read_text())["mesh"] == {"data": 2, "fsdp": 2, "context": 1, "tensor": 2}
