"""Readers (and writers) for the two Sekai layouts of spec/sekai.md.

Official release::

    root/train/sekai-*.csv       columns read by name: videoFile, cameraFile, caption, location, scene,
                                 crowdDensity, weather, timeOfDay (others kept in ``meta``)
    root/videos/{id}_{start:07d}_{end:07d}.mp4
    root/cameras/{id}_{start:07d}_{end:07d}.npz   intrinsic (3, 3), extrinsic (N, 4, 4) OpenCV c2w

(a file named in the CSV is looked up as given, under root, under root/videos or root/cameras and
next to the CSV). Yume's training layout::

    root/Keys_{K}_Mouse_{M}/{id}_{start}_{end}_frames_{a}-{b}.{mp4,txt,npy}
    root/full_mp4/{id}/{id}_{start}_{end}.mp4     the source video, clip frame 0 = its frame a

with the txt holding ``Start Frame: a``, ``End Frame: b`` (inclusive), ``Duration: b-a+1 frames``,
``Keys: K``, ``Mouse: M``. Usable frames are min(video frames, poses) as the spec says. Broken
entries (malformed CSV rows or txt files, missing or corrupt videos and pose files, unknown labels)
are skipped and counted in ``Dataset.skipped`` with one line per problem in ``Dataset.problems``;
reading never raises for a bad entry.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import io
import re
import zipfile
from pathlib import Path
from typing import Iterable

import numpy as np

from yume_jax.camera import KEYS, MOUSE, Action
from yume_jax.data import video as vio

SEKAI_COLUMNS = ("videoFile", "cameraFile", "caption", "location", "scene", "crowdDensity", "weather", "timeOfDay")
MOUSE_WORDS = {"→": "Right", "←": "Left", "↑": "Up", "↓": "Down", "↑→": "Up_Right", "↑←": "Up_Left",
               "↓→": "Down_Right", "↓←": "Down_Left", "·": "·"}
_WORD_MOUSE = {v.lower(): k for k, v in MOUSE_WORDS.items()} | {k: k for k in MOUSE} | {"none": "·", ".": "·"}
_CLIP_RE = re.compile(r"^(?P<id>.+)_(?P<start>\d+)_(?P<end>\d+)$")
_YUME_RE = re.compile(r"^(?P<src>(?P<id>.+)_(?P<start>\d+)_(?P<end>\d+))_frames_(?P<a>\d+)-(?P<b>\d+)$")


@dataclasses.dataclass(frozen=True)
class ClipInfo:
    """One usable clip. Frame i of the clip is frame ``history_offset + i`` of ``history_video``."""

    name: str
    layout: str  # "sekai" | "yume"
    video: Path
    poses: Path
    num_frames: int  # min(video frames, poses)
    fps: float
    caption: str = ""
    action: Action | None = None  # constant action of a Yume-layout clip
    history_video: Path | None = None
    history_offset: int = 0
    meta: tuple = ()  # other CSV columns / txt fields as (key, value) pairs

    @property
    def metadata(self) -> dict:
        return dict(self.meta)


@dataclasses.dataclass
class Dataset:
    root: Path
    layout: str
    clips: list[ClipInfo]
    skipped: collections.Counter
    problems: list[str]
    notes: collections.Counter  # non-fatal: frame/pose count mismatches, clips without history video

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, i) -> ClipInfo:
        return self.clips[i]

    def report(self) -> str:
        s = f"{self.layout} dataset {self.root}: {len(self.clips)} clips"
        if self.skipped:
            s += ", skipped " + ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items()))
        if self.notes:
            s += "; notes " + ", ".join(f"{k}={v}" for k, v in sorted(self.notes.items()))
        return s


class PoseError(ValueError):
    """A pose file that cannot be used."""


def load_poses(path) -> tuple[np.ndarray, np.ndarray | None]:
    """c2w (N, 4, 4) float64 and the intrinsic (3, 3) (None for Yume's npy) from an npz or npy file."""
    path = Path(path)
    try:
        if path.suffix == ".npz":
            with np.load(path) as z:
                if "extrinsic" not in z.files or "intrinsic" not in z.files:
                    raise PoseError(f"{path}: npz needs 'intrinsic' and 'extrinsic', has {z.files}")
                ext, K = np.asarray(z["extrinsic"], np.float64), np.asarray(z["intrinsic"], np.float64)
        else:
            ext, K = np.asarray(np.load(path, allow_pickle=False), np.float64), None
    except PoseError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise PoseError(f"{path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if ext.ndim != 3 or ext.shape[1:] != (4, 4) or len(ext) == 0:
        raise PoseError(f"{path}: extrinsic must be (N, 4, 4), got {ext.shape}")
    if K is not None and K.shape != (3, 3):
        raise PoseError(f"{path}: intrinsic must be (3, 3), got {K.shape}")
    if not np.all(np.isfinite(ext)) or (K is not None and not np.all(np.isfinite(K))):
        raise PoseError(f"{path}: non-finite values")
    return ext, K


def clip_poses(info: ClipInfo) -> np.ndarray:
    """The clip's c2w (num_frames, 4, 4)."""
    return load_poses(info.poses)[0][: info.num_frames]


def clip_intrinsic(info: ClipInfo) -> np.ndarray | None:
    return load_poses(info.poses)[1]


class _Tally:
    def __init__(self):
        self.skipped, self.problems, self.notes = collections.Counter(), [], collections.Counter()

    def skip(self, reason: str, msg: str):
        self.skipped[reason] += 1
        self.problems.append(f"{reason}: {msg}")


def _probe(path: Path, check: bool, tally: _Tally):
    if not path.is_file():
        tally.skip("missing_video", str(path))
        return None
    if not check:
        return vio.VideoInfo(1 << 62, 0.0, 0, 0)
    try:
        return vio.probe(path)
    except vio.VideoError as e:
        tally.skip("bad_video", str(e))
        return None


def _poses_len(path: Path, tally: _Tally) -> int | None:
    if not path.is_file():
        tally.skip("missing_poses", str(path))
        return None
    try:
        return len(load_poses(path)[0])
    except PoseError as e:
        tally.skip("bad_poses", str(e))
        return None

# ----------------------------------------------------------------------------------------- official layout


def _find(name: str, bases: Iterable[Path]) -> Path:
    p = Path(name)
    if p.is_absolute():
        return p
    for b in bases:
        if (b / p).is_file():
            return b / p
    return next(iter(bases)) / p


class _BadCsv(ValueError):
    pass


def _read_csv(path: Path) -> tuple[list[tuple[int, dict]], list[str]]:
    """(line number, row) of every row and the header of one CSV, read whole before any row is used, so a
    file that fails half way (not UTF-8, malformed quoting, unreadable) contributes no clips; _BadCsv names
    the file and the problem."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = list(reader.fieldnames or ())
            rows = [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError as e:
        raise _BadCsv(f"{path}: not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r})") from None
    except csv.Error as e:
        raise _BadCsv(f"{path}: malformed CSV ({e})") from None
    except OSError as e:
        raise _BadCsv(f"{path}: {e.strerror or type(e).__name__}") from None
    return rows, fields


def read_sekai(root, csv_files=None, check_videos: bool = True, min_frames: int = 2) -> Dataset:
    """Index an official-layout Sekai split (default CSVs: root/train/*.csv, else root/*.csv)."""
    root = Path(root)
    if csv_files is None:
        csv_files = sorted((root / "train").glob("*.csv")) or sorted(root.glob("*.csv"))
    csv_files = [Path(c) for c in ([csv_files] if isinstance(csv_files, (str, Path)) else csv_files)]
    if not csv_files:
        raise ValueError(f"no annotation CSV under {root}/train or {root}")
    tally, clips = _Tally(), []
    for cf in csv_files:
        try:
            rows, fields = _read_csv(cf)
        except _BadCsv as e:
            tally.skip("bad_csv", str(e))  # this file only; the other CSVs are still read
            continue
        missing = {"videoFile", "cameraFile"} - set(fields)
        if missing:
            tally.skip("bad_csv", f"{cf}: CSV header lacks column(s) {sorted(missing)}; has {fields}")
            continue
        bases = [root, root / "videos", root / "cameras", cf.parent, cf.parent.parent]
        for lineno, row in rows:
            where = f"{cf}:{lineno}"
            if None in row or any(v is None for v in row.values()):
                tally.skip("bad_row", f"{where}: {len(fields)} columns expected")
                continue
            vf, cam = row["videoFile"].strip(), row["cameraFile"].strip()
            if not vf.endswith(".mp4") or not cam.endswith(".npz"):
                tally.skip("bad_row", f"{where}: videoFile {vf!r} / cameraFile {cam!r}")
                continue
            vpath, ppath = _find(vf, bases), _find(cam, bases)
            n_pose = _poses_len(ppath, tally)
            if n_pose is None:
                continue
            info = _probe(vpath, check_videos, tally)
            if info is None:
                continue
            n = min(info.num_frames, n_pose)
            if check_videos and info.num_frames != n_pose:
                tally.notes["frame_pose_mismatch"] += 1
            if n < min_frames:
                tally.skip("too_short", f"{where}: {n} usable frames")
                continue
            meta = tuple((k, v) for k, v in row.items() if k not in ("videoFile", "cameraFile", "caption"))
            clips.append(ClipInfo(name=Path(vf).stem, layout="sekai", video=vpath, poses=ppath, num_frames=n,
                                  fps=info.fps, caption=row.get("caption", "") or "", history_video=vpath,
                                  history_offset=0, meta=meta))
    if not clips and tally.skipped.get("bad_csv") == len(csv_files):
        raise ValueError("no annotation CSV could be read: " + "; ".join(tally.problems[:3]))
    return Dataset(root, "sekai", clips, tally.skipped, tally.problems, tally.notes)


def write_sekai_clip(root, name: str, frames: np.ndarray, c2w: np.ndarray, intrinsic: np.ndarray, fps: float = 16,
                     codec: str = "h264") -> tuple[str, str]:
    """Write one official-layout clip (video + camera npz); returns the CSV's videoFile and cameraFile."""
    root = Path(root)
    vio.write(root / "videos" / f"{name}.mp4", frames, fps=fps, codec=codec)
    (root / "cameras").mkdir(parents=True, exist_ok=True)
    tmp = root / "cameras" / f".{name}.partial.npz"
    np.savez(tmp, intrinsic=np.asarray(intrinsic, np.float64), extrinsic=np.asarray(c2w, np.float64))
    tmp.replace(root / "cameras" / f"{name}.npz")
    return f"{name}.mp4", f"{name}.npz"


def write_sekai_csv(path, rows: list[dict]):
    """The annotation CSV: the official columns first, any extra columns after them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = [k for r in rows for k in r if k not in SEKAI_COLUMNS]
    fields = list(SEKAI_COLUMNS) + list(dict.fromkeys(extra))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in fields})
    path.write_text(buf.getvalue(), encoding="utf-8")

# ----------------------------------------------------------------------------------------- Yume layout


def folder_name(action: Action) -> str:
    """``Keys_{K}_Mouse_{M}`` with Yume's folder words for the mouse (Keys_None_Mouse_Down, Keys_S_Mouse_·)."""
    return f"Keys_{action.keys}_Mouse_{MOUSE_WORDS[action.mouse]}"


def parse_folder(name: str) -> Action:
    """Inverse of :func:`folder_name`; accepts arrows or words for the mouse."""
    if not name.startswith("Keys_") or "_Mouse_" not in name:
        raise ValueError(f"not a Keys_*_Mouse_* folder: {name!r}")
    keys, mouse = name[len("Keys_"):].split("_Mouse_", 1)
    m = _WORD_MOUSE.get(mouse.lower(), _WORD_MOUSE.get(mouse))
    if keys not in KEYS or m is None:
        raise ValueError(f"unknown labels in folder {name!r}")
    return Action(keys, m)


def parse_txt(path) -> dict:
    """The fields of a Yume clip txt (``Name: value`` lines; '#' starts a comment)."""
    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return out


def yume_txt(a: int, b: int, action: Action) -> str:
    return (f"Start Frame: {a}\nEnd Frame: {b}\nDuration: {b - a + 1} frames\n"
            f"Keys: {action.keys}\nMouse: {action.mouse}\n")


def read_yume(root, full_mp4=None, check_videos: bool = True, min_frames: int = 2) -> Dataset:
    """Index a Yume-layout root: every ``Keys_*_Mouse_*`` folder's mp4 with its txt and npy."""
    root = Path(root)
    full = Path(full_mp4) if full_mp4 is not None else root / "full_mp4"
    folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("Keys_")) if root.is_dir() else []
    if not folders:
        raise ValueError(f"no Keys_*_Mouse_* folders under {root}")
    tally, clips = _Tally(), []
    for folder in folders:
        try:
            folder_action = parse_folder(folder.name)
        except ValueError as e:
            tally.skip("bad_folder", str(e))
            continue
        for mp4 in sorted(folder.glob("*.mp4")):
            txt, npy = mp4.with_suffix(".txt"), mp4.with_suffix(".npy")
            if not txt.is_file():
                tally.skip("missing_txt", str(txt))
                continue
            try:
                fields = parse_txt(txt)
                a, b = int(fields["Start Frame"]), int(fields["End Frame"])
                action = Action(fields["Keys"], fields["Mouse"])
                if b < a:
                    raise ValueError(f"End Frame {b} < Start Frame {a}")
            except (KeyError, ValueError, UnicodeDecodeError) as e:
                tally.skip("bad_txt", f"{txt}: {type(e).__name__}: {e}")
                continue
            if action != folder_action:
                tally.notes["label_folder_mismatch"] += 1
            n_pose = _poses_len(npy, tally)
            if n_pose is None:
                continue
            info = _probe(mp4, check_videos, tally)
            if info is None:
                continue
            n = min(info.num_frames, n_pose)
            if check_videos and (info.num_frames != n_pose or b - a + 1 != info.num_frames):
                tally.notes["frame_pose_mismatch"] += 1
            if n < min_frames:
                tally.skip("too_short", f"{mp4}: {n} usable frames")
                continue
            m = _YUME_RE.match(mp4.stem)
            hist = None
            if m:
                cand = full / m["id"] / f"{m['src']}.mp4"
                hist = cand if cand.is_file() else None
            if hist is None:
                tally.notes["no_history_video"] += 1
            clips.append(ClipInfo(name=mp4.stem, layout="yume", video=mp4, poses=npy, num_frames=n, fps=info.fps,
                                  action=action, history_video=hist, history_offset=a if hist else 0,
                                  meta=tuple(sorted(fields.items()))))
    return Dataset(root, "yume", clips, tally.skipped, tally.problems, tally.notes)


def write_yume_clip(root, source: str, a: int, b: int, frames: np.ndarray, c2w: np.ndarray, action: Action,
                    fps: float = 16, codec: str = "h264") -> Path:
    """One constant-action clip = frames a..b (inclusive) of source video ``{id}_{start}_{end}``."""
    if len(frames) != b - a + 1 or len(c2w) != b - a + 1:
        raise ValueError(f"frames {a}..{b} need {b - a + 1} frames and poses, got {len(frames)} / {len(c2w)}")
    stem = Path(root) / folder_name(action) / f"{source}_frames_{a}-{b}"
    vio.write(stem.with_suffix(".mp4"), frames, fps=fps, codec=codec)
    np.save(stem.with_suffix(".npy"), np.asarray(c2w, np.float32))
    stem.with_suffix(".txt").write_text(yume_txt(a, b, action), encoding="utf-8")
    return stem.with_suffix(".mp4")


def write_full_video(root, source: str, frames: np.ndarray, fps: float = 16, codec: str = "h264") -> Path:
    m = _CLIP_RE.match(source)
    if not m:
        raise ValueError(f"source name must be {{id}}_{{start}}_{{end}}, got {source!r}")
    return vio.write(Path(root) / "full_mp4" / m["id"] / f"{source}.mp4", frames, fps=fps, codec=codec)


def read(root, layout: str | None = None, **kw) -> Dataset:
    """Either layout, detected from the directory when ``layout`` is None."""
    root = Path(root)
    if layout is None:
        layout = "yume" if any(p.name.startswith("Keys_") for p in root.iterdir() if p.is_dir()) else "sekai"
    if layout == "sekai":
        return read_sekai(root, **kw)
    if layout == "yume":
        return read_yume(root, **kw)
    raise ValueError(f"unknown layout {layout!r}; valid: sekai, yume")
