"""Regenerate the photo crops in tests/data/ and bswd/samples/sample.png.

Usage: python tests/data/make_fixtures.py [PHOTOS]   (PHOTOS defaults to data/photos, as
written by ``bswd.data.fetch_training_photos``).

Every crop comes from a photo that ``bswd.data.split_train_val`` (default fraction and seed)
puts in the validation split, so tests and benchmarks score held-out images; the script refuses
otherwise.  JPEG sources are first down-scaled at least 2x with LANCZOS so the crops carry no
8x8-block or chroma-subsampling artefacts (a lossless codec should be tested on clean pixels).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Crop:
    """One fixture: ``source`` scaled by 1/``downscale`` (LANCZOS), then cropped to ``box``."""

    out: str  # path relative to the repo root
    source: str  # path relative to the photos folder
    downscale: float  # 1 = native size
    box: tuple[int, int, int, int]  # (left, top, right, bottom) in the scaled image


CROPS: tuple[Crop, ...] = (
    Crop("tests/data/home_64x64.png", "opencv/reg_home.png", 1, (112, 100, 176, 164)),
    Crop("tests/data/messi_96x64.png", "opencv/data_messi5.jpg", 2, (60, 40, 156, 104)),
    Crop("tests/data/orange_128x128.png", "opencv/data_orange.jpg", 2, (64, 32, 192, 160)),
    Crop("tests/data/rocket_200x150.png", "skimage/rocket.jpg", 2, (60, 60, 260, 210)),
    Crop("tests/data/building_150x100.png", "hugin/CA_tCA00.jpg", 2, (100, 20, 250, 120)),
    Crop(
        "tests/data/cups_37x53.png",
        "plasma/ColorfulCups_contents_images_2560x1600.jpg",
        4,
        (250, 160, 287, 213),
    ),
    Crop(
        "tests/data/bird_512x512.png",
        "lomiri16/free_by_Peter_Nerlich.jpg",
        2.5,
        (250, 280, 762, 792),
    ),
    Crop("bswd/samples/sample.png", "skimage/rocket.jpg", 2.5, (0, 0, 256, 171)),
)


def make(crop: Crop, photos: Path) -> Image.Image:
    """Load, down-scale (if asked) and crop one fixture."""
    with Image.open(photos / crop.source) as im:
        rgb = im.convert("RGB")
    if crop.downscale != 1:
        size = (round(rgb.width / crop.downscale), round(rgb.height / crop.downscale))
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
    right, bottom = crop.box[2:]
    if right > rgb.width or bottom > rgb.height:
        raise ValueError(f"{crop.source}: box {crop.box} outside scaled size {rgb.size}")
    return rgb.crop(crop.box)


def main(photos: Path) -> None:
    """Write every fixture in :data:`CROPS`, checking each source is held out."""
    sys.path.insert(0, str(REPO))  # runnable from a checkout without installing bswd
    from bswd.data import list_photos, split_train_val

    _, val = split_train_val(list_photos(photos))
    val_rel = {p.relative_to(photos).as_posix() for p in val}
    for crop in CROPS:
        if crop.source not in val_rel:
            raise SystemExit(f"{crop.source}: not in the validation split; pick another photo")
        img = make(crop, photos)
        out = REPO / crop.out
        out.parent.mkdir(parents=True, exist_ok=True)
        img.save(out, format="PNG", optimize=True)
        print(f"{crop.out}: {img.width}x{img.height}, {out.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "data" / "photos").resolve())
