"""The shipped-pipeline contract (issue 15): ``train.default_model ship`` writes bf16 weights and SHA256SUMS,
``load_pipeline`` verifies them before loading (a modified or missing file is one line naming it), and the
explorer's default is the embedded model when the checkout has one."""
from __future__ import annotations

import json
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from yume_jax.core.checkpoint import CHECKSUMS, open_checkpoint, verify_checksums, write_checksums
from yume_jax.core.tensors import CheckpointError


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    from train.default_model import ship
    from yume_jax.testing import save_tiny_pipeline

    root = tmp_path_factory.mktemp("ship")
    src = save_tiny_pipeline(root / "src", defaults={"steps": 2, "cfg": 1.0})
    return ship(src, root / "shipped")


def test_ship_writes_bf16_weights_and_checksums_of_every_file(shipped):
    listed = [ln.split("  ", 1)[1] for ln in (shipped / CHECKSUMS).read_text().splitlines()]
    files = sorted(p.relative_to(shipped).as_posix() for p in shipped.rglob("*") if p.is_file() and p.name != CHECKSUMS)
    assert listed == files and "dit/params.safetensors" in listed and "pipeline.json" in listed
    assert verify_checksums(shipped) == len(files)
    ck = open_checkpoint(shipped / "dit", "dit")
    assert all(ck.read(k).dtype == ml_dtypes.bfloat16 for k in ck.keys())


def test_load_pipeline_refuses_a_modified_or_missing_file(shipped, tmp_path):
    import shutil

    from yume_jax.pipeline import load_pipeline

    bad = tmp_path / "bad"
    shutil.copytree(shipped, bad)
    j = json.loads((bad / "pipeline.json").read_text())
    (bad / "pipeline.json").write_text(json.dumps({**j, "steps": 3}))
    with pytest.raises(CheckpointError, match="pipeline.json does not match its checksum"):
        load_pipeline(bad)
    write_checksums(bad)
    assert load_pipeline(bad).defaults["steps"] == 3  # re-signed: loads
    (bad / "vae" / "params.safetensors").unlink()
    with pytest.raises(CheckpointError, match="vae/params.safetensors is listed but missing"):
        verify_checksums(bad)
    (bad / CHECKSUMS).write_text("nothex  ../etc/passwd\n")
    with pytest.raises(CheckpointError, match="line 1"):
        verify_checksums(bad)


def test_explorer_uses_the_embedded_model_and_names_a_corrupt_one(shipped, tmp_path, monkeypatch):
    import shutil

    import infer.explore as explore

    monkeypatch.setattr(explore, "EMBEDDED_MODEL", shipped)
    assert explore.default_pipeline_dir() == shipped
    monkeypatch.setattr(explore, "EMBEDDED_MODEL", tmp_path / "absent")
    assert explore.default_pipeline_dir() == explore.DEFAULT_MODEL_DIR  # no embedded model: the tiny random one
    bad = tmp_path / "bad"
    shutil.copytree(shipped, bad)
    with open(bad / "dit" / "params.safetensors", "r+b") as f:
        f.seek(-2, 2)
        f.write(b"\x00\x01")
    r = subprocess.run([sys.executable, "-m", "infer.explore", "--checkpoint", str(bad), "--actions", "W",
                        "--out", str(tmp_path / "w.mp4")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    err = [ln for ln in r.stderr.strip().splitlines() if not ln.startswith("notice")]
    assert len(err) == 1 and "dit/params.safetensors does not match its checksum" in err[0]
    assert not (tmp_path / "w.mp4").exists()


def test_loss_curves_join_the_calls_of_a_stage(tmp_path):
    from train.default_model import plot_loss, read_metrics

    a, b, v = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "v.jsonl"
    a.write_text("".join(json.dumps({"step": s, "loss_masked": 1.0 / s, "loss_unmasked": 0.5 / s}) + "\n"
                         for s in (1, 2, 3)))
    b.write_text(json.dumps({"step": 1, "loss_masked": 0.2, "loss_unmasked": 0.1}) + "\n\n")  # resumed: 1 again
    v.write_text(json.dumps({"step": 1, "loss": 1.0, "psnr": 12.0}) + "\n")
    assert [r["step"] for r in read_metrics([a, b])] == [1, 2, 3, 4]
    png = plot_loss(tmp_path / "loss.png", [v], [a, b])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
