"""Training photographs: fetching the allow-listed files, grouping, splitting, patch sampling.

The model can only be trained on the few real photographs that Debian and PyPI packages ship
(see ``shared/data/train-sources.md``).  Other files in the same packages are reserved for an
independent evaluation set, so the fetcher takes **only** the files in :data:`TRAINING_SOURCES`
and nothing else; widening that list would leak evaluation images into training.

Layout written by :func:`fetch_training_photos` (the same as the reference shell script, so
files fetched either way are interchangeable)::

    DEST/lomiri16/<file>.jpg
    DEST/plasma/<Name>_contents_images_2560x1600.jpg
    DEST/opencv/data_<file>, DEST/opencv/hfs_data_000.jpg, ...
    DEST/skimage/motorcycle_left.png, ...
    DEST/scipy/face.png            (converted from the raw bz2 ``face.dat``)
    DEST/hugin/<file>.jpg
    DEST/manifest.json, DEST/SOURCES.md

Everything here is numpy/Pillow only, so data preparation never needs torch.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "EXPECTED_PHOTO_COUNT",
    "TRAINING_SOURCES",
    "DebSource",
    "FetchError",
    "PatchSampler",
    "WheelSource",
    "fetch_training_photos",
    "list_photos",
    "photo_group",
    "split_train_val",
]

Log = Callable[[str], None]


# --------------------------------------------------------------------------------------------
# The allow-list
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DebSource:
    """Photos taken out of one Debian package (downloaded with ``apt-get download``).

    ``files`` are paths below ``prefix`` inside the package; each is written flattened
    (``/`` -> ``_``) into ``DEST/subdir``.  ``credits`` maps a file to its author/licence when
    that differs per file; otherwise ``licence`` applies.
    """

    key: str
    package: str
    version: str
    subdir: str
    prefix: str
    files: tuple[str, ...]
    licence: str
    credits: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class WheelSource:
    """Photos taken out of one PyPI wheel (downloaded with ``pip download``, never installed).

    ``files`` are paths inside the wheel archive; each is written under its base name into
    ``DEST/subdir`` (``scipy/misc/face.dat`` is converted to ``face.png``).
    """

    key: str
    package: str
    version: str
    wheel_prefix: str
    subdir: str
    files: tuple[str, ...]
    licence: str
    credits: tuple[tuple[str, str], ...] = ()


_LOMIRI_FILES: tuple[tuple[str, str], ...] = (
    # (file, "author; licence") from the package's debian/copyright
    ("Bridge_by_Sander_Klootwijk.jpg", "Sander Klootwijk, 2018; CC-BY-SA-4.0"),
    ("Dragonfly_by_Bolly.jpg", '"Bolly", 2018; CC-BY-SA-4.0'),
    ("Picture_0B_by_freespace.jpg", 'Trevor "Freespace", 2018; CC-BY-4.0'),
    ("Picture_1A_by_freespace.jpg", 'Trevor "Freespace", 2018; CC-BY-4.0'),
    ("Wine_by_Jakkub_Mede.jpg", "Jakub Mede, 2018; CC-BY-4.0"),
    ("aitzgorri_by_Aitzol_Berasategi.jpg", "Aitzol Berasategi, 2018; CC-BY-4.0"),
    ("analogpattern_by_Peter_Nerlich.jpg", "Peter Nerlich, 2018; CC-BY-SA-4.0"),
    ("free_by_Peter_Nerlich.jpg", "Peter Nerlich, 2018; CC-BY-SA-4.0"),
    ("friends_by_Aitzol_Berasategi.jpg", "Aitzol Berasategi, 2018; CC-BY-4.0"),
    ("greentock_by_Peter_Nerlich.jpg", "Peter Nerlich, 2018; CC-BY-SA-4.0"),
    ("life_by_Aitzol_Berasategi.jpg", "Aitzol Berasategi, 2018; CC-BY-4.0"),
    ("picosdeeuropa_by_Aitzol_Berasategi.jpg", "Aitzol Berasategi, 2018; CC-BY-4.0"),
    ("seeding_by_Clements_Engelhardt.jpg", "Clemens Engelhardt, 2018; CC0-1.0"),
    ("sunset_by_Aitzol_Berasategi.jpg", "Aitzol Berasategi, 2018; CC-BY-4.0"),
)

_PLASMA_FILES: tuple[tuple[str, str], ...] = (
    # (file, "author; licence") from each wallpaper's metadata.json
    ("BytheWater/contents/images/2560x1600.jpg", "Maciej Wiklo; LGPL-3.0"),
    ("ColdRipple/contents/images/2560x1600.jpg", "Risto Saukonpää; LGPL-3.0"),
    ("ColorfulCups/contents/images/2560x1600.jpg", "Dmitri Popov; LGPL-3.0"),
    ("DarkestHour/contents/images/2560x1600.jpg", "Risto Saukonpää; LGPL-3.0"),
    ("Grey/contents/images/2560x1600.jpg", "Sigi Sagi; LGPL-3.0"),
    ("Kite/contents/images/2560x1600.jpg", "Risto Saukonpää; LGPL-3.0"),
    ("summer_1am/contents/images/2560x1600.jpg", "Risto Saukonpää; LGPL-3.0"),
)

_OPENCV_DATA: tuple[str, ...] = (
    "aero1.jpg", "aero3.jpg", "aloeL.jpg", "aloeR.jpg", "apple.jpg", "board.jpg",
    "building.jpg", "butterfly.jpg", "chicky_512.png", "ela_original.jpg", "fruits.jpg",
    "graf1.png", "graf3.png", "home.jpg", "left.jpg", "right.jpg", "leuvenA.jpg", "leuvenB.jpg",
    "messi5.jpg", "orange.jpg", "smarties.png", "squirrel_cls.jpg", "stuff.jpg", "sudoku.png",
)  # fmt: skip

#: Every file we may train on.  Do not add files: the rest of these packages is reserved for
#: evaluation (or is a near-duplicate of a reserved file, or is not a photograph).
TRAINING_SOURCES: tuple[DebSource | WheelSource, ...] = (
    DebSource(
        key="A",
        package="lomiri-wallpapers-16.04",
        version="20.04.0-2",
        subdir="lomiri16",
        prefix="usr/share/backgrounds/",
        files=tuple(f for f, _ in _LOMIRI_FILES),
        licence="CC-BY-4.0 / CC-BY-SA-4.0 / CC0-1.0 (per file)",
        credits=_LOMIRI_FILES,
    ),
    DebSource(
        key="B",
        package="plasma-workspace-wallpapers",
        version="4:5.27.5-2",
        subdir="plasma",
        prefix="usr/share/wallpapers/",
        files=tuple(f for f, _ in _PLASMA_FILES),
        licence="LGPL-3.0 (per metadata.json)",
        credits=_PLASMA_FILES,
    ),
    DebSource(
        key="C",
        package="opencv-doc",
        version="4.6.0+dfsg-12",
        subdir="opencv",
        prefix="usr/share/doc/opencv-doc/examples/",
        files=tuple(f"data/{f}" for f in _OPENCV_DATA)
        + (
            "alphamat/input_images/plant.jpg",
            "hfs/data/000.jpg",
            "hfs/data/001.jpg",
            "hfs/data/002.jpg",
            "reg/home.png",
            "dnn_superres/butterfly.png",
        )
        + tuple(f"text/scenetext0{i}.jpg" for i in range(1, 7)),
        licence="OpenCV samples, Apache-2.0 AND BSD-3-Clause package; mixed origins",
    ),
    WheelSource(
        key="D",
        package="scikit-image",
        version="0.26.0",
        wheel_prefix="scikit_image-0.26.0-",
        subdir="skimage",
        files=(
            "skimage/data/motorcycle_left.png",
            "skimage/data/motorcycle_right.png",
            "skimage/data/rocket.jpg",
        ),
        licence="BSD-3-Clause (scikit-image)",
        credits=(
            ("skimage/data/motorcycle_left.png", "Middlebury 2014 stereo dataset; BSD-3-Clause"),
            ("skimage/data/motorcycle_right.png", "Middlebury 2014 stereo dataset; BSD-3-Clause"),
            ("skimage/data/rocket.jpg", "SpaceX (DSCOVR launch on Falcon 9); public domain"),
        ),
    ),
    WheelSource(
        key="E",
        package="scipy",
        version="1.11.4",
        wheel_prefix="scipy-1.11.4-",
        subdir="scipy",
        files=("scipy/misc/face.dat",),
        licence="BSD-3-Clause (SciPy)",
    ),
    DebSource(
        key="F",
        package="hugin-data",
        version="2022.0.0+dfsg-2",
        subdir="hugin",
        prefix="usr/share/hugin/xrc/data/help_en_EN/",
        files=(
            "300px-Lamp_enfuse.jpg",
            "600px-Tuebingen_Neckarfront_small15_2006-06-11.jpg",
            "800px-C_Marchi-GrandCentral-adj.jpg",
            "CA_fringes00.jpg",
            "CA_tCA00.jpg",
        ),
        licence="GPL-2+ / GFDL (Hugin help pages)",
    ),
)

EXPECTED_PHOTO_COUNT = 66
PHOTO_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")
MANIFEST_NAME = "manifest.json"
SOURCES_NAME = "SOURCES.md"
FACE_SHAPE: tuple[int, int, int] = (768, 1024, 3)  # scipy face.dat: raw HxWx3 uint8, bz2
# pip download needs a concrete target; the data files are identical in every wheel.
_WHEEL_TARGET: tuple[str, ...] = (
    "--python-version", "3.11",
    "--platform", "manylinux2014_x86_64",
    "--platform", "manylinux_2_28_x86_64",
)  # fmt: skip


class FetchError(RuntimeError):
    """A download or extraction step failed; the message names the file and the reason."""


# --------------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Where downloaded .deb/.whl files are kept, so a second fetch needs no network."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bswd" / "downloads"


def dest_name(source: DebSource | WheelSource, member: str) -> str:
    """File name (below ``DEST/subdir``) that ``member`` of ``source`` is written to."""
    if isinstance(source, WheelSource):
        name = member.rsplit("/", 1)[-1]
        return "face.png" if name == "face.dat" else name
    return member.replace("/", "_")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file so an interrupted fetch never leaves a truncated photo."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _run(cmd: Sequence[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise FetchError(f"{cmd[0]}: not found ({exc}); it is needed to fetch photos") from exc


def _deb_version(deb: Path) -> str:
    proc = _run(["dpkg-deb", "-f", str(deb), "Version"])
    if proc.returncode != 0:
        raise FetchError(f"{deb}: dpkg-deb cannot read it: {proc.stderr.strip()}")
    return proc.stdout.strip()


class _AptState:
    """Runs ``apt-get update`` at most once per fetch, and only if something must be downloaded."""

    def __init__(self, log: Log) -> None:
        self.updated = False
        self.log = log

    def update(self) -> None:
        if self.updated:
            return
        self.updated = True
        self.log("apt-get update -qq")
        proc = _run(["apt-get", "update", "-qq"])
        if proc.returncode != 0:
            # Not fatal: the package lists may already be present (e.g. when not root).
            self.log(f"warning: apt-get update failed ({proc.stderr.strip()}); trying anyway")


def _find_deb(cache: Path, source: DebSource) -> Path | None:
    """A cached .deb of ``source.package``, preferring the allow-listed version."""
    found = sorted(cache.glob(f"{source.package}_*.deb"))
    for deb in found:
        if _deb_version(deb) == source.version:
            return deb
    return found[-1] if found else None


def _download_deb(cache: Path, source: DebSource, apt: _AptState, log: Log) -> Path:
    deb = _find_deb(cache, source)
    if deb is not None:
        return deb
    apt.update()
    for spec in (f"{source.package}={source.version}", source.package):
        log(f"apt-get download {spec}")
        proc = _run(["apt-get", "download", "-q", spec], cwd=cache)
        deb = _find_deb(cache, source)
        if proc.returncode == 0 and deb is not None:
            return deb
        log(f"warning: apt-get download {spec} failed: {proc.stderr.strip()[-500:]}")
    raise FetchError(
        f"{source.package}: apt-get download failed (is this Debian 12 with network access "
        f"to its mirror?); see the warnings above"
    )


def _extract_deb(deb: Path, members: Iterable[str]) -> dict[str, bytes]:
    """Read only ``members`` (paths without leading ``./``) out of a .deb's file system tar.

    Streams ``dpkg-deb --fsys-tarfile`` so nothing else from the package touches the disk.
    """
    wanted = set(members)
    out: dict[str, bytes] = {}
    cmd = ["dpkg-deb", "--fsys-tarfile", str(deb)]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError as exc:
        raise FetchError(f"{deb}: dpkg-deb not found ({exc}); it is needed to unpack it") from exc
    assert proc.stdout is not None and proc.stderr is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for info in tar:
                name = info.name.removeprefix("./")
                if name not in wanted:
                    continue
                if not info.isfile():
                    raise FetchError(f"{deb.name}: {name} is not a regular file in the package")
                fobj = tar.extractfile(info)
                assert fobj is not None
                out[name] = fobj.read()
                if len(out) == len(wanted):
                    break
    except tarfile.TarError as exc:
        raise FetchError(f"{deb}: cannot read its file system tar: {exc}") from exc
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace")
        rc = proc.wait()
    if len(out) < len(wanted) and rc != 0:
        raise FetchError(f"{deb}: dpkg-deb --fsys-tarfile failed: {err.strip()}")
    missing = sorted(wanted - set(out))
    if missing:
        raise FetchError(f"{deb.name}: allow-listed files missing from the package: {missing}")
    return out


def _download_wheel(cache: Path, source: WheelSource, log: Log) -> Path:
    found = sorted(cache.glob(f"{source.wheel_prefix}*.whl"))
    if found:
        return found[0]
    spec = f"{source.package}=={source.version}"
    log(f"pip download {spec}")
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    proc = _run([*cmd, *_WHEEL_TARGET, spec, "-d", str(cache)])
    found = sorted(cache.glob(f"{source.wheel_prefix}*.whl"))
    if proc.returncode != 0 or not found:
        raise FetchError(f"{spec}: pip download failed: {proc.stderr.strip()[-1000:]}")
    return found[0]


def _extract_wheel(wheel: Path, members: Iterable[str]) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
            missing = sorted(set(members) - names)
            if missing:
                raise FetchError(f"{wheel.name}: allow-listed files missing: {missing}")
            return {m: zf.read(m) for m in members}
    except zipfile.BadZipFile as exc:
        raise FetchError(f"{wheel}: not a valid wheel (zip): {exc}") from exc


def _face_png(raw_bz2: bytes) -> bytes:
    """Decode SciPy's raw ``face.dat`` (bz2 of 1024x768 RGB) into PNG bytes."""
    try:
        raw = bz2.decompress(raw_bz2)
    except (OSError, ValueError) as exc:
        raise FetchError(f"scipy/misc/face.dat: not bz2 data: {exc}") from exc
    expected = int(np.prod(FACE_SHAPE))
    if len(raw) != expected:
        raise FetchError(f"scipy/misc/face.dat: {len(raw)} bytes, expected {expected}")
    arr = np.frombuffer(raw, np.uint8).reshape(FACE_SHAPE)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def _describe_image(data: bytes, where: str) -> dict[str, object]:
    """Decode fully (not just the header) so a corrupt download fails here, not in training."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, mode, (w, h) = im.format, im.mode, im.size
            im.load()
    except Exception as exc:  # Pillow raises many types for broken files
        raise FetchError(f"{where}: cannot decode image: {exc}") from exc
    return {"format": fmt, "mode": mode, "width": w, "height": h}


def fetch_training_photos(
    dest: Path, log: Log = print, *, cache_dir: Path | None = None
) -> list[Path]:
    """Download the packages in :data:`TRAINING_SOURCES` and write only allow-listed photos.

    Downloads (.deb via ``apt-get download``, wheels via ``pip download``) are kept in
    ``cache_dir`` (default :func:`default_cache_dir`) and reused, so re-running is cheap and
    offline.  Writes ``dest/manifest.json`` and ``dest/SOURCES.md`` recording each photo's
    package, version, member path, licence and sha256.  Returns the photo paths (66).
    """
    t0 = time.monotonic()
    dest = Path(dest).resolve()
    cache = (cache_dir or default_cache_dir()).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    dest.mkdir(parents=True, exist_ok=True)
    apt = _AptState(log)
    records: list[dict[str, object]] = []
    for source in TRAINING_SOURCES:
        if isinstance(source, DebSource):
            archive = _download_deb(cache, source, apt, log)
            version = _deb_version(archive)
            members = [source.prefix + f for f in source.files]
            blobs = _extract_deb(archive, members)
            pairs = [(f, blobs[source.prefix + f]) for f in source.files]
            credits = dict(source.credits)
        else:
            archive = _download_wheel(cache, source, log)
            version = archive.name.split("-")[1]
            blobs = _extract_wheel(archive, source.files)
            pairs = [(f, blobs[f]) for f in source.files]
            credits = dict(source.credits)
        if version != source.version:
            log(
                f"warning: {archive.name}: version {version}, allow-list was checked on "
                f"{source.version}"
            )
        for member, data in pairs:
            name = dest_name(source, member)
            out_path = dest / source.subdir / name
            rel = out_path.relative_to(dest).as_posix()
            out_data = _face_png(data) if member.endswith("face.dat") else data
            info = _describe_image(out_data, f"{archive.name}:{member}")
            _write_atomic(out_path, out_data)
            credit = credits.get(member, "")
            records.append(
                {
                    "path": rel,
                    "source": source.key,
                    "package": source.package,
                    "version": version,
                    "archive": archive.name,
                    "member": getattr(source, "prefix", "") + member,
                    "sha256": _sha256(out_data),
                    "source_sha256": _sha256(data),
                    "bytes": len(out_data),
                    **info,
                    "licence": credit.split("; ")[-1] if credit else source.licence,
                    "credit": credit.split("; ")[0] if credit else "",
                    "group": photo_group(out_path),
                }
            )
        log(f"{source.key} {source.package} {version}: {len(pairs)} photos -> {source.subdir}/")
    _write_manifest(dest, records)
    paths = [dest / str(r["path"]) for r in records]
    if len(paths) != EXPECTED_PHOTO_COUNT:
        raise FetchError(f"{dest}: wrote {len(paths)} photos, expected {EXPECTED_PHOTO_COUNT}")
    total = sum(int(r["bytes"]) for r in records)  # type: ignore[call-overload]
    mpx = sum(int(r["width"]) * int(r["height"]) for r in records) / 1e6  # type: ignore[call-overload]
    log(
        f"photos: {len(paths)} in {dest} ({total / 1e6:.1f} MB, {mpx:.1f} Mpx, "
        f"{time.monotonic() - t0:.0f} s)"
    )
    return paths


def _write_manifest(dest: Path, records: list[dict[str, object]]) -> None:
    manifest = {
        "description": "bswd training photos: only the allow-listed files of "
        "shared/data/train-sources.md; written by bswd.data.fetch_training_photos",
        "photos": records,
    }
    _write_atomic(dest / MANIFEST_NAME, (json.dumps(manifest, indent=1) + "\n").encode())
    lines = [
        "# Training photos",
        "",
        (
            "Only the allow-listed files of `shared/data/train-sources.md` "
            "(written by `bswd.data.fetch_training_photos`). Do not add other files here: "
            "the rest of these packages is reserved for evaluation."
        ),
        "",
        "| file | package | version | packaged path | size | licence | credit | sha256 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| `{r['path']}` | {r['package']} | {r['version']} | `{r['member']}` | "
            f"{r['width']}x{r['height']} {r['format']} | {r['licence']} | {r['credit']} | "
            f"`{r['sha256']}` |"
        )
    _write_atomic(dest / SOURCES_NAME, ("\n".join(lines) + "\n").encode())


def list_photos(root: Path) -> list[Path]:
    """Photos under ``root``: those in its manifest if it has one, else every PNG/JPEG.

    Preferring the manifest keeps stray files dropped into the folder out of training.
    """
    root = Path(root)
    manifest = root / MANIFEST_NAME
    if manifest.is_file():
        try:
            records = json.loads(manifest.read_text())["photos"]
            paths = [root / r["path"] for r in records]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{manifest}: not a bswd photo manifest: {exc}") from exc
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{manifest}: listed photos are missing: {missing[:5]}")
        return paths
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES and not p.name.startswith(".")
    )


# --------------------------------------------------------------------------------------------
# Grouping and the train/validation split
# --------------------------------------------------------------------------------------------

#: Near-duplicate sets (stereo pairs, two views of one scene, a burst).  Members of a set must
#: land in the same split, or validation would score images the model has in effect seen.
#: Patterns match the last path components without suffix, joined with "/", in both the
#: fetched (flattened ``opencv/data_aloeL``) and the packaged (``data/aloeL``) layouts.
NEAR_DUPLICATE_GROUPS: tuple[tuple[str, str], ...] = (
    ("opencv/aero", r"(?:^|[/_])aero[13]$"),  # overlapping aerial shots from one flight
    ("opencv/aloe", r"(?:^|[/_])aloe[LR]$"),
    ("opencv/left-right", r"(?:^|[/_])data[/_](?:left|right)$"),
    ("opencv/leuven", r"(?:^|[/_])leuven[AB]$"),
    ("opencv/graf", r"(?:^|[/_])graf[13]$"),
    ("opencv/hfs", r"(?:^|[/_])hfs[/_]data[/_]00[012]$"),
    ("skimage/motorcycle", r"(?:^|[/_])motorcycle_(?:left|right)$"),
)
_GROUP_RES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (g, re.compile(p)) for g, p in NEAR_DUPLICATE_GROUPS
)


def photo_group(path: str | os.PathLike[str]) -> str:
    """Group key of a photo: shared by near-duplicates, else ``<folder>/<stem>``.

    Depends only on the path's last components, never on the photo root, so the same photo
    gets the same key wherever the data folder lives.
    """
    p = Path(path)
    parts = [*p.parent.parts[-2:], p.stem]
    tail = "/".join(parts)
    for group, pattern in _GROUP_RES:
        if pattern.search(tail):
            return group
    return f"{p.parent.name}/{p.stem}"


def _group_unit(group: str, seed: int) -> float:
    digest = hashlib.sha256(f"bswd-split:{seed}:{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_train_val(
    paths: Iterable[str | os.PathLike[str]], val_fraction: float = 0.15, seed: int = 0
) -> tuple[list[Path], list[Path]]:
    """Split photos into (train, validation) by group, deterministically.

    Each group goes to validation when a hash of (seed, group key) falls below
    ``val_fraction``.  A group's side therefore never depends on which other photos are
    present (adding or dropping the optional hugin set moves nothing else), at the cost of the
    validation share being ``val_fraction`` only on average.  Input order is kept.
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    train: list[Path] = []
    val: list[Path] = []
    for raw in paths:
        p = Path(raw)
        (val if _group_unit(photo_group(p), seed) < val_fraction else train).append(p)
    return train, val


# --------------------------------------------------------------------------------------------
# Patch sampling
# --------------------------------------------------------------------------------------------

JPEG_FORMATS = frozenset({"JPEG", "MPO"})  # Pillow calls some camera JPEGs "MPO"


def jpeg_long_side_range(native_long: int, long_side: tuple[int, int]) -> tuple[int, int]:
    """Allowed range of the longer side for a JPEG whose native longer side is ``native_long``.

    JPEG pixels carry 8x8 block and chroma-subsampling artefacts that a lossless model must not
    learn, so JPEGs are always down-scaled at least 2x; within that cap the target range is
    ``long_side`` (Kodak-like scale).  Small JPEGs get exactly the 2x cap.
    """
    hi = min(long_side[1], native_long // 2)
    lo = min(long_side[0], hi)
    return lo, hi


@dataclass
class _Photo:
    path: Path
    is_jpeg: bool
    native_size: tuple[int, int]  # (width, height)
    variants: list[np.ndarray]  # HWC uint8


class PatchSampler:
    """Random ``patch x patch`` RGB crops from photos held in memory.

    JPEG sources are stored as ``n_scales`` LANCZOS down-scaled copies (longer side drawn in
    ``jpeg_long_side``, always at least 2x smaller); :meth:`refresh` redraws those scales, e.g.
    once per epoch.  PNG/raw sources are kept at native size.  Photos are chosen with
    probability proportional to their (mean, over scales) pixel count, so every pixel is about
    equally likely to be seen.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        patch: int = 32,
        jpeg_long_side: tuple[int, int] = (768, 1536),
        n_scales: int = 3,
        seed: int = 0,
        workers: int | None = None,
    ) -> None:
        if not paths:
            raise ValueError("PatchSampler needs at least one photo")
        if n_scales < 1:
            raise ValueError(f"n_scales must be >= 1, got {n_scales}")
        if not 1 <= jpeg_long_side[0] <= jpeg_long_side[1]:
            raise ValueError(
                f"jpeg_long_side must be (lo, hi) with 1 <= lo <= hi: {jpeg_long_side}"
            )
        self.patch = patch
        self.jpeg_long_side = jpeg_long_side
        self.n_scales = n_scales
        self.workers = workers or min(8, os.cpu_count() or 1)
        self._seed_seq = np.random.SeedSequence(seed)
        self.photos: list[_Photo] = [_Photo(Path(p), False, (0, 0), []) for p in paths]
        self.refresh()

    # ---- loading ------------------------------------------------------------------------

    def _load(self, photo: _Photo, seed: np.random.SeedSequence) -> None:
        if photo.variants and not photo.is_jpeg:
            return  # native-size sources never change; no need to decode them again
        rng = np.random.default_rng(seed)
        try:
            with Image.open(photo.path) as im:
                is_jpeg = im.format in JPEG_FORMATS
                rgb = im.convert("RGB")
        except Exception as exc:  # Pillow raises many types for unreadable files
            raise ValueError(f"{photo.path}: cannot load image: {exc}") from exc
        w, h = rgb.size
        photo.is_jpeg, photo.native_size = is_jpeg, (w, h)
        if is_jpeg:
            lo, hi = jpeg_long_side_range(max(w, h), self.jpeg_long_side)
            # Small JPEGs have a single allowed scale; don't hold identical copies of them.
            longs = rng.integers(lo, hi + 1, size=self.n_scales if hi > lo else 1)
            variants = []
            for long_new in longs:
                s = int(long_new) / max(w, h)
                size = (max(1, round(w * s)), max(1, round(h * s)))
                variants.append(np.asarray(rgb.resize(size, Image.Resampling.LANCZOS)))
        else:
            variants = [np.asarray(rgb)]
        small = [v.shape for v in variants if min(v.shape[:2]) < self.patch]
        if small:
            raise ValueError(
                f"{photo.path}: too small for {self.patch}x{self.patch} patches "
                f"(native {w}x{h}, scaled HxWxC {small[0]})"
            )
        photo.variants = variants

    def refresh(self) -> None:
        """(Re)load every photo, drawing new JPEG scales; call between epochs for variety."""
        seeds = self._seed_seq.spawn(len(self.photos))
        with ThreadPoolExecutor(self.workers) as pool:  # Pillow releases the GIL
            list(pool.map(self._load, self.photos, seeds))
        arrays: list[np.ndarray] = []
        weights: list[float] = []
        for photo in self.photos:
            for v in photo.variants:
                arrays.append(v)
                weights.append(v.shape[0] * v.shape[1] / len(photo.variants))
        self._arrays = arrays
        w = np.asarray(weights, dtype=np.float64)
        self._cum = np.cumsum(w / w.sum())
        self._cum[-1] = 1.0
        self._heights = np.asarray([a.shape[0] for a in arrays], dtype=np.int64)
        self._widths = np.asarray([a.shape[1] for a in arrays], dtype=np.int64)

    # ---- sampling -----------------------------------------------------------------------

    @property
    def total_pixels(self) -> int:
        """Pixels held (all scales), e.g. to size an epoch."""
        return int(sum(a.shape[0] * a.shape[1] for a in self._arrays))

    def __len__(self) -> int:
        return len(self.photos)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` random crops as uint8 ``[n, 3, patch, patch]``, each flipped left-right with p=1/2."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        p = self.patch
        idx = np.searchsorted(self._cum, rng.random(n), side="right")
        idx = np.minimum(idx, len(self._arrays) - 1)
        ys = (rng.random(n) * (self._heights[idx] - p + 1)).astype(np.int64)
        xs = (rng.random(n) * (self._widths[idx] - p + 1)).astype(np.int64)
        flips = rng.random(n) < 0.5
        out = np.empty((n, 3, p, p), dtype=np.uint8)
        arrays = self._arrays
        for i in range(n):
            y, x = ys[i], xs[i]
            crop = arrays[idx[i]][y : y + p, x : x + p]
            if flips[i]:
                crop = crop[:, ::-1]
            out[i] = crop.transpose(2, 0, 1)
        return out
