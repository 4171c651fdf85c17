"""Fault injection for the training half of issue 13 (``python -m train.train``, ``python -m train.build_latents``
and the library they run): data that does not decode, NaN/inf losses and parameters, corrupt checkpoints,
metrics and config files, signals while blocked in the data pipeline and mid-build, full disks (an injected
ENOSPC), concurrent runs into one directory, corrupt CSVs / plans / latent datasets, bad numbers.

Everything runs in process on a toy task (one 4x4 matrix, one compile per trainer) and the stand-in encoders;
signals are sent by the process to itself from inside the data or encoder callbacks, so they land exactly
where the fault is. The real-process SIGTERM -> exit 143 of the trainer CLI is in tests/test_train_resume.py."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from yume_jax.core import cli
from yume_jax.data import latents as L
from yume_jax.data import pipeline as pl
from yume_jax.data import sekai, world
from yume_jax.train import checkpoint as ck
from yume_jax.train import state as state_lib
from yume_jax.train import step as step_lib
from yume_jax.train.task import Prepared
from yume_jax.train.trainer import NonFiniteError, Trainer, TrainerConfig

D = 4


class Sample:
    """x ~ N(0, 1); ``skip(count)`` -> a skip reason for the count-th call (None: decode); ``on_skip`` runs
    once, at the first skip (e.g. to send a signal while the collate loop spins)."""

    def __init__(self, skip=None, on_skip=None):
        self.skip, self.on_skip, self.calls, self.lock = skip, on_skip, 0, threading.Lock()

    def __call__(self, index, rng):
        with self.lock:
            n, self.calls = self.calls, self.calls + 1
        why = self.skip(n) if self.skip else None
        if why:
            if self.on_skip is not None:
                hook, self.on_skip = self.on_skip, None
                hook()
            return {pl.SKIP: why, "clip": int(index), "error": f"/data/clip{int(index)}.mp4: Invalid data"}
        return {"x": rng.standard_normal((D,), dtype=np.float32)}


class Toy:
    """Fit x @ w to 2 x. ``bad_from`` (1-based trainer step): from there the loss is NaN (``nan_loss``) or the
    update makes the parameters infinite with a finite loss (``inf_params``)."""

    device_keys = ("x",)

    def __init__(self, sample=None, bad_from=None, mode="nan_loss", **loader):
        self.sample, self.bad_from, self.mode, self.loader = sample or Sample(), bad_from, mode, loader
        self.opt = optax.sgd(0.1)
        abstract = {"w": jax.ShapeDtypeStruct((D, D), jnp.float32)}
        self.models = {"m": state_lib.Model(None, abstract, self.opt,
                                            shardings=lambda a, mesh: {"w": NamedSharding(mesh, P())})}
        self.abstract = state_lib.abstract_state(self.models)

    def setup(self, env):
        return pl.build(1 << 20, self.sample, pl.LoaderConfig(seed=1, batch_size=env.local_batch, **self.loader),
                        env.shard_index, env.shard_count)

    def abstract_state(self):
        return self.abstract

    def state_shardings(self, mesh):
        return state_lib.state_shardings(self.models, self.abstract, mesh)

    def init_state(self, shardings):
        params = {"m": {"w": jax.device_put(jnp.eye(D), shardings["m"]["params"]["w"])}}
        return state_lib.init_state(self.models, params, 0, shardings)

    def prepare(self, batch, step):
        return Prepared(batch={"x": batch["x"]}, key=None)

    def make_step(self, key, mesh, state_sh, batch_sh):
        bad = self.bad_from

        def step(state, batch):
            broken = jnp.bool_(False) if bad is None else state["step"] + 1 >= bad

            def loss_fn(p, mb, k):
                loss = jnp.mean(jnp.square(mb["x"] @ p["w"] - 2 * mb["x"]))
                return (jnp.where(broken, jnp.nan, loss) if self.mode == "nan_loss" else loss), {}

            loss, _, g = step_lib.accumulate(loss_fn, state["m"]["params"], batch, step_lib.step_key(state))
            m = step_lib.apply_gradients(state["m"], g, self.opt)
            if self.mode == "inf_params":
                m = {**m, "params": {"w": jnp.where(broken, jnp.inf, m["params"]["w"])}}
            return {**state, "step": state["step"] + 1, "m": m}, {"loss": loss, "grad_norm": optax.tree.norm(g)}

        return step_lib.jit_step(step, mesh, state_sh, batch_sh)


def _cfg(run, steps, **kw):
    base = dict(run_dir=run, steps=steps, batch_size=8, mesh={"fsdp": -1}, log_every=1, tensorboard=False,
                progress=False, checkpoint_every=1, max_to_keep=2, async_save=False)
    return TrainerConfig(**(base | kw))


def _steps(run):
    return sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _w(run, step=None):
    return ck.read_state(run / "checkpoints", step)[1]["m"]["params"]["w"]


# ------------------------------------------------------------------------------------------- data pipeline

def _pipe(skip, **loader):
    return iter(pl.build(1 << 20, Sample(skip), pl.LoaderConfig(seed=0, batch_size=4, read_threads=1, **loader), 0, 1))


@pytest.mark.parametrize("skip, loader, message", [
    (lambda n: "bad_video", {}, r"no sample decodes \(32 tried\): bad_video=32; first problems: bad_video: item \d+: "
                                r"/data/clip\d+\.mp4: Invalid data"),
    (lambda n: "bad_video" if n % 5 < 3 else None, {}, r"skipped \(\d+% > max_skip_fraction=0.5\)"),
    (lambda n: "too_short" if n % 5 == 0 else None, {"max_skip_fraction": 0.1}, r"> max_skip_fraction=0.1"),
    (lambda n: "bad_video", {"max_skip_fraction": 1.0, "min_attempts": 5}, r"no sample decodes \(5 tried\)"),
])
def test_pipeline_fails_fast_naming_the_first_problems(skip, loader, message):
    it = _pipe(skip, **loader)
    with pytest.raises(pl.DataError, match=message):
        for _ in range(100):
            next(it)


def test_pipeline_tolerates_skips_under_the_cap_and_counts_them():
    it = _pipe(lambda n: "bad_poses" if n % 5 == 0 else None)
    for _ in range(20):
        next(it)
    tried, per_cause = pl.skip_stats(it)
    assert per_cause == {"bad_poses": tried - 80} and tried >= 96
    with pytest.raises(ValueError, match="max_skip_fraction"):
        pl.build(4, Sample(), pl.LoaderConfig(max_skip_fraction=float("nan")), 0, 1)


def test_trainer_reports_skips_and_fails_fast_on_undecodable_data(tmp_path, capsys):
    run = tmp_path / "run"
    Trainer(_cfg(run, 3), Toy(Sample(lambda n: "bad_video" if n % 4 == 0 else None))).fit()
    last = _records(run)[-1]
    assert last["data_skipped"] == last["data_skipped_bad_video"] > 0 and 0 < last["data_skip_fraction"] < 0.5
    assert "skip=" in capsys.readouterr().err  # the progress line
    # nothing decodes from step 4 on: exit 2 naming the file, checkpoints of the good steps intact
    sample = Sample(lambda n: "bad_video" if n >= 8 else None)
    code = cli.run(lambda argv: Trainer(_cfg(run, 6), Toy(sample)).fit(), [], prog="train")
    err = capsys.readouterr().err
    assert code == 2 and "max_skip_fraction=0.5" in err and "/data/clip" in err and "Traceback" not in err
    assert _steps(run) == [3, 4]  # step 4 finished before the data broke; saved before failing


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_while_the_data_loop_spins_saves_and_exits_128_plus_signum(tmp_path, signum, monkeypatch, capsys):
    """The trainer used to hang for ever (and ignore signals) when every sample fails; with the skip cap off
    the loop still spins, and a signal ends it: the current step is saved with the data position of that
    step, the CLI exits 130 / 143, and the same command resumes."""
    import train.train as tt
    run = tmp_path / "run"
    kill = lambda: threading.Timer(0.2, os.kill, (os.getpid(), signum)).start()  # noqa: E731
    sample = Sample(lambda n: "bad_video" if n >= 16 else None, on_skip=kill)
    task = Toy(sample, max_skip_fraction=1.0, min_attempts=1 << 30)
    monkeypatch.setattr(tt, "init_jax", lambda cfg: None)
    monkeypatch.setattr(tt, "make_trainer", lambda cfg: Trainer(_cfg(run, 10, checkpoint_every=100), task))
    code = tt.main(["--config", "tiny-synthetic"])
    assert code == 128 + signum and "stopped by signal at step 2" in capsys.readouterr().err
    assert _steps(run) == [2]
    state = Trainer(_cfg(run, 3), Toy()).fit()  # resumes from the frozen data position
    assert _steps(run) == [2, 3] and int(state["step"]) == 3


# ------------------------------------------------------------------------------------------- non-finite

def test_nonfinite_stop_keeps_good_checkpoints(tmp_path, capsys):
    run = tmp_path / "run"
    code = cli.run(lambda argv: Trainer(_cfg(run, 6), Toy(bad_from=4)).fit(), [], prog="train")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("train: error: non-finite loss or gradients at step 4 (loss=nan")
    assert "last checkpoint: step 3" in err[-1]
    assert _steps(run) == [2, 3]  # max_to_keep=2: the bad step did not rotate a good one out
    assert np.all(np.isfinite(_w(run)))
    assert [r["step"] for r in _records(run)] == [1, 2, 3, 4] and _records(run)[-1]["nonfinite"] == 1.0


def test_nonfinite_skip_leaves_the_state_and_counts(tmp_path):
    run = tmp_path / "run"
    t = Trainer(_cfg(run, 5, nonfinite="skip", checkpoint_every=2, max_to_keep=5), Toy(bad_from=3))
    state = t.fit()
    assert t.nonfinite_steps == 3 and int(state["step"]) == 5
    np.testing.assert_array_equal(np.asarray(state["m"]["params"]["w"]), _w(run, 2))  # steps 3-5 not applied
    recs = _records(run)
    assert [r["nonfinite"] for r in recs] == [0, 0, 1, 1, 1] and recs[-1]["nonfinite_steps"] == 3


def test_parameters_that_overflow_are_never_saved(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(NonFiniteError, match="parameters became non-finite by step 3.*last checkpoint: step 2"):
        Trainer(_cfg(run, 5), Toy(bad_from=3, mode="inf_params")).fit()
    assert _steps(run) == [1, 2]


def test_guard_is_a_select_on_the_model_entries():
    old = {"step": jnp.int32(4), "rng": jnp.zeros(2, jnp.uint32), "m": {"params": jnp.ones(3)}}
    new = {"step": jnp.int32(5), "rng": jnp.zeros(2, jnp.uint32), "m": {"params": jnp.full(3, 7.0)}}
    out, m = step_lib.guard_nonfinite(old, new, {"loss": jnp.float32(1.0), "grad_norm": jnp.float32(jnp.inf)})
    assert int(out["step"]) == 5 and np.all(np.asarray(out["m"]["params"]) == 1.0) and float(m["nonfinite"]) == 1
    out, m = step_lib.guard_nonfinite(old, new, {"loss": jnp.float32(1.0), "grad_norm": jnp.float32(2.0)})
    assert np.all(np.asarray(out["m"]["params"]) == 7.0) and float(m["nonfinite"]) == 0


# ------------------------------------------------------------------------------------------- checkpoints, metrics, config

def _garble(step_dir):
    for p in sorted(step_dir.rglob("*")):
        if p.is_file() and p.stat().st_size > 0 and "data" not in p.parts:
            p.write_bytes(b"\x00garbage" * 3)


def test_corrupt_latest_checkpoint_falls_back_and_metrics_do_not_repeat(tmp_path, capsys):
    run = tmp_path / "run"
    Trainer(_cfg(run, 4, checkpoint_every=2, max_to_keep=3), Toy(), config={"lr": 1}).fit()
    assert _steps(run) == [2, 4]
    _garble(run / "checkpoints" / "4")
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 5, "lo')  # a line cut by a kill
    capsys.readouterr()
    Trainer(_cfg(run, 6, checkpoint_every=2, max_to_keep=3), Toy(), config={"lr": 2}).fit()
    err = capsys.readouterr().err
    assert f"checkpoint {run / 'checkpoints' / '4'} does not restore (" in err
    assert f"resumed from {run / 'checkpoints' / '2'}" in err
    assert [p.name.split("-")[0] for p in (run / "checkpoints.corrupt").iterdir()] == ["4"]  # kept, not deleted
    assert _steps(run) == [2, 4, 6]
    assert [r["step"] for r in _records(run)] == [1, 2, 3, 4, 5, 6]  # steps 3-4 of the first run dropped
    assert json.loads((run / "config.json").read_text()) == {"lr": 2}


def test_no_checkpoint_restores_one_line_and_config_untouched(tmp_path, capsys):
    run = tmp_path / "run"
    Trainer(_cfg(run, 2), Toy(), config={"lr": 1}).fit()
    for s in _steps(run):
        _garble(run / "checkpoints" / str(s))
    code = cli.run(lambda argv: Trainer(_cfg(run, 4), Toy(), config={"lr": 2}).fit(), [], prog="train")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith(f"train: error: no checkpoint in {run / 'checkpoints'} restores (step 2:")
    assert json.loads((run / "config.json").read_text()) == {"lr": 1} and _steps(run) == [1, 2]


def test_corrupt_saved_config_json(tmp_path, capsys):
    import train.train as tt
    bad = tmp_path / "config.json"
    for text in ("{not json", "[1, 2]", '{"optim": {"lr": "x"}}', "\xff\xfe"):
        bad.write_text(text, encoding="latin-1")
        assert tt.main(["--config", str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--config {bad}: " in err and "Traceback" not in err, err


# ------------------------------------------------------------------------------------------- CLI: config, workdir, disk

@pytest.mark.parametrize("args, message", [
    (["--optim.lr=nan"], "--optim.lr must be finite"),
    (["--optim.lr=inf"], "--optim.lr must be finite"),
    (["--optim.b2=1.5"], "--optim.b1 and b2 must be in [0, 1)"),
    (["--optim.nonfinite=ignore"], "--optim.nonfinite must be stop or skip"),
    (["--data.max_skip_fraction=2"], "--data.max_skip_fraction must be in [0, 1]"),
    (["--objective.shift=inf"], "--objective.shift must be finite"),
    (["--seed=-1"], "--seed must be >= 0"),
    (["--data.raw.i2v_prob=nan"], "i2v_prob"),
    (["--steps=0"], "--steps must be >= 1"),
])
def test_bad_numbers_are_one_line_exit_2(args, message, capsys):
    import train.train as tt
    assert tt.main(["--config", "tiny-synthetic", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_workdir_faults_one_line(tmp_path, capsys, monkeypatch):
    import train.train as tt
    (tmp_path / "file").write_text("x")
    for workdir, message in ((tmp_path / "file", "file"), (tmp_path / "file" / "run", "not a directory")):
        assert tt.main(["--config", "tiny-synthetic", f"--workdir={workdir}"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err
    # a second run into a workdir in use is refused before it touches anything
    run = tmp_path / "busy"
    with cli.DirLock(run):
        assert tt.main(["--config", "tiny-synthetic", f"--workdir={run}"]) == 2
        assert f"{run} is in use by another training run (pid {os.getpid()})" in capsys.readouterr().err
        with pytest.raises(cli.UserError, match="in use"):
            Trainer(_cfg(run, 1), Toy())
    assert sorted(p.name for p in run.iterdir()) == [".lock"]


def test_disk_full_while_saving_and_writing_metrics(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    Trainer(_cfg(run, 2), Toy()).fit()
    real = ck.Checkpointer.save

    def full(self, step, *a, **k):
        if step >= 4:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.directory / str(step)))
        return real(self, step, *a, **k)

    monkeypatch.setattr(ck.Checkpointer, "save", full)
    code = cli.run(lambda argv: Trainer(_cfg(run, 6), Toy()).fit(), [], prog="train")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == f"train: error: {run / 'checkpoints' / '4'}: no space left on device"
    assert _steps(run) == [2, 3]
    monkeypatch.setattr(ck.Checkpointer, "save", real)

    class FullFile:
        def __init__(self, fh):
            self.fh, self.closed = fh, False

        def write(self, s):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

        def close(self):
            self.fh.close()
            self.closed = True

    from yume_jax.train import metrics as mt
    real_init = mt.Sinks.__init__

    def init(self, *a, **k):
        real_init(self, *a, **k)
        if self.jsonl is not None:
            self.jsonl = FullFile(self.jsonl)

    monkeypatch.setattr(mt.Sinks, "__init__", init)
    code = cli.run(lambda argv: Trainer(_cfg(run, 6), Toy()).fit(), [], prog="train")
    assert code == 2 and capsys.readouterr().err.strip().lower().endswith("no space left on device")
    assert _steps(run) == [2, 3] and not (run / ".lock").read_text() == ""  # lock released, nothing lost
    monkeypatch.setattr(mt.Sinks, "__init__", real_init)
    Trainer(_cfg(run, 4), Toy()).fit()  # space back: the run continues
    assert _steps(run) == [3, 4] and [r["step"] for r in _records(run)] == [1, 2, 3, 4]


# ------------------------------------------------------------------------------------------- build_latents

@pytest.fixture(scope="module")
def raw_root(tmp_path_factory):
    return world.write_dataset(tmp_path_factory.mktemp("yume"), 2, 31, "yume", cfg=world.PRESETS["tiny"],
                               num_frames=40, min_clip_frames=12)


@pytest.fixture
def build(raw_root, monkeypatch, capsys):
    import train.build_latents as bl
    enc = L.stand_in_encoders(z_dim=16, text_dim=24, text_len=16)
    hooks = {"video": None}

    def video(x):
        if hooks["video"] is not None:
            hooks["video"]()
        return enc[0](x)

    monkeypatch.setattr(bl, "_encoders", lambda args: (video, enc[1], None))

    def run(out, *extra):
        code = bl.main(["--data", str(raw_root), "--vae", "v", "--text-encoder", "t", "--out", str(out),
                        "--preset", "tiny", *extra])
        cap = capsys.readouterr()
        return code, cap.out + cap.err

    run.hooks = hooks
    return run


def test_build_latents_rerun_with_other_settings_is_refused(build, tmp_path):
    out = tmp_path / "lat"
    code, text = build(out, "--seed", "1")
    assert code == 0 and "wrote 3 examples" in text
    files = {p: p.read_bytes() for p in (out / "yume_latents").rglob("*") if p.is_file()}
    code, text = build(out, "--seed", "2", "--samples-per-clip", "2")
    assert code == 2 and "holds a finished build with different settings (samples_per_clip, seed)" in text
    assert text.strip().splitlines()[-1].startswith("python -m train.build_latents: error:")
    code, text = build(out, "--seed", "1")
    assert code == 0 and "already built with these settings (3 examples)" in text
    assert {p: p.read_bytes() for p in (out / "yume_latents").rglob("*") if p.is_file()} == files


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_build_latents_signal_mid_build_then_resume(build, tmp_path, signum):
    out = tmp_path / "lat"
    calls = []

    def kill():
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signum)

    build.hooks["video"] = kill
    code, text = build(out)
    assert code == 128 + signum and "run the same command to continue" in text and "Traceback" not in text
    assert len(list((out / "_work").glob("0*.npz"))) == 1 and not list((out / "_work").glob(".*"))
    assert not (out / "yume_latents").exists()  # no dataset announced or written
    build.hooks["video"] = None
    # leftovers of a harder kill (SIGKILL mid-write) are cleaned by the next build
    (out / "_work" / ".00000001.partial-999.npz").write_bytes(b"half")
    (out / "yume_latents" / "incomplete.ABCDEF_1.0.0").mkdir(parents=True)
    code, text = build(out)
    assert code == 0 and "wrote 3 examples" in text and "encoded 2 in this run" in text
    assert sorted(p.name for p in (out / "yume_latents").iterdir()) == ["1.0.0"]


def test_build_latents_bad_inputs_one_line(build, tmp_path, monkeypatch):
    out = tmp_path / "lat"
    for extra, message in ((["--height", "0"], "--height must be >= 1"),
                           (["--samples-per-clip", "-1"], "--samples-per-clip must be >= 1"),
                           (["--chunk-frames", "10"], "chunk_frames must be 4n+1"),
                           (["--seed", "-1"], "--seed must be >= 0")):
        code, text = build(out, *extra)
        assert code == 2 and message in text and "Traceback" not in text, text
    # a corrupt plan of an interrupted build; then a full disk while writing a sample
    (out / "_work").mkdir(parents=True)
    (out / "_work" / "plan.json").write_text("{trunc")
    code, text = build(out)
    assert code == 2 and "plan.json is corrupt" in text
    shutil.rmtree(out / "_work")

    def full(path, **arrays):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with monkeypatch.context() as m:
        m.setattr(L, "_atomic_npz", full)
        code, text = build(out)
    assert code == 2 and text.strip().endswith("00000000.npz: no space left on device")
    # another build holds OUT
    with cli.DirLock(out):
        code, text = build(out)
    assert code == 2 and "is in use by another latent build" in text


def test_corrupt_latent_dataset_for_training(build, tmp_path):
    from yume_jax.train import data as data_lib
    from configs import train as tc
    out = tmp_path / "lat"
    assert build(out)[0] == 0
    path = out / "yume_latents" / "1.0.0"
    cfg = tc.resolve("tiny-synthetic", ["--data.source=latents", f"--data.path={path}"])
    (path / "dataset_info.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"is not a readable latent dataset \(.*rebuild it"):
        data_lib.describe(cfg.data, cfg.raw_config(), cfg.dit_config(), path)
    assert build(out)[0] == 2  # nor is it reported as built
    # records that do not decode are skipped and counted like broken clips
    sample = L.LatentSample(path)
    sample._src = [None]
    got = sample(0, np.random.default_rng(0))
    assert got[pl.SKIP] == "bad_record" and str(path) in got["error"]


def test_non_utf8_csv_names_the_file_and_skips_only_it(tmp_path):
    root = tmp_path / "sekai"
    frames = np.zeros((6, 16, 16, 3), np.uint8)
    c2w = np.tile(np.eye(4), (6, 1, 1))
    vf, cf = sekai.write_sekai_clip(root, "a_0000000_0000006", frames, c2w, np.eye(3))
    sekai.write_sekai_csv(root / "train" / "sekai-good.csv", [{"videoFile": vf, "cameraFile": cf}])
    (root / "train" / "sekai-latin1.csv").write_bytes("videoFile,cameraFile,caption\nx.mp4,x.npz,caf\xe9\n"
                                                       .encode("latin-1"))
    (root / "train" / "sekai-dir.csv").mkdir()  # not a file at all
    data = sekai.read(root)
    assert len(data.clips) == 1 and data.skipped["bad_csv"] == 2
    assert any("sekai-latin1.csv: not UTF-8" in p for p in data.problems)
    (root / "train" / "sekai-good.csv").unlink()
    with pytest.raises(ValueError, match="no annotation CSV could be read: bad_csv: .*sekai-latin1.csv"):
        sekai.read(root)
