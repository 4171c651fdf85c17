"""Reports of an evaluation: ``report.json`` (every case, every number, seeds and versions),
``summary.md`` (one row per configuration), PNG plots (per-chunk PSNR drift, instruction following by
action, reversal latency) and a contact sheet (generated chunk-end frames above the ground truth)."""
from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path

import numpy as np

from yume_jax.camera import KEYS, MOUSE
from yume_jax.eval import bench


def versions() -> dict:
    import cv2
    import jax
    import skimage

    import yume_jax
    try:
        commit = subprocess.run(["git", "-C", str(Path(yume_jax.__file__).parent), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return dict(python=platform.python_version(), numpy=np.__version__, jax=jax.__version__, opencv=cv2.__version__,
                scikit_image=skimage.__version__, yume_jax_commit=commit)


def _strip_frames(obj):
    if isinstance(obj, dict):
        return {k: _strip_frames(v) for k, v in obj.items() if not k.startswith("_")}
    if isinstance(obj, list):
        return [_strip_frames(v) for v in obj]
    if isinstance(obj, float):
        return round(obj, 6)
    return obj


def _fmt(x, spec=".3f") -> str:
    return "–" if x is None else format(x, spec)


def markdown(report: dict) -> str:
    lines = [f"# {report['benchmark']['name']} v{report['benchmark']['version']} ({report['mode']})", ""]
    if report["mode"] == "sandbox":
        lines += ["| run | IF keys | IF mouse | IF both | rot err ° | PSNR first→last chunk | SSIM | reversal "
                  "latency | revisit PSNR | boundary ratio | flicker | s/chunk |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in report["runs"]:
            s = r["summary"]
            drift = s.get("psnr_by_chunk") or []
            d = f"{_fmt(drift[0], '.1f')} → {_fmt(drift[-1], '.1f')}" if drift else "–"
            lines.append(f"| {r['spec']['name']} | {_fmt(s['if_keys'])} | {_fmt(s['if_mouse'])} | {_fmt(s['if_both'])} "
                         f"| {_fmt(s.get('rotation_error_deg'), '.1f')} | {d} | {_fmt(s.get('ssim'))} "
                         f"| {_fmt(s.get('reversal_latency_mean'), '.2f')} | {_fmt(s.get('revisit_psnr'), '.1f')} "
                         f"| {_fmt(s['boundary_ratio'], '.2f')} | {_fmt(s['flicker'], '.4f')} "
                         f"| {_fmt(s['seconds_per_chunk'], '.2f')} |")
    else:
        lines += ["| run | IF keys | IF mouse | IF both | boundary ratio | flicker | s/chunk |",
                  "|---|---|---|---|---|---|---|"]
        for r in report["runs"]:
            s = r["summary"]
            lines.append(f"| {r['spec']['name']} | {_fmt(s['if_keys'])} | {_fmt(s['if_mouse'])} | {_fmt(s['if_both'])} "
                         f"| {_fmt(s['boundary_ratio'], '.2f')} | {_fmt(s['flicker'], '.4f')} "
                         f"| {_fmt(s['seconds_per_chunk'], '.2f')} |")
    r0 = report["runs"][0] if report["runs"] else {}
    lines += ["", f"{report['cases']} cases, {r0.get('height')}x{r0.get('width')}, "
              f"{r0.get('frames_per_chunk')} frames per chunk. IF: instruction following (estimated label == "
              "commanded, per chunk). Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()), ""]
    return "\n".join(lines)


def plots(report: dict, out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    runs = report["runs"]
    if report["mode"] == "sandbox":
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for r in runs:
            ys = r["summary"].get("psnr_by_chunk") or []
            ax.plot(range(1, len(ys) + 1), ys, marker="o", ms=3, label=r["spec"]["name"])
        ax.set(xlabel="chunk", ylabel="PSNR vs ground truth (dB)", title="Drift: PSNR per chunk")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(out / "psnr_drift.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    labels = [f"keys {k}" for k in KEYS] + [f"mouse {m}" for m in MOUSE]
    fig, ax = plt.subplots(figsize=(10, 3.5))
    width = 0.8 / max(len(runs), 1)
    for i, r in enumerate(runs):
        s = r["summary"]
        vals = [s["if_by_keys"].get(k, np.nan) for k in KEYS] + [s["if_by_mouse"].get(m, np.nan) for m in MOUSE]
        ax.bar(np.arange(len(labels)) + i * width, vals, width, label=r["spec"]["name"])
    ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels, rotation=60, fontsize=7,
                  fontfamily=["DejaVu Sans"])
    ax.set(ylabel="instruction following", ylim=(0, 1.05), title="Instruction following by commanded label")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(out / "if_by_action.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    rev = [r for r in runs if r["summary"].get("reversal_latency")]
    if rev:
        names = sorted({n for r in rev for n in r["summary"]["reversal_latency"]})
        fig, ax = plt.subplots(figsize=(6, 3.5))
        width = 0.8 / len(rev)
        for i, r in enumerate(rev):
            ax.bar(np.arange(len(names)) + i * width, [r["summary"]["reversal_latency"].get(n, np.nan) for n in names],
                   width, label=r["spec"]["name"])
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, fontsize=8)
        ax.set(ylabel="chunks until followed", title="Reversal latency")
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(out / "reversal_latency.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def contact_sheet(run: dict, path: Path, max_cases: int = 6, max_frames: int = 9) -> Path | None:
    """Per case: a row of generated chunk-end frames, and below it the ground truth (sandbox)."""
    from PIL import Image

    rows = []
    max_frames = min(max_frames, max((len(c.get("_frames", {}).get("generated", [])) for c in run["cases"]),
                                     default=0))
    for c in run["cases"][:max_cases]:
        fr = c.get("_frames")
        if not fr:
            continue
        for key in ("generated", "truth"):
            if key in fr:
                tiles = list(fr[key][:max_frames])
                tiles += [np.full_like(tiles[0], 255)] * (max_frames - len(tiles))
                gap = np.full((tiles[0].shape[0], 2, 3), 255, np.uint8)
                rows.append(np.concatenate([x for t in tiles for x in (t, gap)][:-1], 1))
        rows.append(None)  # a wider gap between cases
    rows = rows[:-1]
    if not rows:
        return None
    width = max(r.shape[1] for r in rows if r is not None)
    out = []
    for r in rows:
        out.append(np.full((6, width, 3), 255, np.uint8) if r is None else r)
        out.append(np.full((2, width, 3), 255, np.uint8))
    Image.fromarray(np.concatenate(out[:-1], 0)).save(path, optimize=True)
    return path


def write(out, mode: str, runs: list[dict], extra: dict | None = None) -> dict:
    """Write report.json, summary.md, plots and one contact sheet per run into ``out``; returns the report.

    Every file is complete or absent: all are written into a temporary folder inside ``out`` first, then
    renamed into place one by one, ``report.json`` (which lists the others) last; a failure (disk full) or an
    interrupt leaves the previous report as it was and no temporary folder (leftovers of killed runs are
    removed by the next one)."""
    import os
    import shutil

    from yume_jax.core.checkpoint import atomic_write_text, clean_leftovers
    from yume_jax.eval.harness import summarize

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out / ".report")
    stage = out / f".report.partial-{os.getpid()}-{os.urandom(4).hex()}"
    stage.mkdir()
    try:
        for r in runs:
            r["summary"] = summarize(r)
        report = dict(benchmark=dict(name=bench.NAME, version=bench.VERSION, seed_tag=bench.SEED_TAG), mode=mode,
                      cases=len(runs[0]["cases"]) if runs else 0, versions=versions(), **(extra or {}), runs=runs)
        sheets = []
        for i, r in enumerate(runs):
            p = contact_sheet(r, stage / f"contact_{i}_{_safe(r['spec']['name'])}.png")
            if p:
                sheets.append(p.name)
        report["files"] = dict(summary="summary.md", plots=[p.name for p in plots(report, stage)],
                               contact_sheets=sheets)
        clean = _strip_frames(report)
        atomic_write_text(stage / "summary.md", markdown(clean))
        atomic_write_text(stage / "report.json", json.dumps(clean, indent=1, ensure_ascii=False))
        names = [*sheets, *report["files"]["plots"], "summary.md", "report.json"]
        for name in names:
            os.replace(stage / name, out / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return clean


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:40]
