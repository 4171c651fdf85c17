"""A growing, always-playable MP4 for the explorer.

x264 in zero-latency mode (no look-ahead, no B-frames: every frame becomes a packet at once, checked) with a
keyframe at the start of each chunk. The encoded packets are kept (compressed, in memory) and after every
:meth:`GrowingMP4.write` they are muxed (copied, not re-encoded) into a complete MP4 at a temporary name next
to ``path``, which then replaces ``path`` atomically (``os.replace``). So after each chunk the file on disk is
a finished, playable video of every frame written so far; a process killed at any moment (SIGKILL, OOM)
leaves the last complete version (its temporary file is removed by the next writer of ``path``); and a file
already at ``path`` survives until the new video has its first chunk. (A fragmented MP4 written in place keeps its last fragment in the muxer and its I/O buffer, so it is
not on disk after a chunk.)
"""
from __future__ import annotations

import glob
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


class GrowingMP4:
    def __init__(self, path, width: int, height: int, fps: int = 16, crf: int = 18):
        if width % 2 or height % 2:
            raise ValueError(f"width and height must be even for yuv420p, got {width}x{height}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.partial-{os.getpid()}.mp4")
        self._clean_leftovers()
        self.width, self.height, self.fps = width, height, fps
        self.frames = 0
        self.closed = False
        self._packets: list[tuple[bytes, int, int, bool]] = []  # (data, pts, dts, keyframe)
        self._enc = av.CodecContext.create("libx264", "w")
        self._enc.width, self._enc.height, self._enc.pix_fmt = width, height, "yuv420p"
        self._enc.time_base = Fraction(1, fps)
        self._enc.framerate = Fraction(fps)
        self._enc.options = {"crf": str(crf), "preset": "veryfast", "tune": "zerolatency", "threads": "1"}
        self._enc.open()

    def _clean_leftovers(self) -> None:
        """Remove the temporary files of killed writers of this video (their process is gone)."""
        from yume_jax.core.checkpoint import pid_alive

        for p in self.path.parent.glob(f".{glob.escape(self.path.name)}.partial-*.mp4"):
            pid = p.name[len(self.path.name) + len(".partial-") + 1:-len(".mp4")]
            if pid.isdigit() and not pid_alive(int(pid)):
                p.unlink(missing_ok=True)

    def _keep(self, packets) -> None:
        for p in packets:
            self._packets.append((bytes(p), int(p.pts), int(p.dts), bool(p.is_keyframe)))

    def write(self, frames: np.ndarray) -> None:
        """Append uint8 (T, H, W, 3) frames (the first one a keyframe), then publish the whole video at
        ``path``: on return the file holds every frame written so far."""
        if self.closed:
            raise ValueError("write after close")
        for i, f in enumerate(np.asarray(frames, np.uint8)):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24").reformat(format="yuv420p")
            vf.pts, vf.time_base = self.frames, self._enc.time_base
            if i == 0:
                vf.pict_type = av.video.frame.PictureType.I
            self._keep(self._enc.encode(vf))
            self.frames += 1
        if len(self._packets) != self.frames:
            raise RuntimeError(f"the encoder holds back frames ({len(self._packets)} packets for {self.frames} "
                               "frames): zero-latency x264 is required")
        self._publish()

    def _publish(self) -> None:
        if not self._packets:
            return
        try:
            with av.open(str(self.tmp), "w", format="mp4") as c:
                s = c.add_stream("h264", rate=self.fps)
                s.width, s.height, s.pix_fmt = self.width, self.height, "yuv420p"
                s.time_base = self._enc.time_base
                for data, pts, dts, key in self._packets:
                    q = av.Packet(data)
                    q.pts, q.dts, q.time_base, q.is_keyframe = pts, dts, self._enc.time_base, key
                    q.stream = s
                    c.mux(q)
            os.replace(self.tmp, self.path)
        except BaseException:  # disk full, interrupted: the previous complete video stays, no temporary file
            self.tmp.unlink(missing_ok=True)
            raise

    def close(self) -> None:
        if self.closed:
            return
        n = len(self._packets)
        self._keep(self._enc.encode(None))
        if len(self._packets) != n:
            self._publish()
        self.closed = True
