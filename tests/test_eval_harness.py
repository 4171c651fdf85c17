"""``python -m infer.evaluate`` end to end on a tiny random pipeline: report files exist, numbers are in
range, the same seed gives the same report; --compare puts several configurations in one table; image-start
mode; bad input exits 2 with one line."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from infer.evaluate import main
from yume_jax.testing import save_tiny_pipeline

ARGS = ["--cases", "key-W", "--steps", "1", "--cfg", "1"]


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipe") / "tiny"
    save_tiny_pipeline(d, defaults={"height": 48, "width": 80, "chunk_frames": 2, "steps": 1, "cfg": 1.0})
    return d


def _stable(report: dict) -> dict:
    """The report without wall-clock numbers."""
    def clean(o):
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items() if k not in ("seconds_per_chunk", "versions", "files")}
        if isinstance(o, list):
            return [clean(v) for v in o]
        return o
    return clean(report)


@pytest.mark.slow
def test_report_end_to_end_and_reproducible(pipe_dir, tmp_path):
    """Two runs, one process, one persistent compilation cache: the same report, and the second run compiles
    nothing (its pipeline shares the first's sampler programs, the rest are read back from the cache)."""
    from yume_jax.pipeline import CompileCounter

    reports, spans = [], []
    for i in range(2):
        out = tmp_path / f"r{i}"
        before = CompileCounter.snapshot()
        assert main(["--checkpoint", str(pipe_dir), "--out", str(out), *ARGS, "--compare", "name=tiny", "truth",
                     "--compile-cache", str(tmp_path / "xla")]) == 0
        after = CompileCounter.snapshot()
        spans.append({k: after[k] - before[k] for k in ("requests", "compiled")})
        for f in ("report.json", "summary.md", "psnr_drift.png", "if_by_action.png", "contact_0_tiny.png",
                  "contact_1_truth.png"):
            assert (out / f).is_file(), f
        reports.append(json.loads((out / "report.json").read_text()))
    assert _stable(reports[0]) == _stable(reports[1])
    assert spans[1]["compiled"] == 0 and spans[1]["requests"] < spans[0]["requests"], spans
    rep = reports[0]
    assert rep["benchmark"]["name"] == "sandbox-bench" and rep["versions"]["opencv"]
    tiny, truth = rep["runs"]
    assert [c["case"]["name"] for c in tiny["cases"]] == ["key-W"]
    case = tiny["cases"][0]
    assert len(case["chunks"]) == 4 and all(c["commanded"] == "W ·" for c in case["chunks"])
    for r in (tiny, truth):
        s = r["summary"]
        for k in ("if_keys", "if_mouse", "if_both"):
            assert 0.0 <= s[k] <= 1.0
        assert all(0 < p <= 60 for p in s["psnr_by_chunk"]) and -1 <= s["ssim"] <= 1
    assert tiny["summary"]["seconds_per_chunk"] > 0 and tiny["pipeline"]["rollout"]["sampler"]["steps"] == 1
    assert truth["summary"]["if_both"] == 1.0 and truth["summary"]["psnr"] == 60.0
    assert tiny["summary"]["psnr"] < 30  # an untrained model is far from the ground truth
    md = (tmp_path / "r0" / "summary.md").read_text()
    assert "| tiny |" in md and "| truth |" in md


def test_image_start_mode(pipe_dir, tmp_path):
    img = tmp_path / "start.png"
    Image.fromarray((np.random.default_rng(0).random((60, 90, 3)) * 255).astype(np.uint8)).save(img)
    out = tmp_path / "img"
    assert main(["--checkpoint", str(pipe_dir), "--image", str(img), "--actions", "→*2", "--steps", "1",
                 "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["mode"] == "images" and len(rep["runs"][0]["cases"][0]["chunks"]) == 2
    assert "fidelity" not in rep["runs"][0]["cases"][0]


@pytest.mark.parametrize("args,match", [
    (["--cases", "nope"], "unknown case"),
    (["--compare", "steps=two"], "bad run spec"),
    (["--compare", "bogus=1"], "bad run spec"),
    (["--checkpoint", "/no/such/dir"], "checkpoint not found"),
    (["--image", "/no/such.png", "--actions", "W"], "image not found"),
    (["--image", "x.png"], "needs --actions"),
    (["--actions", "W"], "image-start mode"),
    (["--compare", "truth", "truth"], "names must differ"),
])
def test_bad_input_exits_2(args, match, tmp_path, capsys):
    assert main([*args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err


def test_help_documents_the_benchmark(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "sandbox-bench v1" in out and "reverse-W-S" in out and "--compare" in out


def test_run_settings_default_to_the_pipeline_json(pipe_dir, tmp_path):
    """A run spec leaves size, chunk and history mode to pipeline.json (a clean-history model is evaluated as it
    was trained) unless it names them."""
    from yume_jax.eval import harness
    from yume_jax.pipeline import load_pipeline

    import shutil

    d = tmp_path / "p"
    shutil.copytree(pipe_dir, d)
    (d / "pipeline.json").write_text(json.dumps({"height": 48, "width": 80, "chunk_frames": 1, "steps": 1,
                                                 "cfg": 1.0, "history_mode": "clean", "max_history": 5}))
    pipe = load_pipeline(d)
    c = harness.Pipeline.rollout_config(harness.RunSpec(name="a"), pipe)
    assert (c.height, c.width, c.chunk_frames, c.history_mode, c.max_history) == (48, 80, 1, "clean", 5)
    c = harness.Pipeline.rollout_config(harness.RunSpec(name="b", history_mode="renoise", width=96), pipe)
    assert (c.history_mode, c.width, c.height) == ("renoise", 96, 48)
