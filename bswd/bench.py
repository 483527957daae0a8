"""``bswd bench``: bswd and the classical lossless codecs on the same pixels, in the same run.

Every image is opened with Pillow and converted to 8-bit RGB (``Image.open(p).convert("RGB")``;
the first frame of an animation), optionally centre-cropped to at most N×N. Then, per image:

- bswd, once per scheme (``bitswap``, ``bbans``): the RGB pixels are written as a PPM file (the
  format with the least side data), split with ``split_image`` and coded by ``compress_images``;
  the size is the whole ``.bsw`` (header, lanes, side data). Compress time is
  ``compress_images``; decompress time is ``container.decode`` + ``decompress_many`` (which also
  rebuilds the PPM file). The rebuilt pixels are compared with the input: that is "lossless".
  Like ``bswd compress``, a plane whose model code would be larger than JPEG XL lossless or raw
  is stored that way (``stored`` in the JSON); ``allow_stored=False`` (``--no-stored``) always
  codes with the model. (bench codes the RGB pixels of every input, so for a grey, palette or
  alpha image its size differs from ``bswd compress`` of the file itself.)
- ``model -ELBO``: the integer model's ideal code length (``Compressed.info_bits`` of the first
  scheme), the bound the ``.bsw`` size is measured against (DESIGN §7). It has no file and no time.
- the classical codecs of ``bswd.classical`` (gzip, bzip2, xz/LZMA, PNG, WebP lossless at two
  settings, JPEG XL lossless at two efforts), each verified lossless by ``classical.measure``.

Every timing is repeated ``repeat`` times and the minimum kept. Speeds are MB/s of raw RGB
(raw bytes / seconds / 1e6). Before timing, each scheme codes one small crop untimed, so one-off
start-up costs (thread pools, CUDA context) do not land on the first image. Overall figures are
total bytes over total subpixels and total raw bytes over total seconds.

JSON written by ``--json`` (``report_json``), version ``JSON_VERSION``::

    {"bswd_bench": 1,
     "machine":  {cpu, cores, torch_threads, device, model_id, model_sha256, date,
                  python, torch, numpy, pillow, imagecodecs, platform},
     "settings": {pixels, bswd_input, repeat, crop, schemes, codecs, allow_stored, timing},
     "images":   [{name, width, height, n_subpixels, n_bytes_raw, results: [RESULT, ...]}],
     "overall":  {n_images, n_subpixels, n_bytes_raw, results: [RESULT, ...]}}

    RESULT = {name, kind ("bswd" | "bound" | "classical"), settings, size_bytes, percent_raw,
              bits_per_dim, encode_s, decode_s, encode_mb_s, decode_mb_s, lossless, unavailable,
              info_bits, model_bits, side_bytes, stored, overhead_vs_elbo}

Keys that do not apply are null (times of the bound, ``info_bits`` of a classical codec, every
figure of an unavailable codec). ``bits_per_dim`` of the bound is exact (``info_bits`` / subpixels);
its ``size_bytes`` is that rounded up to whole bytes.
"""

from __future__ import annotations

import io
import math
import os
import platform
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bswd.classical import CLASSICAL_CODECS, ClassicalCodec, CodecResult, format_table, measure
from bswd.shell import Exit, atomic_write, engine_or_fail, fail

JSON_VERSION = 1
SCHEMES: tuple[str, ...] = ("bitswap", "bbans")
PIXELS = '8-bit RGB: Image.open(path).convert("RGB")'
BSWD_INPUT = "the RGB pixels as a PPM file, split_image + compress_images; size = whole .bsw"
TIMING = "minimum over repeats; MB/s = raw RGB bytes / seconds / 1e6"
BOUND = "model -ELBO"
CHART_SIZE = (960, 640)
RESULT_KEYS = ("name", "kind", "settings", "size_bytes", "percent_raw", "bits_per_dim",
               "encode_s", "decode_s", "encode_mb_s", "decode_mb_s", "lossless", "unavailable",
               "info_bits", "model_bits", "side_bytes", "stored", "overhead_vs_elbo")
Clock = Callable[[], float]


class BenchInputError(ValueError):
    """A path that is missing or does not hold a readable image; the message names it."""


# ---- values -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """One row: a codec's result plus what only bswd rows have.

    ``result`` holds the size and the minimum times over repeats (0 for the bound, which has no
    time). ``info_bits`` is the integer model's -ELBO in bits (bswd and bound rows),
    ``model_bits`` the bits of the model-coded lanes and ``side_bytes`` the side data (bswd rows).
    """

    result: CodecResult
    kind: str  # "bswd", "bound" or "classical"
    settings: str
    info_bits: float | None = None
    model_bits: int | None = None
    side_bytes: int | None = None
    stored: bool = False


@dataclass(frozen=True)
class ImageBench:
    name: str
    width: int
    height: int
    rows: tuple[Measured, ...]

    @property
    def n_subpixels(self) -> int:
        return self.width * self.height * 3

    @property
    def n_bytes_raw(self) -> int:
        return self.n_subpixels  # one byte per 8-bit subpixel


@dataclass(frozen=True)
class BenchReport:
    machine: Mapping[str, Any]
    settings: Mapping[str, Any]
    images: tuple[ImageBench, ...]
    overall: tuple[Measured, ...]

    @property
    def n_subpixels(self) -> int:
        return sum(im.n_subpixels for im in self.images)


# ---- inputs -------------------------------------------------------------------------------------


def find_images(paths: Sequence[Path]) -> list[Path]:
    """Files as given and image files under folders (recursively, sorted); raises on a missing
    path or a folder without images."""
    from bswd.train_cmd import image_paths

    for p in paths:
        if not p.exists():
            raise BenchInputError(f"{p}: no such file or directory")
        if p.is_dir() and not image_paths([p]):
            raise BenchInputError(f"{p}: folder holds no images (.png, .jpg, .tif, .bmp, .ppm, .webp)")
    return image_paths(list(paths))


def centre_crop(pixels: np.ndarray, n: int | None) -> np.ndarray:
    """The central at most n×n pixels (all of them when ``n`` is None).

    >>> centre_crop(np.zeros((5, 8, 3), np.uint8), 4).shape
    (4, 4, 3)
    """
    if n is None:
        return pixels
    if n < 1:
        raise ValueError(f"crop must be at least 1, got {n}")
    h, w = pixels.shape[:2]
    top, left = max(0, (h - n) // 2), max(0, (w - n) // 2)
    return np.ascontiguousarray(pixels[top : top + n, left : left + n])


def load_rgb(path: Path, crop: int | None = None) -> np.ndarray:
    """H×W×3 uint8 pixels of ``path`` as Pillow converts them to RGB, centre-cropped."""
    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BenchInputError(f"{path}: cannot read as an image: {exc}") from exc
    if rgb.size == 0:
        raise BenchInputError(f"{path}: the image is empty")
    return centre_crop(rgb, crop)


# ---- measuring ----------------------------------------------------------------------------------


def ppm_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PPM")
    return buffer.getvalue()


def split_rgb(rgb: np.ndarray, name: str):
    """The SplitImage bswd codes for these pixels (see the module docstring)."""
    from bswd.images import split_image

    return split_image(ppm_bytes(rgb), name=name, verify=False)


def _rebuilt_pixels(data: bytes) -> np.ndarray | None:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im) if im.mode == "RGB" else None


def measure_bswd(engine, rgb: np.ndarray, scheme: str, *, repeat: int = 1,
                 clock: Clock, allow_stored: bool = True, name: str = "image") -> Measured:
    """Compress and decompress ``rgb`` with ``scheme`` ``repeat`` times; sizes from the .bsw."""
    from bswd import container
    from bswd.files import compress_images, decompress_many, plane_files, stored_channels

    split = split_rgb(rgb, name)
    encode_s, decode_s, lossless, first = [], [], True, None
    for _ in range(repeat):
        t0 = clock()
        [coded] = compress_images(engine, [split], scheme, allow_stored=allow_stored)
        t1 = clock()
        [(rebuilt, _ext)] = decompress_many(engine, [container.decode(coded.data)])
        t2 = clock()
        encode_s.append(t1 - t0)
        decode_s.append(t2 - t1)
        back = _rebuilt_pixels(rebuilt)
        first = first or coded
        lossless = (lossless and back is not None and np.array_equal(back, rgb)
                    and coded.data == first.data)
    assert first is not None
    stored = any(stored_channels(p) for p in plane_files(container.decode(first.data)))
    result = CodecResult(f"bswd-{scheme}", len(first.data), min(encode_s), min(decode_s), lossless)
    return Measured(result, "bswd", f"{scheme}, model {engine.model.model_id}", first.info_bits,
                    first.model_bits, len(split.side), stored)


def measure_classical(rgb: np.ndarray, name: str, *, repeat: int = 1, clock: Clock,
                      registry: Mapping[str, ClassicalCodec] = CLASSICAL_CODECS) -> Measured:
    """``classical.measure`` ``repeat`` times; minimum times, lossless only if every run was."""
    runs = [measure(name, rgb, clock, registry=registry) for _ in range(repeat)]
    first = runs[0]
    if first.available:
        same = all(r.size_bytes == first.size_bytes and r.lossless for r in runs)
        first = replace(first, encode_s=min(r.encode_s for r in runs),
                        decode_s=min(r.decode_s for r in runs), lossless=same)
    return Measured(first, "classical", registry[name].settings)


def bound_row(bswd_rows: Sequence[Measured]) -> Measured:
    """The -ELBO row from the first bswd row (unavailable when its plane was not model-coded)."""
    first = bswd_rows[0]
    settings = f"integer model -ELBO ({first.result.name[5:]} run); no file, no time"
    if first.stored or not first.info_bits:
        reason = "plane stored as JPEG XL lossless or raw, model code was larger (measure with --no-stored)"
        return Measured(CodecResult(BOUND, 0, 0.0, 0.0, False, reason), "bound", settings)
    size = math.ceil(first.info_bits / 8)
    return Measured(CodecResult(BOUND, size, 0.0, 0.0, True), "bound", settings, first.info_bits)


def warm_up(engine, rgb: np.ndarray, schemes: Sequence[str]) -> None:
    """Code a ≤32×32 crop once per scheme, untimed, so start-up costs miss the first image."""
    for scheme in schemes:
        measure_bswd(engine, np.ascontiguousarray(rgb[:32, :32]), scheme, clock=lambda: 0.0)


def bench_image(engine, name: str, rgb: np.ndarray, *, schemes: Sequence[str] = SCHEMES,
                codecs: Sequence[str] = tuple(CLASSICAL_CODECS), repeat: int = 1,
                clock: Clock, allow_stored: bool = True) -> ImageBench:
    """Every bswd scheme, the -ELBO and every classical codec on one H×W×3 uint8 image."""
    bswd_rows = [measure_bswd(engine, rgb, s, repeat=repeat, clock=clock,
                              allow_stored=allow_stored, name=name) for s in schemes]
    rows = (bswd_rows + [bound_row(bswd_rows)]) if bswd_rows else []
    rows += [measure_classical(rgb, c, repeat=repeat, clock=clock) for c in codecs]
    return ImageBench(name, rgb.shape[1], rgb.shape[0], tuple(rows))


def _total(column: Sequence[Measured], key: str) -> Any:
    values = [getattr(m, key) for m in column]
    return None if any(v is None for v in values) else sum(values)


def overall(images: Sequence[ImageBench]) -> tuple[Measured, ...]:
    """Row by row totals: bytes, seconds and bits summed; lossless only if every image was."""
    out = []
    for column in zip(*(im.rows for im in images)):
        first = column[0]
        missing = next((m.result.unavailable for m in column if not m.result.available), None)
        if missing is not None:
            result = CodecResult(first.result.name, 0, 0.0, 0.0, False, missing)
            out.append(Measured(result, first.kind, first.settings))
            continue
        result = CodecResult(first.result.name, sum(m.result.size_bytes for m in column),
                             sum(m.result.encode_s for m in column),
                             sum(m.result.decode_s for m in column),
                             all(m.result.lossless for m in column))

        out.append(Measured(result, first.kind, first.settings, _total(column, "info_bits"),
                            _total(column, "model_bits"), _total(column, "side_bytes"),
                            any(m.stored for m in column)))
    return tuple(out)


def run_bench(engine, images: Sequence[tuple[str, np.ndarray]], *, machine: Mapping[str, Any],
              schemes: Sequence[str] = SCHEMES, codecs: Sequence[str] = tuple(CLASSICAL_CODECS),
              repeat: int = 1, crop: int | None = None, clock: Clock, allow_stored: bool = True,
              progress: Callable[[str], None] | None = None) -> BenchReport:
    """Benchmark named RGB images (already loaded and cropped) and total them."""
    if images and schemes:
        warm_up(engine, images[0][1], schemes)
    done = []
    for i, (name, rgb) in enumerate(images):
        if progress is not None:
            progress(f"[{i + 1}/{len(images)}] {name} {rgb.shape[1]}x{rgb.shape[0]}")
        done.append(bench_image(engine, name, rgb, schemes=schemes, codecs=codecs, repeat=repeat,
                                clock=clock, allow_stored=allow_stored))
    settings = {"pixels": PIXELS, "bswd_input": BSWD_INPUT, "repeat": repeat, "crop": crop,
                "schemes": list(schemes), "codecs": list(codecs), "allow_stored": allow_stored,
                "timing": TIMING}
    return BenchReport(dict(machine), settings, tuple(done), overall(done))


# ---- machine facts ------------------------------------------------------------------------------


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The ``model name`` of the first CPU in ``cpuinfo``, else what ``platform`` says."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_facts(engine, *, now: datetime, cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    import PIL
    import torch

    try:
        import imagecodecs

        codecs_version = imagecodecs.__version__
    except ImportError:
        codecs_version = None
    device = engine.model.nets.device
    device_text = str(device)
    if device.type == "cuda":
        device_text += f" ({torch.cuda.get_device_name(device)})"
    return {"cpu": cpu_model(cpuinfo), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": device_text,
            "model_id": engine.model.model_id, "model_sha256": engine.model.sha256.hex(),
            "date": now.isoformat(timespec="seconds"), "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__, "pillow": PIL.__version__,
            "imagecodecs": codecs_version, "platform": platform.platform()}


# ---- formatting ---------------------------------------------------------------------------------


def _mb_s(n_bytes: int, seconds: float) -> float | None:
    return n_bytes / seconds / 1e6 if seconds > 0 else None


def result_json(m: Measured, n_bytes_raw: int, n_subpixels: int) -> dict[str, Any]:
    r = m.result
    out: dict[str, Any] = dict.fromkeys(RESULT_KEYS)
    out.update(name=r.name, kind=m.kind, settings=m.settings, lossless=r.lossless,
               unavailable=r.unavailable, stored=m.stored)
    if not r.available:
        return out
    bits = m.info_bits if m.kind == "bound" and m.info_bits else 8.0 * r.size_bytes
    timed = m.kind != "bound"
    out.update(size_bytes=r.size_bytes, percent_raw=100.0 * r.size_bytes / n_bytes_raw,
               bits_per_dim=bits / n_subpixels, info_bits=m.info_bits, model_bits=m.model_bits,
               side_bytes=m.side_bytes)
    if timed:
        out.update(encode_s=r.encode_s, decode_s=r.decode_s,
                   encode_mb_s=_mb_s(n_bytes_raw, r.encode_s),
                   decode_mb_s=_mb_s(n_bytes_raw, r.decode_s))
    if m.kind == "bswd" and m.info_bits:
        out["overhead_vs_elbo"] = 8.0 * r.size_bytes / m.info_bits - 1.0
    return out


def report_json(report: BenchReport) -> dict[str, Any]:
    """Everything measured, in the layout of the module docstring."""
    images = [{"name": im.name, "width": im.width, "height": im.height,
               "n_subpixels": im.n_subpixels, "n_bytes_raw": im.n_bytes_raw,
               "results": [result_json(m, im.n_bytes_raw, im.n_subpixels) for m in im.rows]}
              for im in report.images]
    n_sub = report.n_subpixels
    total = {"n_images": len(report.images), "n_subpixels": n_sub, "n_bytes_raw": n_sub,
             "results": [result_json(m, n_sub, n_sub) for m in report.overall] if n_sub else []}
    return {"bswd_bench": JSON_VERSION, "machine": dict(report.machine),
            "settings": dict(report.settings), "images": images, "overall": total}


def header_lines(report: BenchReport) -> list[str]:
    m, s = report.machine, report.settings
    crop = f", centre crop to at most {s['crop']}x{s['crop']}" if s.get("crop") else ""
    return [
        (f"bswd bench {m['date']}: CPU {m['cpu']}, {m['cores']} cores, torch threads "
         f"{m['torch_threads']}, device {m['device']}, model {m['model_id']} "
         f"(sha256 {m['model_sha256'][:12]}), JPEG XL threads {m['cores']}"),
        f"pixels: {s['pixels']}{crop}; timing: {s['timing']}, repeat {s['repeat']}",
    ]


def _notes(rows: Sequence[Measured]) -> list[str]:
    bound = next((m for m in rows if m.kind == "bound" and m.result.available), None)
    notes = []
    for m in rows:
        if m.kind == "bswd" and m.stored:
            notes.append(f"{m.result.name}: a plane was stored as JPEG XL lossless or raw (the model's code "
                         "was larger), as bswd compress does; --no-stored measures the model coding")
    if bound is not None and bound.info_bits:
        over = [f"{m.result.name} {100 * (8 * m.result.size_bytes / bound.info_bits - 1):+.2f}%"
                for m in rows if m.kind == "bswd" and m.result.available and not m.stored]
        if over:
            notes.append("size over the model -ELBO: " + ", ".join(over))
    return notes


def format_report(report: BenchReport) -> str:
    """The header, one table per image, the overall table and notes, as plain text."""
    out = header_lines(report)
    for im in report.images:
        out += ["", f"{im.name}: {im.width}x{im.height}, {im.n_bytes_raw:,} bytes raw RGB"]
        out.append(format_table([m.result for m in im.rows], n_bytes_raw=im.n_bytes_raw))
        out += _notes(im.rows)
    n = report.n_subpixels
    if n:
        out += ["", f"overall: {len(report.images)} image(s), {n:,} bytes raw RGB"]
        out.append(format_table([m.result for m in report.overall], n_bytes_raw=n))
        out += _notes(report.overall)
    return "\n".join(out)


# ---- chart --------------------------------------------------------------------------------------


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _nice_step(span: float) -> float:
    raw = max(span, 1e-9) / 6
    scale = 10 ** math.floor(math.log10(raw))
    return next(k * scale for k in (1, 2, 2.5, 5, 10) if k * scale >= raw)


def chart_points(report: BenchReport) -> list[tuple[str, str, float, float]]:
    """(name, kind, compress MB/s, bits/dim) of every overall row that has a speed."""
    n = report.n_subpixels
    return [(m.result.name, m.kind, n / m.result.encode_s / 1e6, 8.0 * m.result.size_bytes / n)
            for m in report.overall
            if m.kind != "bound" and m.result.available and m.result.encode_s > 0]


def draw_chart(report: BenchReport, size: tuple[int, int] = CHART_SIZE) -> Image.Image:
    """Overall bits/dim (y) against compress MB/s (x, log scale), one labelled point a codec."""
    width, height = size
    left, right, top, bottom = 70, 30, 64, 56
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(14), _font(12)
    points = chart_points(report)
    bound = next((m.info_bits / report.n_subpixels for m in report.overall
                  if m.kind == "bound" and m.info_bits), None)
    m = report.machine
    draw.text((left, 8), f"bswd bench: overall bits/dim against compress speed, "
              f"{len(report.images)} image(s), {report.n_subpixels / 1e6:.2f} MB raw RGB",
              fill="black", font=font)
    draw.text((left, 28), f"{m.get('cpu')}, torch threads {m.get('torch_threads')}, device "
              f"{m.get('device')}, model {m.get('model_id')}, {m.get('date')}",
              fill="#555555", font=small)
    x0, x1, y0, y1 = left, width - right, top, height - bottom
    draw.rectangle((x0, y0, x1, y1), outline="black")
    draw.text((x0, height - 24), "x: compress MB/s of raw RGB (log scale), right is faster;   "
              "y: bits/dim, lower is smaller", fill="black", font=small)
    if not points:
        draw.text((x0 + 10, y0 + 10), "no codec with a measured speed", fill="black", font=font)
        return image
    logs = [math.log10(p[2]) for p in points]
    lo, hi = math.floor(min(logs)), math.ceil(max(logs))
    hi = hi if hi > lo else lo + 1
    ys = [p[3] for p in points] + ([bound] if bound is not None else [])
    step = _nice_step(max(ys) - min(ys))
    ylo, yhi = max(0.0, math.floor(min(ys) / step - 0.5) * step), math.ceil(max(ys) / step + 0.5) * step

    def px(mb_s: float) -> float:
        return x0 + (math.log10(mb_s) - lo) / (hi - lo) * (x1 - x0)

    def py(bpd: float) -> float:
        return y1 - (bpd - ylo) / (yhi - ylo) * (y1 - y0)

    for decade in range(lo, hi + 1):
        for k in range(1, 10) if decade < hi else (1,):
            x = px(k * 10.0**decade)
            draw.line((x, y0, x, y1), fill="#dddddd" if k == 1 else "#f2f2f2")
        x = px(10.0**decade)
        text = f"{10.0**decade:g}"
        draw.text((x - draw.textlength(text, font=small) / 2, y1 + 4), text, fill="black",
                  font=small)
    for i in range(round((yhi - ylo) / step) + 1):
        y = py(ylo + i * step)
        draw.line((x0, y, x1, y), fill="#e6e6e6")
        text = f"{ylo + i * step:g}"
        draw.text((x0 - 6 - draw.textlength(text, font=small), y - 7), text, fill="black",
                  font=small)
    if bound is not None:
        y = py(bound)
        for x in range(int(x0), int(x1), 12):
            draw.line((x, y, min(x + 6, x1), y), fill="#2ca02c", width=2)
        draw.text((x1 - 170, y - 16), f"{BOUND} {bound:.3f}", fill="#2ca02c", font=small)
    placed: list[tuple[float, float, float, float]] = []
    for name, kind, mb_s, bpd in points:
        x, y = px(mb_s), py(bpd)
        colour = "#d62728" if kind == "bswd" else "#1f77b4"
        draw.ellipse((x - 5, y - 5, x + 5, y + 5), fill=colour, outline="black")
        label = f"{name} {bpd:.3f}"
        w = draw.textlength(label, font=small)
        for dx, dy in ((8, -8), (8, 6), (-8 - w, -8), (-8 - w, 6), (8, -22), (8, 20), (-8 - w, 20)):
            box = (x + dx, y + dy, x + dx + w, y + dy + 13)
            inside = box[0] >= x0 and box[2] <= x1 and box[1] >= y0 and box[3] <= y1
            if inside and not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3]
                                  and b[1] < box[3] for b in placed):
                break
        placed.append(box)
        draw.text(box[:2], label, fill=colour, font=small)
    return image


def chart_png(report: BenchReport, size: tuple[int, int] = CHART_SIZE) -> bytes:
    buffer = io.BytesIO()
    draw_chart(report, size).save(buffer, "PNG")
    return buffer.getvalue()


# ---- the command --------------------------------------------------------------------------------


def _names(text: str, known: Sequence[str], what: str) -> list[str]:
    names = [] if text.strip().lower() == "none" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(unknown)}; known: {', '.join(known)}")
    return names


def run_bench_command(paths: list[Path], model: Path | None, device: str, schemes: str,
                      codecs: str, repeat: int, crop: int | None, json_path: Path | None,
                      chart_path: Path | None, allow_stored: bool, threads: int | None,
                      force: bool, quiet: bool) -> Exit:
    """The shell around ``run_bench``: parse, load, measure, print and write."""
    import json
    import time

    try:
        scheme_list = _names(schemes, SCHEMES, "scheme")
        codec_list = _names(codecs, tuple(CLASSICAL_CODECS), "codec")
        if not scheme_list:
            raise ValueError("give at least one scheme (bitswap, bbans)")
    except ValueError as exc:
        fail(str(exc))
        return Exit.USAGE
    for out in (json_path, chart_path):
        if out is not None and out.exists() and not force:
            fail(f"{out}: already exists (use --force to overwrite)")
            return Exit.FAILED
    try:
        images = [(str(p), load_rgb(p, crop)) for p in find_images(paths)]
    except BenchInputError as exc:
        fail(str(exc))
        return Exit.FAILED
    engine = engine_or_fail(model, device, threads)
    if engine is None:
        return Exit.FAILED
    machine = machine_facts(engine, now=datetime.now().astimezone())

    def progress(line: str) -> None:
        if not quiet:
            print(f"bench {line}", file=sys.stderr, flush=True)

    report = run_bench(engine, images, machine=machine, schemes=scheme_list, codecs=codec_list,
                       repeat=repeat, crop=crop, clock=time.perf_counter,
                       allow_stored=allow_stored, progress=progress)
    print(format_report(report))
    status = Exit.OK
    if not all(m.result.lossless for m in report.overall if m.result.available):
        fail("a codec did not give back the exact pixels (rows marked NOT LOSSLESS)")
        status = Exit.FAILED
    try:
        if json_path is not None:
            text = json.dumps(report_json(report), indent=1, allow_nan=False) + "\n"
            atomic_write(json_path, text.encode(), overwrite=force)
        if chart_path is not None:
            atomic_write(chart_path, chart_png(report), overwrite=force)
    except OSError as exc:
        fail(f"cannot write: {exc}")
        status = Exit.FAILED
    return status
