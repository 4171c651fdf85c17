"""The explorer's MP4 (infer/mp4.py): on disk and playable after every chunk, even after SIGKILL; an existing
file survives until the new video has its first chunk."""
import os
import signal
import subprocess
import sys
import textwrap

import av
import numpy as np

from infer.mp4 import GrowingMP4


def _decode(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _chunk(k: int) -> np.ndarray:
    return np.full((4, 32, 48, 3), 40 * k + 20, np.uint8)


def test_file_holds_every_finished_chunk_and_survives_sigkill(tmp_path):
    out = tmp_path / "v.mp4"
    code = textwrap.dedent(f"""
        import sys, time
        import numpy as np
        from infer.mp4 import GrowingMP4
        w = GrowingMP4({str(out)!r}, 48, 32)
        for k in range(3):
            sys.stdin.readline()  # the test's go-ahead: it inspects the file between chunks
            w.write(np.full((4, 32, 48, 3), 40 * k + 20, np.uint8))
            print("chunk", k, flush=True)
        time.sleep(600)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        for k in range(3):
            p.stdin.write("go\n")
            p.stdin.flush()
            assert p.stdout.readline().strip() == f"chunk {k}"
            got = _decode(out)  # playable now, with every finished frame
            assert len(got) == 4 * (k + 1)
            assert abs(float(got[-1].mean()) - (40 * k + 20)) < 3
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert len(_decode(out)) == 12


def test_previous_file_survives_until_the_first_chunk(tmp_path):
    out = tmp_path / "v.mp4"
    w = GrowingMP4(out, 48, 32)
    w.write(np.concatenate([_chunk(0), _chunk(1)]))
    w.close()
    before = out.read_bytes()
    w2 = GrowingMP4(out, 48, 32)
    assert out.read_bytes() == before  # opening does not truncate
    w2.write(_chunk(2))
    assert len(_decode(out)) == 4 and out.read_bytes() != before
    w2.close()
    assert len(_decode(out)) == 4
