"""``python -m infer.explore``: explore a generated world with the keyboard.

Scripted:     python -m infer.explore --image start.png --actions "W,W+A,→,S+D+↑" --out walk.mp4
Interactive:  python -m infer.explore --image start.png          (type W, A+→, up, ... then Enter; q quits)

Keys: W/A/S/D move (combine with +, e.g. W+A), arrows (or left/right/up/down, j/l/i/k) turn and
tilt; arrow keys typed in the terminal work too; a line may hold several steps and repeats (W,A  W*3). Each command generates the next chunk; the MP4
grows after every chunk and a JSON sidecar (``OUT.json``) records per-chunk actions, prompts, seeds
and timings, enough to reproduce the run, and the XLA programs the run compiled or read back from the
persistent compilation cache (``compiles``). Chunks are pipelined (chunk i+1 is sampled while chunk i is
decoded and written; yume_jax/rollout.py ``Session.submit``) and the history is fed in a bounded set of
lengths (``--history-buckets``), so a long run compiles a handful of programs in its first chunks and a
second launch compiles none (``--compile-cache``). Exit codes: 0 ok, 2 bad input (invalid action, missing or
unreadable image/video, bad checkpoint, a number out of range, the model producing NaN/inf: one line on
stderr, ``--debug`` for the traceback), 130 / 143 interrupted by SIGINT / SIGTERM (the video of finished
chunks is kept, the sidecar says ``finished: false``).

Numbers are checked where they enter, flags and pipeline.json alike (:data:`LIMITS`): --steps 1..1000,
--cfg finite in 0..100, --cache 0..1000, --max-history 1..100000, --chunk-frames 1..256, --height/--width
16..8192, --seed 0..2^32-1; an action script expands to at most 100000 steps. A chunk whose pixels are not
finite stops the run (exit 2) instead of writing black frames. One run at a time per --out (a lock beside it).

Several devices: ``--mesh context=4,cfg=2`` (yume_jax/sharding.py ``sampling_mesh``: sequence- and CFG-parallel
sampling, yume_jax/pipeline.py); a spec that does not fit the devices is one line, exit 2. Several hosts:
``--dist.coordinator=HOST:PORT --dist.num_processes=N --dist.process_id=I`` on every host (jax.distributed
before the mesh is built; scripted ``--actions`` only); every process samples, process 0 writes the video.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from yume_jax.core import cli

DEFAULT_MODEL_DIR = Path(os.environ.get("YUME_JAX_CACHE", Path.home() / ".cache" / "yume-jax")) / "tiny-random-v1"
# the embedded default model (docs/default_model.md), tracked in the repository with its SHA256SUMS
EMBEDDED_MODEL = Path(__file__).resolve().parents[1] / "models" / "sandbox-world"
ARROWS = {"\x1b[A": "↑", "\x1b[B": "↓", "\x1b[C": "→", "\x1b[D": "←", "\x1bOA": "↑", "\x1bOB": "↓",
          "\x1bOC": "→", "\x1bOD": "←"}


UsageError = cli.UserError  # bad input: one line, exit code 2 (the name infer.calibrate_cache imports)

# (low, high) of every number a run takes, from a flag or from pipeline.json (documented in the module doc)
LIMITS = {"steps": (1, 1000), "cfg": (0.0, 100.0), "cache": (0, 1000), "max_history": (1, 100_000),
          "chunk_frames": (1, 256), "height": (16, 8192), "width": (16, 8192), "seed": (0, 2**32 - 1)}


def check_number(name: str, value, where: str):
    """``value`` of run setting ``name`` (``where``: the flag or pipeline.json key naming it) within
    :data:`LIMITS`, as int (float for cfg); None stays None."""
    if value is None:
        return None
    lo, hi = LIMITS[name]
    if isinstance(lo, float):
        return cli.finite(value, where, low=lo, high=hi)
    if isinstance(value, bool):
        raise UsageError(f"{where} must be an integer, got {value!r}")
    return cli.integer(value, where, low=lo, high=hi)


def read_pipeline_json(pipe_dir) -> dict:
    """``pipe_dir``/pipeline.json (absent: {}) checked before any model is loaded: a JSON object whose run
    settings are within :data:`LIMITS`; UsageError naming the file and key."""
    p = Path(pipe_dir) / "pipeline.json"
    if not p.exists():
        return {}
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{p}: corrupt JSON ({e})") from None
    if not isinstance(d, dict):
        raise UsageError(f"{p}: expected a JSON object, got {type(d).__name__}")
    for name in LIMITS:
        check_number(name, d.get(name), f"{p}: {name}")
    return d


def check_flags(a) -> None:
    """Every numeric flag of ``a`` (those present) within :data:`LIMITS`; UsageError naming the flag."""
    for name in LIMITS:
        if hasattr(a, name):
            check_number(name, getattr(a, name), "--" + name.replace("_", "-"))


def sampling_names() -> tuple[str, ...]:
    """The registered samplers (yume_jax/sampling/registry.py)."""
    from yume_jax.sampling import registry

    return registry.names()


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m infer.explore", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="pipeline directory (dit/, vae/, text_encoder/, [image_encoder/]), official "
                                         "release directory or training workdir; default: the embedded default model")
    ap.add_argument("--encoders", help="pipeline directory whose VAE/encoders to use with a workdir trained on stand-ins")
    ap.add_argument("--image", help="start image (image-to-video)")
    ap.add_argument("--video", help="start video (video-to-video: the video is the history)")
    ap.add_argument("--prompt", default=None,
                    help="scene description: the Yume 1.5 caption (selects --prompt-style yume1.5 unless given)")
    ap.add_argument("--prompt-style", choices=["yume1", "yume1.5"], default=None,
                    help="action prompt vocabulary (default: pipeline.json's, else yume1; yume1 appends the "
                         "public sampler's fixed speed sentence)")
    ap.add_argument("--caption", default=None, help="scene caption of the yume1.5 prompt style")
    ap.add_argument("--negative-prompt", default=None, help="CFG negative prompt (default: Wan's)")
    ap.add_argument("--actions", help='comma-separated steps, e.g. "W,W+A,→"; omit for interactive mode')
    ap.add_argument("--steps", type=int, default=None, help="sampling steps per chunk")
    ap.add_argument("--sampler", choices=sampling_names(), default=None,
                    help="default: pipeline.json's, else euler")
    ap.add_argument("--aam", action="store_true", help="anti-artifact mechanism (two passes)")
    ap.add_argument("--cache", type=int, default=0, metavar="N",
                    help="block residual caching: refresh every N steps (0: off)")
    ap.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (1 = off)")
    ap.add_argument("--history-mode", choices=["renoise", "clean"], default=None,
                    help="renoise (Yume 1.0) or clean (Yume 1.5, t = 0 on history); default: pipeline.json's, "
                         "else renoise")
    ap.add_argument("--max-history", type=int, default=None,
                    help="latent frames of history kept (frame 0, the anchor, always kept)")
    ap.add_argument("--chunk-frames", type=int, default=None, help="new latent frames per chunk")
    add_history_buckets_flag(ap)
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="explore.mp4")
    add_compile_cache_flag(ap)
    add_mesh_flag(ap)
    ap.add_argument("--dist.coordinator", dest="dist_coordinator", default=None, metavar="HOST:PORT",
                    help="multi-host: jax.distributed coordinator (process 0's address); every process runs the "
                         "same command with its own --dist.process_id, process 0 writes the video")
    ap.add_argument("--dist.num_processes", dest="dist_num_processes", type=int, default=None, metavar="N")
    ap.add_argument("--dist.process_id", dest="dist_process_id", type=int, default=None, metavar="I")
    return ap.parse_args(argv)


def add_history_buckets_flag(ap) -> None:
    """``--history-buckets default|exact|N,...`` (shared by infer.explore and infer.serve)."""
    ap.add_argument("--history-buckets", default="default",
                    help="history lengths fed to the model, comma-separated ('default': yume_jax/models/memory.py "
                         "BUCKETS, the anchor and the newest frames of a bounded set of lengths, so a long run "
                         "compiles a handful of programs; 'exact': every length, one compile per length)")


def history_buckets(value: str):
    """The ``--history-buckets`` value as RolloutConfig.history_buckets (None: exact); UserError if malformed."""
    from yume_jax.models import memory

    if value == "exact":
        return None
    if value == "default":
        return memory.BUCKETS
    try:
        return tuple(int(x) for x in value.split(","))
    except ValueError:
        raise UsageError(f"--history-buckets must be comma-separated integers, 'default' or 'exact', "
                         f"got {value!r}") from None


def add_mesh_flag(ap) -> None:
    """``--mesh AXIS=N,...`` (shared by infer.explore and infer.serve)."""
    ap.add_argument("--mesh", default=None, metavar="AXIS=N,...",
                    help="sample on several devices: context=N (sequence parallel), cfg=2 (conditional and "
                         "unconditional halves on different devices), tensor=N, combinable, e.g. context=4,cfg=2; "
                         "-1 takes the remaining devices (default: one device)")
    ap.add_argument("--seq-parallel", default="auto", choices=("auto", "ulysses", "gather"),
                    help="self-attention over the mesh's context axis: ulysses (all-to-all to a head split; needs "
                         "the heads to divide context x tensor), gather (queries keep their sequence shard, K/V "
                         "all-gathered; any head count), auto (ulysses where the heads divide, else gather)")


def init_distributed(a) -> bool:
    """jax.distributed from the --dist.* flags (before any device is touched); True when it was initialised.
    UserError (one line) for an incomplete or out-of-range set of flags."""
    given = [a.dist_coordinator, a.dist_num_processes, a.dist_process_id]
    if all(v is None for v in given):
        return False
    if any(v is None for v in given):
        raise UsageError("--dist.coordinator, --dist.num_processes and --dist.process_id go together")
    host, _, port = a.dist_coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--dist.coordinator must be HOST:PORT, got {a.dist_coordinator!r}")
    n = cli.integer(a.dist_num_processes, "--dist.num_processes", low=1, high=100_000)
    cli.integer(a.dist_process_id, "--dist.process_id", low=0, high=n - 1)
    import jax

    jax.distributed.initialize(a.dist_coordinator, n, a.dist_process_id)
    return True


def mesh_from_flag(spec):
    """The sampling mesh of ``--mesh`` (None: one device); UserError (one line) when it does not fit."""
    if spec is None:
        return None
    from yume_jax import sharding

    try:
        return sharding.sampling_mesh(spec)
    except ValueError as e:
        raise UsageError(str(e) if str(e).startswith("--mesh") else f"--mesh {spec}: {e}") from None


def add_compile_cache_flag(ap) -> None:
    """``--compile-cache DIR|off`` (shared by infer.explore, infer.serve, infer.evaluate)."""
    ap.add_argument("--compile-cache", default=None, metavar="DIR",
                    help="JAX persistent compilation cache: a second launch reads its programs back instead of "
                         "compiling them (default: $YUME_JAX_COMPILE_CACHE, else ~/.cache/yume-jax/xla; 'off' "
                         "disables)")


def read_image(path: str) -> np.ndarray:
    """uint8 RGB (16-bit images scaled, not clipped): :func:`yume_jax.media.load_image`."""
    from yume_jax.media import load_image

    return load_image(path)


def read_video(path: str) -> np.ndarray:
    from yume_jax.data import video as vio

    if not Path(path).is_file():
        raise UsageError(f"video not found: {path}")
    try:
        info = vio.probe(path)
        return vio.read_frames(path, list(range(info.num_frames)))
    except Exception as e:
        raise UsageError(f"cannot read video {path}: {e}") from None


def default_pipeline_dir() -> Path:
    """The embedded default model when the checkout has it (load_pipeline verifies its checksums), else the tiny
    random test pipeline, said on stderr."""
    from yume_jax.testing import save_tiny_pipeline

    if (EMBEDDED_MODEL / "pipeline.json").is_file():
        return EMBEDDED_MODEL
    print("notice: no --checkpoint given and no trained default model is embedded yet: using a TINY RANDOM "
          f"model ({DEFAULT_MODEL_DIR}); the video shows untrained noise, not a world", file=sys.stderr)
    if not (DEFAULT_MODEL_DIR / "pipeline.json").exists():
        save_tiny_pipeline(DEFAULT_MODEL_DIR)
    return DEFAULT_MODEL_DIR


def parse_command(line: str):
    """One interactive line -> ('quit', None) | ('actions', [Action, ...]): the whole keyboard grammar of
    :func:`yume_jax.camera.parse_keys` (``W*3``, ``W,A``, ``W+→``) plus arrow keys typed in the terminal;
    raises ValueError for bad input."""
    from yume_jax import camera

    s = line.strip()
    for esc, arrow in ARROWS.items():
        s = s.replace(esc, "+" + arrow + "+")
    if s.lower() in ("q", "quit", "exit"):
        return "quit", None
    steps = []
    for step in s.split(","):
        body, star, count = step.partition("*")
        body = "+".join(p.strip() for p in body.split("+") if p.strip())
        steps.append(body + star + count.strip())
    return "actions", camera.parse_keys(",".join(steps))


def build_config(a, pipe):
    from yume_jax.rollout import RolloutConfig

    d = pipe.run_defaults()

    def pick(name, default):  # the flag if given, else pipeline.json's, else ``default``; checked either way
        if getattr(a, name) is not None:
            return check_number(name, getattr(a, name), "--" + name.replace("_", "-"))
        return check_number(name, d.get(name, default), f"{Path(pipe.source) / 'pipeline.json'}: {name}")

    def flag(name):  # the flag if given (checked), else None (the pipeline's sampler defaults decide)
        v = getattr(a, name)
        return None if v is None else check_number(name, v, "--" + name.replace("_", "-"))

    sampler = pipe.sampler_config(name=a.sampler, steps=flag("steps"), cfg_scale=flag("cfg"), aam=a.aam)
    if a.prompt is not None and a.caption is not None:
        raise ValueError("give --prompt or --caption, not both (both set the scene caption)")
    caption = a.caption if a.caption is not None else a.prompt
    style = a.prompt_style or ("yume1.5" if caption else d.get("prompt_style", "yume1"))
    if caption and style != "yume1.5":
        raise ValueError("a scene caption (--prompt/--caption) needs --prompt-style yume1.5 "
                         "(the yume1 prompts have a fixed scene sentence)")
    kw = {} if a.negative_prompt is None else {"negative_prompt": a.negative_prompt}
    return RolloutConfig(height=pick("height", 96), width=pick("width", 160),
                         chunk_frames=pick("chunk_frames", 2),
                         history_mode=a.history_mode or d.get("history_mode", "renoise"),
                         max_history=pick("max_history", None),
                         prompt_style=style, caption=caption or "", seed=a.seed, sampler=sampler,
                         block_cache=a.cache, history_buckets=history_buckets(getattr(a, "history_buckets", "exact")),
                         **kw)


def write_sidecar(path: Path, data: dict) -> None:
    from yume_jax.core.checkpoint import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=1, ensure_ascii=False))


def run(a) -> int:
    check_flags(a)
    distributed = init_distributed(a)
    if distributed and a.actions is None:
        raise UsageError("a multi-process run needs --actions (the keyboard is read by no process)")
    a.sampling_mesh = mesh_from_flag(a.mesh)  # checked before anything is loaded or locked
    if distributed:
        import jax

        if jax.process_index() != 0:  # the same exploration on its share of the mesh; process 0 writes
            return _run_locked(a, None, None)
    out = Path(a.out)
    sidecar = out.with_suffix(out.suffix + ".json")
    for p in (out, sidecar):
        if p.is_symlink() or (p.exists() and not p.is_file()):
            raise UsageError(f"--out {a.out}: {p} exists and is not a regular file")
    from yume_jax.core.checkpoint import output_lock

    with output_lock(out):
        return _run_locked(a, out, sidecar)


def _run_locked(a, out: Path, sidecar: Path) -> int:
    from yume_jax import camera
    from yume_jax.convert import pipeline_dirs
    from yume_jax.pipeline import load_pipeline
    from yume_jax.rollout import Session

    from yume_jax.pipeline import CompileCounter, enable_compile_cache

    enable_compile_cache(a.compile_cache)
    a.compiles0 = CompileCounter.snapshot()  # the sidecar's "compiles": every XLA program of the run
    scripted = None
    if a.actions is not None:
        try:
            scripted = camera.parse_keys(a.actions)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if not scripted:
            raise UsageError("--actions is empty")
    image = read_image(a.image) if a.image else None
    video = read_video(a.video) if a.video else None
    ckpt = Path(a.checkpoint) if a.checkpoint else default_pipeline_dir()
    try:
        pipe_dir = pipeline_dirs.resolve(ckpt, encoders=a.encoders, progress=True)
        read_pipeline_json(pipe_dir)
        pipe = load_pipeline(pipe_dir, mesh=a.sampling_mesh, seq_parallel=a.seq_parallel)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    if not isinstance(pipe.defaults, dict):
        raise UsageError(f"{pipe.source}/pipeline.json: expected a JSON object, got {type(pipe.defaults).__name__}")
    if image is None and video is None and pipe.dit.config.image_dim is not None:
        from yume_jax.data import world

        print(f"notice: no --image or --video: starting from a sandbox-world view (seed {a.seed})", file=sys.stderr)
        image = world.make_clip(a.seed, num_frames=2).frames[0]
    try:
        config = build_config(a, pipe)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if config.block_cache and pipe.cfg_parallel and config.sampler.cfg_scale != 1.0:
        raise UsageError(f"--cache does not combine with CFG-parallel sampling (--mesh {a.mesh}): drop cfg=2 "
                         "from --mesh or give --cache 0")
    try:
        session = Session(pipe, config, image=image, video=video)
    except ValueError as e:
        raise UsageError(str(e)) from None
    from infer.mp4 import GrowingMP4

    if out is None:  # a secondary process of a multi-host run: the same programs and chunks, nothing written
        for _ in session.explore(scripted):
            pass
        return 0
    return _explore(a, session, config, ckpt, out, sidecar, scripted, GrowingMP4)


def _explore(a, session, config, ckpt, out, sidecar, scripted, GrowingMP4) -> int:
    """The run loop, pipelined (:meth:`yume_jax.rollout.Session.submit`): chunk i+1 is dispatched before chunk
    i's frames are fetched, so the device samples i+1 while the host converts and writes i; in interactive
    mode the next action is only known after the user has seen chunk i, so a chunk is finished before the
    prompt (a line of several steps is pipelined). Progress is a tqdm bar over chunks, updated on the host
    as each chunk is written: no host callback inside the jitted sampler, whose program therefore goes to
    the persistent compilation cache. The sidecar lists the chunks written; an interrupt lets the chunk being
    finished complete and drops one dispatched but not yet fetched."""
    from tqdm import tqdm

    from yume_jax.pipeline import CompileCounter

    compiles0 = getattr(a, "compiles0", None) or CompileCounter.snapshot()
    writer = GrowingMP4(out, config.width, config.height, fps=config.fps)
    written: list[dict] = []
    meta = dict(command=["python", "-m", "infer.explore", *sys.argv[1:]], checkpoint=str(ckpt),
                image=a.image, video=a.video, config=config.to_dict(), chunks=written,
                initial_frames=int(len(session.initial_frames)), frames=0, finished=False)
    interrupted = {"flag": False, "busy": False, "signum": signal.SIGINT}

    def on_sigint(signum, frame):
        # never raise inside a running XLA computation: finish the chunk being fetched, then stop;
        # a second Ctrl-C stops at once (the MP4 on disk, replaced atomically after each chunk, stays playable)
        interrupted["flag"] = True
        interrupted["signum"] = signum
        if not interrupted["busy"]:  # waiting at the prompt: nothing is running, stop now
            raise cli.Interrupted(signum, f"interrupted: keeping the {len(written)} finished chunks in {out}")
        signal.signal(signum, signal.SIG_DFL)
        print("\ninterrupt: finishing the current chunk, then stopping (Ctrl-C again to stop now)",
              file=sys.stderr)

    bar = tqdm(total=len(scripted) if scripted is not None else None, desc="explore", unit="chunk",
               file=sys.stderr, leave=False, disable=None)

    def finish(chunk) -> None:
        """Fetch ``chunk``'s frames (waits for the device; NonFiniteError for NaN/inf), append them to the MP4
        and its record to the sidecar."""
        frames = chunk.frames()
        rec = chunk.record
        writer.write(frames)
        cp = rec["critical_path_s"]
        rec["wall_s"] = cp["interval"] if cp["interval"] is not None else round(time.perf_counter() - t_start, 3)
        written.append(rec)
        meta["frames"] = writer.frames
        meta["compiles"] = {k: round(v - compiles0[k], 3) for k, v in CompileCounter.snapshot().items()}
        write_sidecar(sidecar, meta)
        bar.update(1)
        bar.set_postfix_str(f"{rec['wall_s']:.2f} s/chunk")
        bar.write(f"chunk {rec['chunk']}: {rec['action']} -> {rec['video_frames']} frames "
                  f"(dispatch {cp['dispatch']:.2f}s, wait {cp['wait']:.2f}s, {rec['wall_s']:.2f}s since the "
                  f"previous chunk); {out} has {writer.frames} frames", file=sys.stderr)

    old = {s: signal.signal(s, on_sigint) for s in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    t_start = time.perf_counter()
    inflight = None
    try:
        if len(session.initial_frames):
            writer.write(session.initial_frames)
        meta["frames"] = writer.frames
        write_sidecar(sidecar, meta)
        actions = iter(scripted) if scripted is not None else None
        interactive = scripted is None
        if interactive:
            print("explore: W/A/S/D move, arrows or j/l/i/k turn and tilt, combine with + (W+→), several steps W,A or W*3; q quits",
                  file=sys.stderr)
        pending = []
        while not interrupted["flag"]:
            if interactive and pending:
                action = pending.pop(0)
            elif interactive:
                if inflight is not None:  # the user steers from what they saw: show the chunk first
                    interrupted["busy"] = True
                    chunk, inflight = inflight, None
                    finish(chunk)
                    interrupted["busy"] = False
                    if interrupted["flag"]:
                        break
                print("> ", end="", file=sys.stderr, flush=True)
                try:
                    line = sys.stdin.readline()
                except (KeyboardInterrupt, cli.Interrupted):
                    break
                if interrupted["flag"] or not line:
                    break
                if not line.strip():
                    continue
                try:
                    kind, acts = parse_command(line)
                except ValueError as e:
                    print(f"error: {e}", file=sys.stderr)
                    continue
                if kind == "quit":
                    break
                action, pending = acts[0], acts[1:]
            else:
                action = next(actions, None)
                if action is None:
                    break
            interrupted["busy"] = True
            nxt = session.submit(action)  # queued on the device behind the chunk in flight
            chunk, inflight = inflight, nxt
            if chunk is not None:
                finish(chunk)
            interrupted["busy"] = False
        if inflight is not None and not interrupted["flag"]:
            interrupted["busy"] = True
            chunk, inflight = inflight, None
            finish(chunk)
            interrupted["busy"] = False
        if interrupted["flag"]:
            code = cli.interrupted_code(interrupted["signum"])
            print(f"interrupted: keeping the {len(written)} finished chunks in {out}", file=sys.stderr)
        else:
            meta["finished"] = True
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        bar.close()
        writer.close()
        meta["frames"] = writer.frames
        write_sidecar(sidecar, meta)
    print(f"wrote {out} ({writer.frames} frames) and {sidecar}")
    return code


def main(argv=None) -> int:
    return cli.run(lambda args: run(parse_args(args)), argv, prog="python -m infer.explore")


if __name__ == "__main__":
    sys.exit(main())
