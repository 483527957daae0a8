"""``bswd compress`` / ``bswd decompress`` / ``bswd inspect``: the one-shot file commands."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bswd import container
from bswd.codec import SCHEMES, Geometry
from bswd.shell import (
    Exit,
    atomic_write,
    build_engine,
    engine_or_fail,
    fail,
    human_bytes,
    not_a_regular_file,
    progress_bar,
)

BSW_SUFFIX = ".bsw"
_SAME_EXT = {".jpeg": ".jpg", ".tif": ".tiff", ".pgm": ".ppm", ".pbm": ".ppm", ".pnm": ".ppm"}


@dataclass
class _Job:
    source: Path
    target: Path
    data: bytes
    split: object  # images.SplitImage


class _WriteError(Exception):
    """Writing an output failed (the message names the output, not the input)."""


class _NameError(Exception):
    """The output name given does not fit what the input decodes to."""


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def _target_refusal(src: Path, target: Path, force: bool) -> str | None:
    """Why ``target`` may not be written for ``src`` (compress and decompress alike), else None."""
    if _same_file(target, src):
        return f"{src}: its output would replace the input itself"
    if target.exists() and not force:
        return f"{target}: already exists (use --force to overwrite)"
    return None


def _target_for(source: Path, output: Path | None, n_inputs: int) -> Path:
    if output is None:
        return source.with_name(source.name + BSW_SUFFIX)
    if n_inputs == 1 and output.suffix == BSW_SUFFIX and not output.is_dir():
        return output
    return output / (source.name + BSW_SUFFIX)


def run_compress(files: list[Path], output: Path | None, model: Path | None, scheme: str, compare: bool,
                 allow_lossy_source: bool, verify: bool, force: bool, max_pixels: int, device: str,
                 quiet: bool) -> Exit:
    if scheme not in SCHEMES:
        fail(f"unknown scheme {scheme!r}; use bitswap or bbans")
        return Exit.USAGE
    if max_pixels < 1:
        fail(f"--max-pixels must be at least 1, got {max_pixels}")
        return Exit.USAGE
    if output is not None and output.suffix == BSW_SUFFIX and not output.is_dir():
        if len(files) > 1:
            fail(f"-o {output}: with several inputs, -o must be a folder")
            return Exit.USAGE
        if not output.parent.is_dir():
            fail(f"-o {output}: folder {output.parent} does not exist")
            return Exit.USAGE
    elif output is not None:
        if output.exists() and not output.is_dir():
            fail(f"-o {output}: exists and is not a folder (give a folder, or a new .bsw name with one input)")
            return Exit.USAGE
        output.mkdir(parents=True, exist_ok=True)
    status = Exit.OK
    planned: list[tuple[Path, Path]] = []  # every refusal that needs no reading comes first
    for src in files:
        target = _target_for(src, output, len(files))
        if refusal := _target_refusal(src, target, force):
            fail(refusal)
            status = Exit.FAILED
        elif any(t == target for _, t in planned):
            fail(f"{src}: its output {target} is also another input's output")
            status = Exit.FAILED
        else:
            planned.append((src, target))
    # Inputs are read, coded, verified and written a chunk at a time: outputs appear as they are
    # done, memory stays bounded with thousands of inputs, and an interrupted run keeps its
    # finished files.
    engine = None
    done = _Done()
    pending = iter(planned)
    while True:
        jobs: list[_Job] = []
        pixels = 0
        for src, target in pending:
            job = _read_job(src, target, max_pixels, allow_lossy_source)
            if job is None:
                status = Exit.FAILED
                continue
            jobs.append(job)
            pixels += sum(p.shape[0] * p.shape[1] for p in job.split.planes)
            if pixels >= CHUNK_PIXELS:
                break
        if not jobs:
            break
        if engine is None:
            engine = engine_or_fail(model, device)
            if engine is None:
                return Exit.FAILED
        chunk_status = _code_chunk(engine, jobs, scheme, verify, force, compare, max_pixels, quiet, done)
        if chunk_status is None:  # an internal coding failure: stop here
            return Exit.FAILED
        status = max(status, chunk_status)
    if engine is None:
        return status
    if not done.raw_bytes:  # GIFs, palettes... only classical parts: no model speed to report
        print(f"{done.written} of {len(files)} file(s) written, no model-coded pixels")
        return status
    mb = done.raw_bytes / 1e6
    speed = (f"compress {mb / max(done.encode_s, 1e-9):.3f} MB/s"
             + (f", verify-decode {mb / done.decode_s:.3f} MB/s" if done.decode_s else ""))
    print(f"{done.written} of {len(files)} file(s) written, {human_bytes(done.raw_bytes)} raw pixels coded in "
          f"{done.encode_s:.1f} s ({speed}, device {engine.model.nets.device})")
    return status


CHUNK_PIXELS = 16_000_000  # pixels read and coded at once by `bswd compress` (a few hundred MB of memory)


@dataclass
class _Done:
    written: int = 0
    raw_bytes: int = 0
    encode_s: float = 0.0
    decode_s: float = 0.0


def _read_job(src: Path, target: Path, max_pixels: int, allow_lossy_source: bool) -> _Job | None:
    """The input read and split into planes, or None after saying why not."""
    from bswd.images import ImageInputError, split_image

    if refusal := not_a_regular_file(src):
        fail(refusal + (" (compress takes files; try DIR/*.png)" if src.is_dir() else ""))
        return None
    try:
        data = src.read_bytes()
        split = split_image(data, name=str(src), max_pixels=max_pixels)
    except OSError as exc:
        fail(f"{src}: cannot read: {exc.strerror or exc}")
        return None
    except ImageInputError as exc:
        fail(str(exc))
        return None
    if split.lossy_source and not allow_lossy_source:
        fail(f"{src}: {split.source_format} is already lossy; storing its decoded pixels losslessly is "
             f"usually larger than the {len(data):,}-byte file. Pass --allow-lossy-source to do it anyway.")
        return None
    return _Job(src, target, data, split)


def _code_chunk(engine, jobs: list[_Job], scheme: str, verify: bool, force: bool, compare: bool, max_pixels: int,
                quiet: bool, done: _Done) -> Exit | None:
    """Code, verify and write one chunk of inputs; None after an internal coding failure."""
    from bswd.ans import AnsError
    from bswd.files import compress_images, decompress_many
    from bswd.images import raw_sample_bytes, split_image

    patches = sum(Geometry(p.shape[0], p.shape[1]).n_patches for j in jobs for p in j.split.planes)
    t0 = time.perf_counter()
    try:
        with progress_bar(patches, "compress", quiet) as bar:
            results = compress_images(engine, [j.split for j in jobs], scheme, bar)
    except AnsError as exc:  # an internal coding failure: say so, write nothing more
        fail(f"coding failed ({exc}); nothing written for {', '.join(str(j.source) for j in jobs)}: "
             "please report it with the input files")
        return None
    encode_s = time.perf_counter() - t0
    decode_s = 0.0
    good = [True] * len(jobs)
    if verify:
        t0 = time.perf_counter()
        with progress_bar(patches, "verify", quiet) as bar:
            rebuilt = decompress_many(engine, [container.decode(r.data) for r in results], bar)
        decode_s = time.perf_counter() - t0
        for i, (j, (data, _)) in enumerate(zip(jobs, rebuilt)):
            back = split_image(data, name=str(j.source), max_pixels=max_pixels, verify=False)
            if len(back.planes) != len(j.split.planes) or not all(
                    np.array_equal(a, b) for a, b in zip(back.planes, j.split.planes)):
                fail(f"{j.source}: verification failed: decoded pixels differ; not written")
                good[i] = False
    raw_total = sum(r.raw_bytes for r in results)
    done.raw_bytes += raw_total
    done.encode_s += encode_s
    done.decode_s += decode_s
    status = Exit.OK if all(good) else Exit.FAILED
    for j, r, ok in zip(jobs, results, good):
        if not ok:
            continue
        try:
            atomic_write(j.target, r.data, overwrite=force)
        except OSError as exc:
            fail(f"{j.target}: cannot write: {exc}")
            status = Exit.FAILED
            continue
        done.written += 1
        bpd = f"{8 * len(r.data) / r.subpixels:.3f} bits/dim" if r.subpixels else "no model planes"
        print(f"{j.source} -> {j.target}: {len(j.data):,} -> {len(r.data):,} bytes, {bpd}"
              + (f" ({100 * len(r.data) / raw:.1f}% of raw)" if (raw := raw_sample_bytes(j.split.side)
                                                                       or r.raw_bytes) else "")
              + (f"; {r.fallback_planes} plane(s) stored as JPEG XL lossless or raw, smaller than the "
                 f"model's code for them ({r.model_only_bits / r.subpixels:.3f} bits per model-plane sample)"
                 if r.fallback_planes else ""), flush=True)
        if compare:
            plane = j.split.planes[0] if len(j.split.planes) == 1 else None
            if plane is None or raw_sample_bytes(j.split.side) not in (0, plane.size):
                # the classical codecs would code one 8-bit plane against the whole .bsw file
                print(f"{j.source}: --compare skipped: only a picture held in one 8-bit plane compares like for "
                      "like (this one has frames, alpha, 16-bit samples or no model plane)")
            else:
                print(_compare_table(plane, r, encode_s * r.raw_bytes / max(1, raw_total),
                                     decode_s * r.raw_bytes / max(1, raw_total)))
    return status


def _compare_table(plane: np.ndarray, r, encode_s: float, decode_s: float) -> str:
    from bswd.classical import compare, format_table

    name = "bswd (fallback)" if r.fallback_planes else "bswd"
    rows = [{"name": name, "size_bytes": len(r.data), "encode_s": encode_s, "decode_s": decode_s}]
    if r.fallback_planes:  # the model's own code (its lanes, no header), so the table shows how it did
        rows.append({"name": "bswd model (unused)", "size_bytes": -(-r.model_only_bits // 8),
                     "encode_s": encode_s, "decode_s": 0.0})
    return format_table(rows + compare(plane), n_bytes_raw=plane.size)


def _output_for(source: Path, output: Path | None, n_inputs: int, ext: str) -> Path:
    base = source.name[: -len(BSW_SUFFIX)] if source.name.endswith(BSW_SUFFIX) else source.name + ".out"
    stem_ext = Path(base).suffix.lower()
    if _SAME_EXT.get(stem_ext, stem_ext) != _SAME_EXT.get(ext.lower(), ext.lower()):
        base = base + ext if not stem_ext else base[: -len(stem_ext)] + ext
    if output is not None and n_inputs == 1 and not output.is_dir() and output.suffix:
        given = output.suffix.lower()
        same_file = output.resolve() == source.resolve()  # refused below, with its own reason
        if not same_file and _SAME_EXT.get(given, given) != _SAME_EXT.get(ext.lower(), ext.lower()):
            # decompress gives back the original file; a .jpg name on PNG bytes misleads every viewer
            raise _NameError(f"{output}: {source} holds a {ext} file (decompress gives back the original, "
                             f"it does not convert); name the output {output.with_suffix(ext).name}")
        return output
    return (output or source.parent) / base


def run_decompress(files: list[Path], output: Path | None, model: Path | None, force: bool, device: str,
                   quiet: bool) -> Exit:
    from bswd.engine import StreamError
    from bswd.files import IntegrityError, ModelMismatch, decompress_many, needs_model, side_data
    from bswd.images import ImageInputError, side_extension
    from bswd.model.modelfile import ModelFileError
    from bswd.model.registry import ModelNotFound, find_model

    status = Exit.OK
    if output is not None and (len(files) > 1 or not output.suffix):
        if output.exists() and not output.is_dir():
            fail(f"-o {output}: exists and is not a folder (give a folder, or a new file name with one input)")
            return Exit.USAGE
        output.mkdir(parents=True, exist_ok=True)
    engines: dict[bytes, object] = {}
    for src in files:
        if refusal := not_a_regular_file(src):
            fail(refusal)
            status = Exit.FAILED
            continue
        try:
            f = container.decode(src.read_bytes())
            # the target is known before decoding: an existing file fails now, not after minutes
            target = _output_for(src, output, len(files), side_extension(side_data(f)))
            if refusal := _target_refusal(src, target, force):
                raise FileExistsError(refusal)
            engine = None  # a file whose planes are all stored (JPEG XL or raw) needs no model
            if needs_model(f):
                if f.model_hash not in engines:
                    mf = find_model(f.model_hash, f.model_id, [model] if model else None)
                    engines[f.model_hash] = build_engine(mf, device)
                engine = engines[f.model_hash]
            patches = sum(Geometry(p.height, p.width).n_patches for p in [f] if p.channels)
            t0 = time.perf_counter()
            with progress_bar(patches, "decompress", quiet) as bar:
                [(image, _)] = decompress_many(engine, [f], bar)
            seconds = time.perf_counter() - t0
            try:
                atomic_write(target, image, overwrite=force)
            except FileExistsError:
                raise
            except OSError as exc:
                raise _WriteError(f"{target}: cannot write: {exc.strerror or exc}") from exc
        except (FileExistsError, _WriteError, _NameError) as exc:
            fail(str(exc))
        except OSError as exc:
            fail(f"{src}: {exc.strerror or exc}")
        except (container.BswFormatError, StreamError, IntegrityError, ModelMismatch, ModelNotFound,
                ModelFileError, ImageInputError, ValueError) as exc:
            fail(f"{src}: {exc}")
        else:
            print(f"{src} -> {target}: {len(image):,} bytes in {seconds:.1f} s")
            continue
        status = Exit.FAILED
    return status


def describe_bsw(f: container.BswFile, size: int) -> str:
    from bswd.files import ABOUT, FALLBACKS, PLANE, STORED_JXL, about_lines, plane_files, stored_channels

    planes = plane_files(f)
    sizes = container.payload_sizes(f)
    subpixels = sum(p.width * p.height * (p.channels or stored_channels(p)) for p in planes)
    stored = sum(1 for p in planes if stored_channels(p))
    jxl = sum(1 for p in planes for sec in p.sections if sec.kind == STORED_JXL)
    lines = [
        f"format version   {f.format_version}",
        f"model            {f.model_id} (sha256 {f.model_hash.hex()})",
        f"scheme           {f.scheme}, precision {f.precision} bits, {f.head_width} heads per lane",
        (f"image            {f.width}x{f.height}, {f.channels or 'no'} model channel(s), "
         f"{len(planes)} plane(s)" + (f", {stored} not model-coded ({jxl} JPEG XL lossless, {stored - jxl} raw): "
                                      "the model would have been larger" if stored else ""))
        if f.channels or stored_channels(f) else
        "image            no model plane: the whole picture is in the side data (classical lossless parts)",
        f"lanes            {len(f.lanes)} ({', '.join(str(ln.n_patches) for ln in f.lanes) or '-'} patches"
        + (f"; {sum(ln.donor < 0 for ln in f.lanes)} from seed bits, the rest from a donor's words)"
           if any(ln.donor >= 0 for ln in f.lanes) else ")"),
        f"payload          header {sizes['header']} B, lanes {sum(sizes['lanes']):,} B, "
        + ", ".join(f"{k} {n:,} B" for k, n in sizes["sections"] if k not in (PLANE, ABOUT)),
        f"file size        {size:,} bytes",
    ]
    if subpixels:
        lines.append(f"bits/dim         {8 * size / subpixels:.4f} (whole file over the planes' samples)")
    # the about text was written before the model's code was compared with JPEG XL / raw: its
    # i-th "via model" part is plane i, so say what actually holds each stored plane
    stored_as = iter(next((("JPEG XL lossless" if sec.kind == STORED_JXL else "raw bytes")
                           for sec in p.sections if stored_channels(p) and sec.kind in FALLBACKS), None)
                     for p in planes)
    for line in about_lines(f):
        if line.endswith(" via model"):
            how = next(stored_as, None)
            line = line if how is None else line.removesuffix("model") + f"{how} (smaller than the model's code)"
        lines.append(f"part             {line}")
    return "\n".join(lines)
