"""Two processes on loopback (jax.distributed, coordinator 127.0.0.1, 4 CPU devices each; mesh data=2 across
the processes x fsdp=4 inside each) train tiny-yume on sandbox clips: both end with identical parameter
replicas (equal to the multi-process Orbax checkpoint), each process read a disjoint set of clips through
its own Grain shard, and a second launch resumes both processes from the checkpoint (per-process
data-iterator states)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from yume_jax.core import params as Pm
from yume_jax.train import checkpoint as ck

ROOT = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent('''
    import os, sys
    pid, port, workdir, cache, steps = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import numpy as np
    from configs import train as tc
    from train.train import init_jax, make_trainer
    from yume_jax.core import params as Pm
    cfg = tc.resolve("tiny-sandbox", [
        f"--workdir={workdir}", f"--compile_cache={cache}", f"--steps={steps}", "--batch_size=8",
        "--mesh.data=2", "--mesh.fsdp=4", "--model.dit.num_layers=2", "--objective.mvdt=false",
        "--data.raw.i2v_prob=1.0", "--data.history_latents=1", "--data.log_samples=true", "--data.generate=6",
        "--checkpoint.every=2", "--log_every=1", "--progress=false", "--tensorboard=false",
        f"--dist.coordinator=127.0.0.1:{port}", "--dist.num_processes=2", f"--dist.process_id={pid}"])
    init_jax(cfg)
    import jax
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # the relaunch compiles nothing
    assert jax.process_count() == 2 and jax.local_device_count() == 4 and jax.device_count() == 8
    state = make_trainer(cfg).fit()
    out = {}
    for name, x in Pm.flatten(state["dit"]["params"]).items():  # this process's own replica, from its shards
        full = np.full(x.shape, np.nan, np.float32)
        for s in x.addressable_shards:
            full[s.index] = np.asarray(s.data)
        out[name] = full
    np.savez(os.path.join(workdir, f"params.p{pid}.npz"), **out)
''')


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path: Path, steps: int) -> list[str]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)
    port = _port()
    procs = [subprocess.Popen([sys.executable, str(script), str(i), str(port), str(tmp_path / "run"),
                               str(tmp_path / "cache"), str(steps)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        outs.append(out)
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    return outs


def _samples(run: Path, pid: int) -> list[dict]:
    return [json.loads(x) for x in (run / f"samples.p{pid}.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_identical_params_disjoint_data(tmp_path):
    run = tmp_path / "run"
    outs = _launch(tmp_path, 2)
    assert "done: step 2" in outs[0]
    p0, p1 = (dict(np.load(run / f"params.p{i}.npz")) for i in range(2))
    assert p0.keys() == p1.keys()
    for k in p0:
        assert not np.isnan(p0[k]).any(), f"process 0 lacks a full replica of {k}"
        assert np.array_equal(p0[k], p1[k]), k
    step, saved = ck.read_state(run / "checkpoints")
    assert step == 2
    for k, v in Pm.flatten(saved["dit"]["params"]).items():
        assert np.array_equal(v, p0[k]), k
    # each process has its own Grain iterator state in the checkpoint
    files = sorted(f for f in os.listdir(run / "checkpoints" / "2" / "data") if f.startswith("process_"))
    assert files == ["process_0-of-2.json", "process_1-of-2.json"]

    # the data: 4 local samples per step and process, clips disjoint between the processes
    s0, s1 = _samples(run, 0), _samples(run, 1)
    assert [r["step"] for r in s0] == [r["step"] for r in s1] == [1, 2]
    assert all(len(r["clip"]) == 4 for r in s0 + s1)
    c0, c1 = {c for r in s0 for c in r["clip"]}, {c for r in s1 for c in r["clip"]}
    assert c0 and c1 and not (c0 & c1)
    assert all(c % 2 == 0 for c in c0) and all(c % 2 == 1 for c in c1)  # Grain shards [i::2] of the clip list

    # a second launch resumes both processes from step 2 and continues to 4
    outs = _launch(tmp_path, 4)
    assert "resumed from" in outs[0] and "done: step 4" in outs[0]
    q0, q1 = (dict(np.load(run / f"params.p{i}.npz")) for i in range(2))
    assert all(np.array_equal(q0[k], q1[k]) for k in q0)
    assert any(not np.array_equal(q0[k], p0[k]) for k in q0)
    s0, s1 = _samples(run, 0), _samples(run, 1)
    assert [r["step"] for r in s0][-2:] == [3, 4]
    assert not ({c for r in s0 for c in r["clip"]} & {c for r in s1 for c in r["clip"]})
