"""History memory (spec/yume.md "History memory") against an independent torch reference.

The reference below is written from the spec's table with torch conv3d and diffusers' own blocks;
it does not call yume_jax.models.memory.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dit_reference import rel_l2, save_wan_file, tiny_diffusers

import yume_jax
from yume_jax.convert import convert, load_safetensors, save_safetensors
from yume_jax.models import memory

KERN = {"2x": 4, "4x": 8, "8x": 16, "16x": 32, "2x_f": 4}


def spec_groups(h):
    """The spec table, written out (python slicing, index 0 = oldest)."""
    idx = list(range(h))
    if h == 0:
        return []
    if h <= 6:
        g = [(idx[:1], "base"), (idx[1:-1], "2x"), (idx[-1:] if h > 1 else [], "base")]
    elif h <= 22:
        g = [(idx[:1], "base"), (idx[1:-5], "4x"), (idx[-5:-3], "2x"), (idx[-3:], "base")]
    elif h <= 86:
        g = [(idx[:1], "base"), (idx[1:-21], "8x"), (idx[-21:-5], "4x"), (idx[-5:-3], "2x"), (idx[-3:], "base")]
    elif h <= 342:
        g = [(idx[:1], "2x"), (idx[1:-85], "16x"), (idx[-85:-21], "8x"), (idx[-21:-5], "4x"), (idx[-5:-3], "2x"),
             (idx[-3:], "base")]
    else:
        g = [(idx[:1], "2x"), (idx[1:-341], "2x_f+16x"), (idx[-341:-85], "16x"), (idx[-85:-21], "8x"),
             (idx[-21:-5], "4x"), (idx[-5:-3], "2x"), (idx[-3:], "base")]
    return [(f, t) for f, t in g if f]


def pad_conv(x, w, b, k):
    ph, pw = (-x.shape[-2]) % k, (-x.shape[-1]) % k
    x = F.pad(x, (0, pw, 0, ph))
    return F.conv3d(x, w, b, stride=(1, k, k))


def rope_cos_sin(pos, d, theta=10000.0):
    hw = 2 * (d // 6)
    chans = (d - 2 * hw, hw, hw)
    ang = []
    for a, c in enumerate(chans):
        inv = 1.0 / theta ** (torch.arange(0, c, 2, dtype=torch.float64)[: c // 2] / c)
        ang.append(pos[:, a:a + 1].double() * inv[None])
    ang = torch.cat(ang, 1)
    cos = ang.cos().repeat_interleave(2, 1)
    sin = ang.sin().repeat_interleave(2, 1)
    return cos[None, :, None], sin[None, :, None]


def reference(m, hist_w, x, t, ctx, chunk):
    """Yume forward from the spec with diffusers' blocks: tokens, RoPE positions, blocks, head."""
    f = x.shape[2]
    h = f - chunk
    toks, pos, f0 = [], [], 0
    counts = {}
    for frames, tier in spec_groups(h):
        xs = x[:, :, frames[0]:frames[-1] + 1]
        if tier == "base":
            y = pad_conv(xs, m.patch_embedding.weight, m.patch_embedding.bias, 2)
        elif tier == "2x_f+16x":
            y = pad_conv(xs, *hist_w["2x_f"], 4)
            y = pad_conv(y, *hist_w["16x"], 32)
        else:
            y = pad_conv(xs, *hist_w[tier], KERN[tier])
        n, gh, gw = y.shape[2:]
        toks.append(y.flatten(2).transpose(1, 2))
        ff, hh, ww = torch.meshgrid(torch.arange(n) + f0, torch.arange(gh), torch.arange(gw), indexing="ij")
        pos.append(torch.stack([ff.flatten(), hh.flatten(), ww.flatten()], 1))
        f0 += n
        counts[tier] = counts.get(tier, 0) + n * gh * gw
    cur = m.patch_embedding(x[:, :, h:])
    n, gh, gw = cur.shape[2:]
    toks.append(cur.flatten(2).transpose(1, 2))
    ff, hh, ww = torch.meshgrid(torch.arange(n) + f0, torch.arange(gh), torch.arange(gw), indexing="ij")
    pos.append(torch.stack([ff.flatten(), hh.flatten(), ww.flatten()], 1))
    hidden = torch.cat(toks, 1)
    cos, sin = rope_cos_sin(torch.cat(pos, 0), m.config.attention_head_dim)
    temb, tproj, enc, _ = m.condition_embedder(t, ctx, None)
    tproj = tproj.unflatten(1, (6, -1))
    for blk in m.blocks:
        hidden = blk(hidden, enc, tproj, (cos, sin))
    shift, scale = (m.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
    out = m.proj_out(m.norm_out(hidden.float()) * (1 + scale) + shift)[:, -n * gh * gw:]
    c = m.config.out_channels
    out = out.reshape(x.shape[0], n, gh, gw, 1, 2, 2, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return out.reshape(x.shape[0], c, n, gh * 2, gw * 2).detach().numpy(), counts


@pytest.fixture(scope="module")
def yume(tmp_path_factory):
    """A tiny Yume-layout checkpoint (original Wan names + the spec's extra keys), converted."""
    d = tmp_path_factory.mktemp("yume")
    m = tiny_diffusers("t2v", seed=11)
    save_wan_file(m, d / "wan.safetensors")
    sd = load_safetensors(d / "wan.safetensors")
    rng = np.random.default_rng(1)
    hist_w = {}
    for tier, k in KERN.items():
        c_out = 16 if tier == "2x_f" else 64
        w = (rng.standard_normal((c_out, 16, 1, k, k)) / (4 * k)).astype(np.float32)
        b = (0.1 * rng.standard_normal((c_out,))).astype(np.float32)
        sd[f"patch_embedding_{tier}.weight"], sd[f"patch_embedding_{tier}.bias"] = w, b
        hist_w[tier] = (torch.from_numpy(w), torch.from_numpy(b))
    for k in [k for k in sd if k.startswith("blocks.0.")]:
        sd["sideblock." + k[len("blocks.0."):]] = (0.1 * rng.standard_normal(sd[k].shape)).astype(np.float32)
    sd["mask_token"] = rng.standard_normal((1, 1, 64)).astype(np.float32)
    save_safetensors(d / "yume.safetensors", sd)
    convert(d / "yume.safetensors", d / "jax", progress=False, num_heads=4)
    return m, hist_w, d, sd


@pytest.mark.parametrize("h", [0, 1, 2, 6, 7, 22, 23, 86, 87, 342, 343])
def test_history_forward_matches_reference(yume, h):
    m, hist_w, d, _ = yume
    dit = yume_jax.load_dit(d / "jax")
    chunk, hh, ww = 2, 6, 10
    g = torch.Generator().manual_seed(h)
    x = torch.randn(1, 16, h + chunk, hh, ww, generator=g)
    t = torch.tensor([321.0])
    ctx = torch.randn(1, 7, 32, generator=g)
    with torch.no_grad():
        ref, counts = reference(m, hist_w, x, t, ctx, chunk)
    out = np.asarray(dit(x.numpy(), t.numpy(), ctx.numpy(), chunk=chunk))
    assert out.shape == (1, 16, chunk, hh, ww)
    assert rel_l2(out, ref) <= 1e-5
    ours = memory.token_counts(h, hh, ww, chunk)
    assert {k: v for k, v in ours.items() if k != "chunk"} == counts
    assert ours["chunk"] == chunk * (hh // 2) * (ww // 2)


def test_no_history_equals_plain_wan_exactly(yume):
    _, _, d, _ = yume
    dit = yume_jax.load_dit(d / "jax")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16, 3, 6, 10), dtype=np.float32)
    t, ctx = np.array([5.0, 700.0], np.float32), rng.standard_normal((2, 7, 32), dtype=np.float32)
    assert np.array_equal(np.asarray(dit(x, t, ctx)), np.asarray(dit(x, t, ctx, chunk=3)))


def test_clean_history_mode_uses_per_token_t(yume):
    """Yume 1.5: history tokens at t = 0 equals spelling out the per-token timesteps."""
    _, _, d, _ = yume
    dit = yume_jax.load_dit(d / "jax")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 16, 9, 6, 10), dtype=np.float32)
    ctx = rng.standard_normal((1, 7, 32), dtype=np.float32)
    counts = memory.token_counts(7, 6, 10, 2)
    n_hist = sum(v for k, v in counts.items() if k != "chunk")
    t_tok = np.concatenate([np.zeros((1, n_hist)), np.full((1, counts["chunk"]), 400.0)], 1).astype(np.float32)
    a = np.asarray(dit(x, np.array([400.0], np.float32), ctx, chunk=2, history_timestep=0.0))
    b = np.asarray(dit(x, t_tok, ctx, chunk=2))
    c = np.asarray(dit(x, np.array([400.0], np.float32), ctx, chunk=2))
    assert np.allclose(a, b, rtol=1e-6, atol=1e-6) and not np.allclose(a, c)


def test_yume_checkpoint_converts_back_bit_exactly(yume, tmp_path):
    _, _, d, sd = yume
    convert(d / "jax", tmp_path / "back", to="torch", naming="wan", progress=False)
    back = load_safetensors(tmp_path / "back" / "diffusion_pytorch_model.safetensors")
    assert sorted(back) == sorted(sd)
    assert all(back[k].tobytes() == sd[k].tobytes() for k in sd)


def test_long_history_is_truncated_not_a_crash():
    sel = memory.select_frames(2000)
    assert len(sel) == memory.MAX_HISTORY and sel[0] == 0 and sel[-1] == 1999
    assert sum(g.frames for g in memory.schedule(2000)) == memory.MAX_HISTORY
    for h in range(0, 400):  # groups partition the history
        gs = memory.schedule(h)
        assert [i for g in gs for i in range(g.start, g.stop)] == list(range(h))


def test_trilinear_init_is_bit_exact_with_torch():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((1, 2, 2, 36, 40)).astype(np.float32)  # ours: (kt, kh, kw, C_in, D)
    bias = rng.standard_normal((40,)).astype(np.float32)
    tw = torch.from_numpy(np.ascontiguousarray(base.transpose(4, 3, 0, 1, 2)))
    for tier, k in (("2x", 4), ("4x", 8), ("8x", 16), ("16x", 32)):
        kern, b = memory.init_history_from_base(base, bias, tier)
        ref = F.interpolate(tw, size=(1, k, k), mode="trilinear", align_corners=False).numpy()
        assert np.array_equal(kern.transpose(4, 3, 0, 1, 2), ref), tier
        assert np.array_equal(b, bias)


def test_wan_checkpoint_becomes_yume_model():
    from configs.models import get
    from yume_jax.models.loader import DiT, build
    from yume_jax.models.yume import add_yume_extras

    wan = build(get("tiny-t2v"), seed=2)
    yume = add_yume_extras(wan)
    assert yume.cfg.history_tiers and yume.sideblock is not None
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 16, 8, 6, 10), dtype=np.float32)
    ctx = rng.standard_normal((1, 7, 32), dtype=np.float32)
    t = np.array([500.0], np.float32)
    a, b = DiT(wan), DiT(yume)
    assert np.array_equal(np.asarray(a(x[:, :, :3], t, ctx)), np.asarray(b(x[:, :, :3], t, ctx)))
    out = np.asarray(b(x, t, ctx, chunk=3))  # history through the interpolated embeddings
    assert out.shape == (1, 16, 3, 6, 10) and np.isfinite(out).all()
    with pytest.raises(ValueError, match="no history embeddings"):
        a(x, t, ctx, chunk=3)


def test_token_counts_544x960():
    """The figures quoted in BENCHMARKS.md (latent 68 x 120, 9-frame chunk)."""
    c = {h: memory.token_counts(h, 68, 120, 9) for h in (5, 21, 85, 341)}
    assert c[5]["chunk"] == 9 * 34 * 60
    for h, v in c.items():
        assert sum(v.values()) > v["chunk"]
    assert math.isclose(sum(c[5].values()), 9 * 2040 + 2 * 2040 + 3 * 17 * 30)
