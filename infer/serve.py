"""``python -m infer.serve``: explore a generated world in the browser, steered with the keyboard.

    python -m infer.serve                         # the explorer's default model, http://127.0.0.1:8000
    python -m infer.serve --checkpoint DIR --port 8080 --compile-cache ~/.cache/yume-jax/xla

One page (infer/serve.html, inline JS, no build step): start from an uploaded image or a sandbox-world view,
then the world streams as it is generated (JPEG frames over a WebSocket, drawn on a canvas at the video's
frame rate); keys held while a chunk is generated (W/A/S/D, arrows) become the next chunk's action (the
grammar of :mod:`yume_jax.camera.keyboard`; no key: ``still``); a status line shows seconds per chunk,
frames per second, the history length and whether the server is still compiling; the MP4 and its JSON
sidecar (infer/mp4.py, the explorer's sidecar fields) download at any time.

Several tabs at once: each tab is its own :class:`yume_jax.rollout.Session` on ONE shared
:class:`yume_jax.pipeline.Pipeline` (loaded once; compiled programs shared), and the device is taken in
turn through one lock (each chunk's dispatch holds it; the pipeline's own lock serialises sampling). A
closed tab (its WebSocket closed) frees its session and files. Sessions are pipelined
(:meth:`Session.submit`): chunk i+1 is dispatched before chunk i's frames are fetched and sent. The
history is fed in bounded shapes (``--history-buckets``, yume_jax/models/memory.py), so after the first
chunks nothing compiles however long a tab explores.

HTTP API (JSON errors ``{"error": ...}`` with 400/404/503; no request can stop the server):
``POST /api/sessions`` body = image bytes (any format PIL reads) or JSON ``{"start": "sandbox", "seed": N}``
-> ``{"id", "width", "height", "fps"}``; ``WS /ws/{id}`` (client sends ``{"keys": [...]}`` or
``{"action": "W+A"}``; server sends JSON ``status``/``chunk``/``error`` messages and binary JPEG frames);
``GET /api/sessions/{id}/video.mp4`` and ``.../video.json``; ``GET /api/status``.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from yume_jax.core import cli

PAGE = Path(__file__).with_name("serve.html")
KEY_TOKENS = {"w": "W", "a": "A", "s": "S", "d": "D", "arrowup": "↑", "arrowdown": "↓", "arrowleft": "←",
              "arrowright": "→", "↑": "↑", "↓": "↓", "←": "←", "→": "→"}
IDLE_S = 300  # a created session never opened over a WebSocket is freed after this long
OPPOSITE = (("W", "S"), ("A", "D"), ("↑", "↓"), ("←", "→"))


def keys_to_action(keys) -> str:
    """Held keys (browser ``KeyboardEvent.key`` names or grammar tokens) -> one step of the keyboard grammar;
    opposite keys held together cancel; nothing held: ``still``. Unknown keys raise ValueError."""
    if not isinstance(keys, (list, tuple, set)) or not all(isinstance(k, str) for k in keys):
        raise ValueError(f"keys must be a list of key names, got {keys!r}")
    toks = set()
    for k in keys:
        t = KEY_TOKENS.get(k.strip().lower()) or KEY_TOKENS.get(k.strip())
        if t is None:
            raise ValueError(f"unknown key {k!r} (W, A, S, D and the arrow keys steer)")
        toks.add(t)
    for a, b in OPPOSITE:
        if a in toks and b in toks:
            toks -= {a, b}
    order = ["W", "S", "A", "D", "↑", "↓", "←", "→"]
    return "+".join(t for t in order if t in toks) or "still"


def jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class BadRequest(ValueError):
    """A request the client can fix: HTTP 400 (or a WebSocket error message)."""


class Tab:
    """One browser tab: its session, held keys, MP4 writer and sidecar."""

    def __init__(self, server: "Server", session, start: str):
        from infer.mp4 import GrowingMP4

        self.id = uuid.uuid4().hex[:12]
        self.session = session
        self.dir = Path(tempfile.mkdtemp(prefix=f"yume-serve-{self.id}-"))
        c = session.config
        self.mp4 = self.dir / "video.mp4"
        self.writer = GrowingMP4(self.mp4, c.width, c.height, fps=c.fps)
        self.meta = dict(command=["python", "-m", "infer.serve", *server.argv], checkpoint=server.checkpoint,
                         start=start, config=c.to_dict(), chunks=session.records,
                         initial_frames=int(len(session.initial_frames)), frames=0, finished=False)
        if len(session.initial_frames):
            self.writer.write(session.initial_frames)
        self.down: set[str] = set()
        self.seen: set[str] = set()
        self.action: str | None = None  # an explicit action (``{"action": ...}``) for the next chunk
        self.connected = False
        self.created = time.time()
        self.write_sidecar()

    def take_action(self) -> str:
        """The next chunk's action: an explicit one if sent, else the keys held since the last chunk."""
        if self.action is not None:
            a, self.action = self.action, None
            return a
        a = keys_to_action(self.seen | self.down)
        self.seen = set(self.down)
        return a

    def write_sidecar(self):
        self.meta["frames"] = self.writer.frames
        tmp = self.dir / "video.json.tmp"
        tmp.write_text(json.dumps(self.meta, indent=1, ensure_ascii=False))
        tmp.replace(self.dir / "video.json")

    def close(self):
        try:
            self.writer.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


class Server:
    """The shared pipeline, the run config and the open tabs."""

    def __init__(self, pipe, config, *, checkpoint: str = "", argv=(), max_sessions: int = 4):
        from yume_jax.pipeline import CompileCounter

        self.pipe, self.config, self.checkpoint, self.argv = pipe, config, checkpoint, list(argv)
        self.max_sessions = max_sessions
        self.tabs: dict[str, Tab] = {}
        self.gpu = threading.Lock()  # the device queue: one chunk dispatch (or session start) at a time
        self.lock = threading.Lock()
        self.compiles = CompileCounter
        CompileCounter.install()

    def status(self) -> dict:
        c = self.compiles.snapshot()
        return dict(sessions=len(self.tabs), connected=sum(t.connected for t in self.tabs.values()),
                    checkpoint=self.checkpoint, sampler_compiles=self.pipe.compiles, xla_programs=c["requests"],
                    xla_compiled=c["compiled"], xla_cache_hits=c["cache_hits"])

    def start(self, body: bytes, content_type: str) -> Tab:
        """A new tab from a request body: image bytes, or JSON {"start": "sandbox", "seed": N}."""
        from yume_jax.rollout import Session

        image, start = None, None
        if content_type.startswith("application/json") or body[:1] == b"{":
            try:
                req = json.loads(body or b"{}")
            except ValueError as e:
                raise BadRequest(f"bad JSON body: {e}") from None
            if not isinstance(req, dict) or req.get("start") != "sandbox":
                raise BadRequest('JSON body must be {"start": "sandbox", "seed": N} (or POST image bytes)')
            seed = cli.integer(req.get("seed", 0), "seed", low=0, high=2**31 - 1)
            from yume_jax.data import world

            image, start = world.make_clip(seed, num_frames=2).frames[0], f"sandbox:{seed}"
        else:
            if not body:
                raise BadRequest("empty body: POST an image (PNG, JPEG, ...) or JSON {\"start\": \"sandbox\"}")
            try:
                from PIL import Image

                with Image.open(io.BytesIO(body)) as im:
                    image = np.asarray(im.convert("RGB"))
            except Exception as e:  # PIL raises several types for corrupt files
                raise BadRequest(f"cannot read the uploaded image: {type(e).__name__}: {e}") from None
            if min(image.shape[:2]) < 8:
                raise BadRequest(f"image too small: {image.shape[1]}x{image.shape[0]}")
            start = "upload"
        with self.lock:  # sessions created but never opened (no WebSocket within IDLE_S) are freed first
            stale = [t for t in self.tabs.values() if not t.connected and time.time() - t.created > IDLE_S]
        for t in stale:
            self.free(t.id)
        with self.lock:
            if len(self.tabs) >= self.max_sessions:
                raise Busy(f"{len(self.tabs)} sessions open (--max-sessions {self.max_sessions}): close a tab")
        with self.gpu:
            try:
                session = Session(self.pipe, self.config, image=image)
            except ValueError as e:
                raise BadRequest(str(e)) from None
        tab = Tab(self, session, start)
        with self.lock:
            self.tabs[tab.id] = tab
        return tab

    def free(self, tid: str) -> None:
        with self.lock:
            tab = self.tabs.pop(tid, None)
        if tab is not None:
            tab.close()

    def submit(self, tab: Tab, action: str):
        with self.gpu:
            before = self.compiles.snapshot()["compiled"]
            chunk = tab.session.submit(action)
            chunk.record["compiled"] = self.compiles.snapshot()["compiled"] - before
        return chunk


class Busy(RuntimeError):
    """Too many sessions: HTTP 503."""


def build_app(server: Server):
    from starlette.applications import Starlette
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    def err(status: int, msg: str):
        return JSONResponse({"error": msg}, status_code=status)

    async def page(request):
        return HTMLResponse(PAGE.read_text())

    async def status(request):
        return JSONResponse(server.status())

    async def create(request):
        body = await request.body()
        try:
            tab = await asyncio.to_thread(server.start, body, request.headers.get("content-type", ""))
        except (BadRequest, cli.UserError) as e:
            return err(400, str(e))
        except Busy as e:
            return err(503, str(e))
        c = server.config
        return JSONResponse(dict(id=tab.id, width=c.width, height=c.height, fps=c.fps,
                                 initial_frames=tab.meta["initial_frames"]))

    async def download(request):
        tab = server.tabs.get(request.path_params["sid"])
        if tab is None:
            return err(404, f"unknown session {request.path_params['sid']!r} (closed, or never created)")
        kind = request.path_params["kind"]
        if kind == "mp4":
            return FileResponse(tab.mp4, media_type="video/mp4", filename=f"yume-{tab.id}.mp4")
        return FileResponse(tab.dir / "video.json", media_type="application/json", filename=f"yume-{tab.id}.json")

    async def socket(ws: WebSocket):
        await ws.accept()
        tab = server.tabs.get(ws.path_params["sid"])
        if tab is None or tab.connected:
            why = "unknown session" if tab is None else "session already open in another tab"
            await ws.send_json({"type": "error", "error": f"{why} {ws.path_params['sid']!r}"})
            await ws.close(code=4404)
            return
        tab.connected = True
        c = server.config
        for f in tab.session.initial_frames:  # the start view (image start: the pseudo-history's frames)
            await ws.send_bytes(await asyncio.to_thread(jpeg, f))
            break

        async def receive():
            while True:
                msg = await ws.receive_text()
                try:
                    m = json.loads(msg)
                    if not isinstance(m, dict):
                        raise ValueError("a message is a JSON object")
                    if "keys" in m:
                        keys_to_action(m["keys"])  # validates
                        tab.down = {KEY_TOKENS.get(k.lower()) or KEY_TOKENS[k] for k in m["keys"]}
                        tab.seen |= tab.down
                    elif "action" in m:
                        from yume_jax import camera

                        camera.parse_step(str(m["action"]))
                        tab.action = str(m["action"])
                    else:
                        raise ValueError('send {"keys": [...]} or {"action": "W+A"}')
                except ValueError as e:
                    await ws.send_json({"type": "error", "error": str(e)})

        async def generate():
            pending = None
            while True:
                action = tab.take_action()
                nxt = await asyncio.to_thread(server.submit, tab, action)
                if pending is not None:
                    await deliver(pending)
                pending = nxt

        async def deliver(chunk):
            frames = await asyncio.to_thread(chunk.frames)
            rec = chunk.record
            await ws.send_json({"type": "chunk", "chunk": rec["chunk"], "action": rec["action"],
                                "frames": int(len(frames))})
            for f in frames:
                await ws.send_bytes(await asyncio.to_thread(jpeg, f))
            await asyncio.to_thread(tab.writer.write, frames)
            await asyncio.to_thread(tab.write_sidecar)
            m = tab.session.metrics()
            await ws.send_json({"type": "status", **m, "video_frames": tab.writer.frames,
                                "compiling": bool(rec.get("compiled")), "xla_compiled": rec.get("compiled", 0),
                                "critical_path_s": rec.get("critical_path_s"), "width": c.width, "height": c.height})

        tasks = [asyncio.create_task(receive()), asyncio.create_task(generate())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                e = t.exception()
                if e is not None and not isinstance(e, (WebSocketDisconnect, RuntimeError)):
                    print(f"serve: session {tab.id} failed: {type(e).__name__}: {e}", file=sys.stderr)
                    try:
                        await ws.send_json({"type": "error", "error": f"{type(e).__name__}: {e}"})
                        await ws.close(code=1011)
                    except Exception:
                        pass
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.to_thread(server.free, tab.id)

    routes = [Route("/", page), Route("/api/status", status), Route("/api/sessions", create, methods=["POST"]),
              Route("/api/sessions/{sid}/video.{kind:str}", download), WebSocketRoute("/ws/{sid}", socket)]

    async def not_found(request, exc):
        return err(getattr(exc, "status_code", 404), getattr(exc, "detail", "not found"))

    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})


def parse_args(argv):
    from infer.explore import add_compile_cache_flag, add_history_buckets_flag, add_mesh_flag

    ap = argparse.ArgumentParser(prog="python -m infer.serve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="pipeline directory, official release directory or training workdir; "
                                         "default: the explorer's default model")
    ap.add_argument("--encoders", help="pipeline directory whose VAE/encoders to use with a workdir")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--steps", type=int, default=None, help="sampling steps per chunk")
    ap.add_argument("--sampler", default=None, help="default: pipeline.json's, else euler")
    ap.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (1 = off)")
    ap.add_argument("--history-mode", choices=["renoise", "clean"], default=None)
    ap.add_argument("--chunk-frames", type=int, default=None, help="new latent frames per chunk")
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--max-history", type=int, default=22,
                    help="latent frames of history kept (anchor + newest; default 22)")
    add_history_buckets_flag(ap)
    ap.add_argument("--max-sessions", type=int, default=4, help="open tabs at once")
    ap.add_argument("--seed", type=int, default=0)
    add_compile_cache_flag(ap)
    add_mesh_flag(ap)
    return ap.parse_args(argv)


def run_config(a, pipe):
    """The explorer's config (infer.explore.build_config) with the server's bounded history."""
    from infer.explore import build_config

    ns = argparse.Namespace(steps=a.steps, cfg=a.cfg, sampler=a.sampler, aam=False, prompt=None, caption=None,
                            prompt_style=None, negative_prompt=None, height=a.height, width=a.width,
                            chunk_frames=a.chunk_frames, history_mode=a.history_mode, max_history=a.max_history,
                            seed=a.seed, cache=0, history_buckets=a.history_buckets)
    try:
        return build_config(ns, pipe)
    except ValueError as e:
        raise cli.UserError(str(e)) from None


def _main(argv) -> int:
    a = parse_args(argv)
    cli.integer(a.port, "--port", low=0, high=65535)
    cli.integer(a.max_sessions, "--max-sessions", low=1)
    from infer.explore import default_pipeline_dir, mesh_from_flag
    from yume_jax.convert import pipeline_dirs
    from yume_jax.pipeline import enable_compile_cache, load_pipeline

    cache = enable_compile_cache(a.compile_cache)
    ckpt = Path(a.checkpoint) if a.checkpoint else default_pipeline_dir()
    try:
        pipe = load_pipeline(pipeline_dirs.resolve(ckpt, encoders=a.encoders, progress=True),
                             mesh=mesh_from_flag(a.mesh), seq_parallel=a.seq_parallel)
    except (FileNotFoundError, ValueError) as e:
        raise cli.UserError(str(e)) from None
    config = run_config(a, pipe)
    server = Server(pipe, config, checkpoint=str(ckpt), argv=argv or [], max_sessions=a.max_sessions)
    app = build_app(server)
    import uvicorn

    ucfg = uvicorn.Config(app, host=a.host, port=a.port, log_level="warning", ws="websockets-sansio")
    userver = uvicorn.Server(ucfg)
    print(f"serving {ckpt} at {config.width}x{config.height} on http://{a.host}:{a.port} "
          f"(compile cache: {cache or 'off'})", file=sys.stderr, flush=True)
    userver.run()
    return 0


def main(argv=None) -> int:
    return cli.run(_main, argv, prog="python -m infer.serve")


if __name__ == "__main__":
    sys.exit(main())
