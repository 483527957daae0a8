"""Tests for bswd.data: allow-list, grouping, split, patch sampling (no network)."""

from __future__ import annotations

import bz2
import importlib.util
import io
import json
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bswd import data
from bswd.data import (
    EXPECTED_PHOTO_COUNT,
    TRAINING_SOURCES,
    FetchError,
    PatchSampler,
    dest_name,
    jpeg_long_side_range,
    list_photos,
    photo_group,
    split_train_val,
)

TESTS = Path(__file__).resolve().parent


def allowed_paths(root: Path = Path("photos")) -> list[Path]:
    """The paths fetch_training_photos writes, derived from the allow-list alone."""
    return [root / s.subdir / dest_name(s, f) for s in TRAINING_SOURCES for f in s.files]


# ---- allow-list -----------------------------------------------------------------------------


def test_allow_list_has_66_distinct_photos() -> None:
    paths = allowed_paths()
    assert len(paths) == EXPECTED_PHOTO_COUNT
    assert len(set(paths)) == len(paths)
    assert Path("photos/scipy/face.png") in paths
    assert Path("photos/opencv/data_aloeL.jpg") in paths


def test_allow_list_credits_name_listed_files() -> None:
    for source in TRAINING_SOURCES:
        for member, _ in source.credits:
            assert member in source.files, (source.package, member)


# ---- grouping and split -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "members",
    [
        ("opencv/data_aloeL.jpg", "opencv/data_aloeR.jpg"),
        ("opencv/data_left.jpg", "opencv/data_right.jpg"),
        ("opencv/data_leuvenA.jpg", "opencv/data_leuvenB.jpg"),
        ("opencv/data_graf1.png", "opencv/data_graf3.png"),
        ("opencv/data_aero1.jpg", "opencv/data_aero3.jpg"),
        ("skimage/motorcycle_left.png", "skimage/motorcycle_right.png"),
        ("opencv/hfs_data_000.jpg", "opencv/hfs_data_001.jpg", "opencv/hfs_data_002.jpg"),
        # the packaged layout groups the same way
        ("examples/data/aloeL.jpg", "opencv/data_aloeR.jpg"),
        ("examples/hfs/data/001.jpg", "opencv/hfs_data_002.jpg"),
    ],
)
def test_near_duplicates_share_a_group(members: tuple[str, ...]) -> None:
    assert len({photo_group(Path("/x") / m) for m in members}) == 1


def test_groups_are_independent_of_root_and_distinct_otherwise() -> None:
    a = allowed_paths(Path("/data/photos"))
    b = allowed_paths(Path("relative/elsewhere"))
    assert [photo_group(p) for p in a] == [photo_group(p) for p in b]
    assert photo_group("x/opencv/data_left.jpg") != photo_group("x/opencv/data_leuvenA.jpg")
    assert photo_group("x/opencv/data_home.jpg") != photo_group("x/opencv/reg_home.png")
    # 66 photos, 15 of them in 7 near-duplicate groups -> 58 groups
    assert len({photo_group(p) for p in a}) == 58


def test_split_keeps_groups_together_and_is_deterministic() -> None:
    paths = allowed_paths()
    for seed in range(20):
        train, val = split_train_val(paths, seed=seed)
        assert sorted(train + val) == sorted(paths)
        assert not {photo_group(p) for p in train} & {photo_group(p) for p in val}
        assert split_train_val(list(paths), seed=seed) == (train, val)
    assert split_train_val(paths, seed=0) != split_train_val(paths, seed=1)


def test_split_of_a_group_does_not_depend_on_other_photos() -> None:
    paths = allowed_paths()
    _, val = split_train_val(paths)
    _, val_subset = split_train_val(paths[::3])
    assert set(val_subset) == set(val) & set(paths[::3])


def test_split_fraction_edges_and_errors() -> None:
    paths = allowed_paths()
    assert split_train_val(paths, val_fraction=0.0) == (paths, [])
    assert split_train_val(paths, val_fraction=1.0) == ([], paths)
    _, val = split_train_val(paths, val_fraction=0.5)
    assert 15 < len(val) < 51
    with pytest.raises(ValueError, match="val_fraction"):
        split_train_val(paths, val_fraction=1.5)


def test_committed_fixtures_come_from_validation_photos() -> None:
    spec = importlib.util.spec_from_file_location("make_fixtures", TESTS / "data/make_fixtures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    root = Path("photos")
    _, val = split_train_val(allowed_paths(root))
    val_rel = {p.relative_to(root).as_posix() for p in val}
    for crop in module.CROPS:
        assert crop.source in val_rel, crop
        out = TESTS.parent / crop.out
        assert out.is_file(), out
        with Image.open(out) as im:
            assert im.mode == "RGB"
            assert im.size == (crop.box[2] - crop.box[0], crop.box[3] - crop.box[1])


# ---- fetch helpers (offline parts) --------------------------------------------------------


def test_face_dat_is_converted_to_png() -> None:
    raw = np.arange(np.prod(data.FACE_SHAPE), dtype=np.uint64).astype(np.uint8)
    png = data._face_png(bz2.compress(raw.tobytes()))
    with Image.open(io.BytesIO(png)) as im:
        arr = np.asarray(im)
    assert arr.shape == data.FACE_SHAPE
    assert np.array_equal(arr.reshape(-1), raw)
    with pytest.raises(FetchError, match="face.dat"):
        data._face_png(bz2.compress(b"short"))


def test_wheel_extraction_names_missing_files(tmp_path: Path) -> None:
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/data/a.png", b"A")
    assert data._extract_wheel(wheel, ["pkg/data/a.png"]) == {"pkg/data/a.png": b"A"}
    with pytest.raises(FetchError, match=r"pkg-1\.0.*pkg/data/b\.png"):
        data._extract_wheel(wheel, ["pkg/data/a.png", "pkg/data/b.png"])


def test_list_photos_prefers_the_manifest(tmp_path: Path) -> None:
    for name in ("a/x.png", "b/y.jpg", "stray.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 40)).save(tmp_path / name)
    assert len(list_photos(tmp_path)) == 3
    manifest = {"photos": [{"path": "a/x.png"}, {"path": "b/y.jpg"}]}
    (tmp_path / data.MANIFEST_NAME).write_text(json.dumps(manifest))
    assert list_photos(tmp_path) == [tmp_path / "a/x.png", tmp_path / "b/y.jpg"]
    (tmp_path / "a/x.png").unlink()
    with pytest.raises(FileNotFoundError, match="x.png"):
        list_photos(tmp_path)


# ---- patch sampling -----------------------------------------------------------------------


def _positions(src: np.ndarray, patch: np.ndarray) -> set[tuple[int, int]]:
    """Every (y, x) where the HWC ``patch`` occurs in ``src``."""
    p = patch.shape[0]
    corner = (src[: src.shape[0] - p + 1, : src.shape[1] - p + 1] == patch[0, 0]).all(axis=-1)
    return {
        (int(y), int(x))
        for y, x in np.argwhere(corner)
        if np.array_equal(src[y : y + p, x : x + p], patch)
    }


def test_patches_are_real_crops_with_real_flips(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    src = rng.integers(0, 256, size=(45, 70, 3), dtype=np.uint8)
    Image.fromarray(src).save(tmp_path / "noise.png")
    sampler = PatchSampler([tmp_path / "noise.png"], seed=3)
    out = sampler.sample(200, np.random.default_rng(2))
    assert out.shape == (200, 3, 32, 32) and out.dtype == np.uint8
    flipped = 0
    for patch in out.transpose(0, 2, 3, 1):
        direct = _positions(src, patch)
        mirrored = _positions(src, patch[:, ::-1])
        assert direct or mirrored, "patch is not a crop of the source"
        flipped += bool(mirrored) and not direct
    assert 60 < flipped < 140  # about half are mirrored


def test_sampling_is_reproducible_and_weighted_by_pixels(tmp_path: Path) -> None:
    Image.new("RGB", (64, 64), (10, 10, 10)).save(tmp_path / "small.png")
    Image.new("RGB", (128, 64), (200, 200, 200)).save(tmp_path / "large.png")
    sampler = PatchSampler([tmp_path / "small.png", tmp_path / "large.png"], patch=16)
    a = sampler.sample(3000, np.random.default_rng(7))
    b = sampler.sample(3000, np.random.default_rng(7))
    assert a.shape == (3000, 3, 16, 16)
    assert np.array_equal(a, b)
    share_small = float((a[:, 0, 0, 0] == 10).mean())
    assert abs(share_small - 1 / 3) < 0.05
    assert sampler.sample(0, np.random.default_rng(0)).shape == (0, 3, 16, 16)


def test_jpeg_sources_are_downscaled_at_least_2x(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:1200, 0:2000]
    img = np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "big.jpg", quality=90)
    Image.fromarray(img[:300, :400]).save(tmp_path / "small.jpg", quality=90)
    Image.fromarray(img[:50, :60]).save(tmp_path / "lossless.png")
    sampler = PatchSampler(sorted(tmp_path.iterdir()), n_scales=4, seed=5)
    by_name = {p.path.name: p for p in sampler.photos}
    big = by_name["big.jpg"]
    assert big.is_jpeg and big.native_size == (2000, 1200) and len(big.variants) == 4
    lo, hi = jpeg_long_side_range(2000, (768, 1536))
    assert (lo, hi) == (768, 1000)
    for v in big.variants:
        assert lo <= max(v.shape[:2]) <= hi and v.dtype == np.uint8 and v.shape[2] == 3
    small = by_name["small.jpg"]
    assert [v.shape for v in small.variants] == [(150, 200, 3)]  # exactly 2x, one copy
    png = by_name["lossless.png"]
    assert not png.is_jpeg and np.array_equal(png.variants[0], img[:50, :60])
    before = [v.shape for v in big.variants]
    sampler.refresh()
    assert [v.shape for v in big.variants] != before  # new scales each refresh


def test_rgba_and_grey_sources_become_rgb(tmp_path: Path) -> None:
    Image.new("RGBA", (40, 40), (1, 2, 3, 4)).save(tmp_path / "rgba.png")
    Image.new("L", (40, 40), 9).save(tmp_path / "grey.png")
    sampler = PatchSampler([tmp_path / "rgba.png", tmp_path / "grey.png"])
    out = sampler.sample(50, np.random.default_rng(0))
    assert set(map(tuple, out[:, :, 0, 0].tolist())) <= {(1, 2, 3), (9, 9, 9)}


def test_unusable_photos_are_named(tmp_path: Path) -> None:
    Image.new("RGB", (20, 40)).save(tmp_path / "tiny.png")
    with pytest.raises(ValueError, match="tiny.png.*too small"):
        PatchSampler([tmp_path / "tiny.png"])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png.*cannot load"):
        PatchSampler([tmp_path / "broken.png"])


def test_sampling_is_fast(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png"
        )
    sampler = PatchSampler(sorted(tmp_path.iterdir()))
    sampler.sample(64, rng)
    t0 = time.perf_counter()
    for _ in range(20):
        sampler.sample(64, rng)
    assert (time.perf_counter() - t0) / 20 < 0.01
