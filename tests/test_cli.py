"""`bswd compress / decompress / inspect` as a user runs them: real files, exit codes, messages."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from bswd import container
from bswd.cli import app
from tests.conftest import make_model_file, noise

runner = CliRunner()
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.bswm"
    path.write_bytes(make_model_file().to_bytes())
    return path


def save_png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array.squeeze()).save(path)
    return path


def bswd(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def test_compress_decompress_round_trip(tmp_path, model_path):
    src = save_png(tmp_path / "a.png", noise(45, 70, seed=1))
    res = bswd("compress", src, "--model", model_path, "-q")
    assert res.exit_code == 0, res.output
    bsw = tmp_path / "a.png.bsw"
    assert bsw.exists() and "bits/dim" in res.output
    out = tmp_path / "back.png"
    res = bswd("decompress", bsw, "-o", out, "--model", model_path, "-q")
    assert res.exit_code == 0, res.output
    assert np.array_equal(pixels(out), pixels(src))


def test_many_files_to_an_output_folder_with_a_real_photo(tmp_path, model_path):
    srcs = [DATA / "home_64x64.png", save_png(tmp_path / "g.png", noise(20, 33, 1, seed=2)[..., 0])]
    res = bswd("compress", *srcs, "-o", tmp_path / "out", "--model", model_path, "-q")
    assert res.exit_code == 0, res.output
    for s in srcs:
        bsw = tmp_path / "out" / (s.name + ".bsw")
        res = bswd("decompress", bsw, "-o", tmp_path / "back", "--model", model_path, "-q")
        assert res.exit_code == 0, res.output
        assert np.array_equal(pixels(tmp_path / "back" / s.name), pixels(s))


def test_existing_output_is_not_overwritten(tmp_path, model_path):
    src = save_png(tmp_path / "a.png", noise(8, 8, seed=3))
    (tmp_path / "a.png.bsw").write_bytes(b"keep me")
    res = bswd("compress", src, "--model", model_path, "-q")
    assert res.exit_code == 1 and "already exists" in res.output
    assert (tmp_path / "a.png.bsw").read_bytes() == b"keep me"


def test_an_output_never_replaces_its_own_input_even_with_force(tmp_path, model_path):
    src = save_png(tmp_path / "a.png", noise(8, 8, seed=3))
    assert bswd("compress", src, "--model", model_path, "-q").exit_code == 0
    bsw = tmp_path / "a.png.bsw"
    kept = bsw.read_bytes()
    res = bswd("decompress", bsw, "-o", bsw, "--force", "--model", model_path, "-q")
    assert res.exit_code == 1 and f"{bsw}: its output would replace the input itself" in res.output
    assert bsw.read_bytes() == kept
    # -o naming an existing file that is not a .bsw: a usage error, not a traceback
    for extra in ([], ["--force"]):
        res = bswd("compress", src, "-o", src, *extra, "--model", model_path, "-q")
        assert res.exit_code == 2 and f"-o {src}: exists and is not a folder" in res.output
    assert np.array_equal(pixels(src), noise(8, 8, seed=3))


def test_summary_counts_every_input_and_write_errors_name_the_output(tmp_path, model_path):
    good = save_png(tmp_path / "a.png", noise(8, 8, seed=3))
    res = bswd("compress", good, tmp_path / "missing.png", "-o", tmp_path / "out", "--model", model_path, "-q")
    assert res.exit_code == 1 and "1 of 2 file(s) written" in res.output
    (tmp_path / "ro").mkdir()
    target = tmp_path / "ro" / "sub" / "a.png"  # its folder does not exist: the write fails
    res = bswd("decompress", tmp_path / "out" / "a.png.bsw", "-o", target, "--model", model_path, "-q")
    assert res.exit_code == 1 and f"{target}: cannot write" in res.output


def test_percent_of_raw_counts_every_stored_sample(tmp_path, model_path):
    """16-bit samples are 2 raw bytes and alpha counts too, not just the 8-bit model planes."""
    Image.fromarray(np.full((30, 40), 40000, dtype=np.uint16)).save(tmp_path / "g16.png")
    Image.fromarray(noise(30, 40, 4, seed=4), "RGBA").save(tmp_path / "rgba.png")
    res = bswd("compress", tmp_path / "g16.png", tmp_path / "rgba.png", "--model", model_path, "-q")
    assert res.exit_code == 0, res.output
    for name, raw in (("g16.png", 30 * 40 * 2), ("rgba.png", 30 * 40 * 4)):
        size = (tmp_path / (name + ".bsw")).stat().st_size
        assert f"-> {size:,} bytes" in res.output and f"({100 * size / raw:.1f}% of raw)" in res.output


def test_decompress_refuses_an_existing_output_before_decoding(tmp_path, model_path):
    src = save_png(tmp_path / "a.png", noise(8, 8, seed=3))
    assert bswd("compress", src, "--model", model_path, "-q").exit_code == 0
    src.write_bytes(b"keep me")
    # no --model: the test model is not shipped, so decoding would fail "model not found"; the
    # existing output is the error, so it was checked before any model or decoding
    res = bswd("decompress", tmp_path / "a.png.bsw", "-q")
    assert res.exit_code == 1, res.output
    assert f"{src}: already exists (use --force to overwrite)" in res.output
    assert src.read_bytes() == b"keep me"
    res = bswd("decompress", tmp_path / "a.png.bsw", "--model", model_path, "--force", "-q")
    assert res.exit_code == 0, res.output
    assert np.array_equal(pixels(src), noise(8, 8, seed=3))


@pytest.mark.parametrize("name,content,reason", [
    ("empty.png", b"", "empty"),
    ("notes.png", b"these are my notes, not a picture\n", "not an image"),
])
def test_bad_inputs_fail_clearly_and_write_nothing_bug08(tmp_path, model_path, name, content, reason):
    src = tmp_path / name
    src.write_bytes(content)
    res = bswd("compress", src, "--model", model_path, "-q")
    assert res.exit_code == 1
    assert name in res.output and reason in res.output.lower()
    assert not (tmp_path / (name + ".bsw")).exists()


def test_truncated_png_is_never_compressed_bug08(tmp_path, model_path):
    buf = io.BytesIO()
    Image.fromarray(noise(64, 64, seed=4)).save(buf, format="PNG")
    src = tmp_path / "half.png"
    src.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    res = bswd("compress", src, "--model", model_path, "-q")
    assert res.exit_code == 1 and "truncated" in res.output.lower()
    assert not (tmp_path / "half.png.bsw").exists()


def test_jpeg_needs_allow_lossy_source(tmp_path, model_path):
    src = tmp_path / "p.jpg"
    Image.fromarray(noise(16, 16, seed=5)).save(src, quality=90)
    res = bswd("compress", src, "--model", model_path, "-q")
    assert res.exit_code == 1 and "--allow-lossy-source" in res.output
    res = bswd("compress", src, "--model", model_path, "-q", "--allow-lossy-source")
    assert res.exit_code == 0, res.output
    res = bswd("decompress", tmp_path / "p.jpg.bsw", "--model", model_path, "-q")
    assert res.exit_code == 0, res.output
    assert np.array_equal(pixels(tmp_path / "p.png"), pixels(src))


@pytest.fixture()
def good_bsw(tmp_path, model_path) -> Path:
    src = save_png(tmp_path / "n.png", noise(64, 64, seed=6))
    assert bswd("compress", src, "--model", model_path, "-q").exit_code == 0
    src.unlink()
    return tmp_path / "n.png.bsw"


@pytest.mark.parametrize("damage,message", [
    (lambda b: b[:-8], "missing"),
    (lambda b: b[: len(b) // 2] + bytes([b[len(b) // 2] ^ 1]) + b[len(b) // 2 + 1 :], "crc"),
    (lambda b: b + b"\0\1\2\3", "trailing"),
    (lambda b: b"", "empty"),
])
def test_damaged_bsw_fails_with_a_specific_error_bug07(good_bsw, model_path, damage, message):
    good_bsw.write_bytes(damage(good_bsw.read_bytes()))
    res = bswd("decompress", good_bsw, "--model", model_path, "-q")
    assert res.exit_code == 1
    assert message in res.output.lower() and "n.png.bsw" in res.output
    assert not (good_bsw.parent / "n.png").exists()


def test_other_model_is_refused_by_name_bug05(tmp_path):
    from bswd.engine import Engine
    from bswd.files import compress_images
    from bswd.images import split_image
    from bswd.model.quant import load_coding_model

    engine = Engine(load_coding_model(make_model_file()))
    split = split_image(save_png(tmp_path / "n.png", noise(64, 64, seed=6)).read_bytes(), name="n.png")
    [res] = compress_images(engine, [split], "bitswap", allow_stored=False)  # model-coded
    (tmp_path / "n.png").unlink()
    good_bsw = tmp_path / "n.png.bsw"
    good_bsw.write_bytes(res.data)
    other = tmp_path / "other.bswm"
    other.write_bytes(make_model_file(seed=1, model_id="other").to_bytes())
    res = bswd("decompress", good_bsw, "--model", other, "-q")
    assert res.exit_code == 1
    assert "tiny-test" in res.output and f"the model given, {other} is 'other'" in res.output
    assert "is another model, and no bundled model matches" in res.output
    assert not (good_bsw.parent / "n.png").exists()


def test_a_file_with_no_model_coded_plane_decodes_without_its_model(tmp_path, model_path):
    """A picture the model lost to raw / JPEG XL is stored as such: decoding it years later must
    not need the model file it was compressed with."""
    img = noise(24, 40, seed=9)  # noise: the tiny model loses to raw
    src = save_png(tmp_path / "n.png", img)
    assert bswd("compress", src, "--model", model_path, "-q").exit_code == 0
    src.unlink()
    res = bswd("decompress", tmp_path / "n.png.bsw")  # the tiny model is not bundled
    assert res.exit_code == 0, res.output
    assert np.array_equal(pixels(src), img)


def test_inspect_of_a_damaged_file_shows_its_intact_header(tmp_path, good_bsw):
    data = bytearray(good_bsw.read_bytes())
    data[-20] ^= 0xFF  # inside the payload: the file CRC fails, the header's own CRC holds
    bad = tmp_path / "bad.bsw"
    bad.write_bytes(bytes(data))
    res = bswd("inspect", bad)
    assert res.exit_code == 1 and "CRC32 mismatch" in res.output
    assert "the header is intact (the file cannot be decoded)" in res.output
    assert "model            tiny-test" in res.output and "64x64" in res.output
    assert f"file size        {len(data):,} bytes (the header announces {len(data):,})" in res.output
    (tmp_path / "junk.bsw").write_bytes(b"x" * 40)  # no header at all: the error alone
    res = bswd("inspect", tmp_path / "junk.bsw")
    assert res.exit_code == 1 and "header is intact" not in res.output


def test_inspect_shows_the_header(good_bsw):
    res = bswd("inspect", good_bsw)
    assert res.exit_code == 0, res.output
    assert "tiny-test" in res.output and "64x64" in res.output and "bits/dim" in res.output
    f = container.decode(good_bsw.read_bytes())
    kinds = [sec.kind for sec in f.sections if sec.kind in ("stored", "stored-jxl")]
    how = {"stored": "raw bytes", "stored-jxl": "JPEG XL lossless"}[kinds[0]] if kinds else None
    expected = f"image: RGB 8-bit via {how} (smaller than the model's code)" if how else "image: RGB 8-bit via model"
    assert f"part             {expected}\n" in res.output


def test_inspect_names_what_holds_a_plane_the_model_lost_to(tmp_path, model_path):
    src = save_png(tmp_path / "n.png", noise(24, 40, seed=9))  # noise: the tiny model loses to raw
    assert bswd("compress", src, "--model", model_path, "-q").exit_code == 0
    res = bswd("inspect", tmp_path / "n.png.bsw")
    assert "1 not model-coded" in res.output
    assert "part             image: RGB 8-bit via raw bytes (smaller than the model's code)\n" in res.output
    assert " via model" not in res.output


def test_help_explains_every_option():
    res = bswd("compress", "--help")
    assert res.exit_code == 0
    for opt in ("--output", "--model", "--scheme", "--compare", "--allow-lossy-source", "--force"):
        assert opt in res.output


def test_output_file_with_several_inputs_is_a_usage_error(tmp_path, model_path):
    a = save_png(tmp_path / "a.png", noise(8, 8, seed=1))
    b = save_png(tmp_path / "b.png", noise(8, 8, seed=2))
    res = bswd("compress", a, b, "-o", tmp_path / "one.bsw", "--model", model_path, "-q")
    assert res.exit_code == 2 and "must be a folder" in res.output
    assert not (tmp_path / "one.bsw").exists()
    res = bswd("compress", a, "-o", tmp_path / "no" / "x.bsw", "--model", model_path, "-q")
    assert res.exit_code == 2 and "does not exist" in res.output


def test_decompress_refuses_an_output_name_of_another_format(tmp_path, model_path):
    src = save_png(tmp_path / "n.png", noise(16, 16, seed=3))
    assert bswd("compress", src, "--model", model_path, "-q").exit_code == 0
    res = bswd("decompress", tmp_path / "n.png.bsw", "-o", tmp_path / "x.jpg", "-q")
    assert res.exit_code == 1 and "holds a .png file" in res.output and "name the output x.png" in res.output
    assert not (tmp_path / "x.jpg").exists()
    res = bswd("decompress", tmp_path / "n.png.bsw", "-o", tmp_path / "x.PNG", "-q")
    assert res.exit_code == 0 and np.array_equal(pixels(tmp_path / "x.PNG"), pixels(src))


def test_eval_and_data_fetch_fail_with_one_line(tmp_path, model_path):
    img = save_png(tmp_path / "a.png", noise(32, 32, seed=1))
    res = bswd("eval", img, "--model", tmp_path / "missing.bswm")
    assert res.exit_code == 1 and "missing.bswm" in res.output and "Traceback" not in res.output
    res = bswd("eval", img, "--model", model_path, "--device", "tpu")
    assert res.exit_code == 1 and "unknown device 'tpu'" in res.output
    (tmp_path / "notes.png").write_text("not an image")
    res = bswd("eval", tmp_path / "notes.png", img, "--model", model_path)
    assert res.exit_code == 1 and "BytesIO" not in res.output and "notes.png" in res.output
    assert bswd("eval", img, "--model", model_path, "--out", tmp_path / "o").exit_code == 0
    res = bswd("eval", img, "--model", model_path, "--out", tmp_path / "o")
    assert res.exit_code == 1 and "use --force" in res.output
    assert bswd("eval", img, "--model", model_path, "--out", tmp_path / "o", "--force").exit_code == 0
    res = bswd("data", "fetch", img)
    assert res.exit_code == 2 and "is a file, not a folder" in res.output


def test_compress_writes_each_chunk_as_it_is_done(tmp_path, model_path, monkeypatch):
    """Thousands of inputs: read, coded and written a chunk at a time, so an interrupted run keeps
    what it finished (it used to hold everything and write nothing until the end)."""
    from bswd import compress_cmd

    monkeypatch.setattr(compress_cmd, "CHUNK_PIXELS", 1)  # one file per chunk
    real = compress_cmd._code_chunk
    calls = []

    def interrupted_second(*args, **kwargs):
        calls.append(args[1][0].source.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(compress_cmd, "_code_chunk", interrupted_second)
    srcs = [save_png(tmp_path / f"{n}.png", noise(16, 16, seed=n)) for n in range(3)]
    with pytest.raises(KeyboardInterrupt):
        compress_cmd.run_compress(srcs, tmp_path / "out", model_path, "bitswap", False, False, True, False,
                                  10**6, "cpu", True)
    assert calls == ["0.png", "1.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.png.bsw"]
    res = bswd("decompress", tmp_path / "out" / "0.png.bsw", "-o", tmp_path / "back.png", "-q")
    assert res.exit_code == 0 and np.array_equal(pixels(tmp_path / "back.png"), noise(16, 16, seed=0))


def test_compare_only_compares_like_for_like(tmp_path, model_path):
    rgb = save_png(tmp_path / "rgb.png", noise(16, 16, seed=1))
    rgba = tmp_path / "rgba.png"
    Image.fromarray(noise(16, 16, 4, seed=2), "RGBA").save(rgba)
    res = bswd("compress", rgb, rgba, "-o", tmp_path / "out", "--compare", "--model", model_path, "-q")
    assert res.exit_code == 0, res.output
    assert "png" in res.output and "webp" in res.output  # the RGB file's table
    assert "bswd (fallback)" in res.output and "bswd model (unused)" in res.output  # noise: stored raw
    assert f"{rgba}: --compare skipped: only a picture held in one 8-bit plane" in res.output
    assert f"{rgb}: --compare skipped" not in res.output


def test_compress_names_a_bsw_input_a_folder_and_a_fifo(tmp_path, model_path):
    import os

    src = save_png(tmp_path / "a.png", noise(8, 8, seed=3))
    assert bswd("compress", src, "--model", model_path, "-q").exit_code == 0
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    (tmp_path / "dir").mkdir()
    res = bswd("compress", tmp_path / "a.png.bsw", fifo, tmp_path / "dir", "-o", tmp_path / "out",
               "--model", model_path, "-q")
    assert res.exit_code == 1
    assert "a.png.bsw: already a .bsw file (bswd decompress gives back its image)" in res.output
    assert f"{fifo}: not a regular file" in res.output  # and it did not hang reading it
    assert f"{tmp_path / 'dir'}: not a regular file (compress takes files; try DIR/*.png)" in res.output


def test_a_picture_with_no_model_plane_is_described_as_such(tmp_path, model_path):
    frames = [Image.fromarray(noise(20, 30, 1, seed=n).squeeze()).convert("P") for n in range(3)]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    res = bswd("compress", gif, "--model", model_path, "-q")
    assert res.exit_code == 0 and "1 of 1 file(s) written, no model-coded pixels" in res.output
    res = bswd("inspect", tmp_path / "anim.gif.bsw")
    assert "image            no model plane: the whole picture is in the side data" in res.output
    assert "1x1" not in res.output


def test_decompress_refuses_a_fifo_and_a_folder_without_blocking(tmp_path):
    import os

    fifo = tmp_path / "pipe.bsw"
    os.mkfifo(fifo)
    (tmp_path / "dir.bsw").mkdir()
    res = bswd("decompress", fifo, tmp_path / "dir.bsw", "-o", tmp_path / "out", "-q")
    assert res.exit_code == 1
    assert f"{fifo}: not a regular file" in res.output and f"{tmp_path / 'dir.bsw'}: not a regular file" in res.output


def test_decompress_to_an_existing_file_with_several_inputs_is_a_usage_error(tmp_path, model_path):
    a = save_png(tmp_path / "a.png", noise(8, 8, seed=1))
    b = save_png(tmp_path / "b.png", noise(8, 8, seed=2))
    assert bswd("compress", a, b, "--model", model_path, "-q").exit_code == 0
    (tmp_path / "plain").write_text("mine")
    res = bswd("decompress", tmp_path / "a.png.bsw", tmp_path / "b.png.bsw", "-o", tmp_path / "plain", "-q")
    assert res.exit_code == 2 and "exists and is not a folder" in res.output
    assert (tmp_path / "plain").read_text() == "mine"
