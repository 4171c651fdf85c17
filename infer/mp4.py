"""A growing, always-playable MP4 for the explorer.

Fragmented MP4 (``empty_moov``, a fragment per keyframe) with x264 in zero-latency mode (no
look-ahead, no B-frames: every frame becomes a packet at once) and a keyframe at the start of each
chunk. After each chunk the file on disk is a valid, playable video of everything before the
current fragment's last frame; :meth:`GrowingMP4.close` (also on Ctrl-C / q) writes the rest. A
process killed with SIGKILL leaves a playable file of its complete fragments.
"""
from __future__ import annotations

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
        self.frames = 0
        self.closed = False
        self._c = av.open(str(self.path), "w", format="mp4",
                          options={"movflags": "frag_keyframe+empty_moov+default_base_moof"})
        self._s = self._c.add_stream("libx264", rate=fps, options={
            "crf": str(crf), "preset": "veryfast", "tune": "zerolatency", "threads": "1"})
        self._s.width, self._s.height, self._s.pix_fmt = width, height, "yuv420p"
        self._s.codec_context.time_base = Fraction(1, fps)

    def write(self, frames: np.ndarray) -> None:
        """Append uint8 (T, H, W, 3) frames; the first one is a keyframe (a new fragment)."""
        for i, f in enumerate(np.asarray(frames, np.uint8)):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            vf.pts = self.frames
            if i == 0:
                vf.pict_type = av.video.frame.PictureType.I
            for pkt in self._s.encode(vf):
                self._c.mux(pkt)
            self.frames += 1

    def close(self) -> None:
        if self.closed:
            return
        for pkt in self._s.encode(None):
            self._c.mux(pkt)
        self._c.close()
        self.closed = True
