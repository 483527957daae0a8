"""`bswd bench`: every codec measured on the same pixels, bswd sizes equal to real .bsw files,
the documented JSON, the chart, the help text and the input errors."""

from __future__ import annotations

import doctest
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from bswd import bench
from bswd.classical import CLASSICAL_CODECS
from bswd.cli import app
from bswd.engine import Engine
from bswd.files import compress_images
from bswd.images import split_image
from bswd.model.modelfile import read_model_file
from bswd.model.quant import load_coding_model
from tests.conftest import make_model_file, noise

torch.set_num_threads(1)
runner = CliRunner()

TOP_KEYS = {"bswd_bench", "machine", "settings", "images", "overall"}
MACHINE_KEYS = {"cpu", "cores", "torch_threads", "device", "model_id", "model_sha256", "date",
                "python", "torch", "numpy", "pillow", "imagecodecs", "platform"}
SETTINGS_KEYS = {"pixels", "bswd_input", "repeat", "crop", "schemes", "codecs", "allow_stored",
                 "timing"}
IMAGE_KEYS = {"name", "width", "height", "n_subpixels", "n_bytes_raw", "results"}
OVERALL_KEYS = {"n_images", "n_subpixels", "n_bytes_raw", "results"}
RESULT_KEYS = {"name", "kind", "settings", "size_bytes", "percent_raw", "bits_per_dim",
               "encode_s", "decode_s", "encode_mb_s", "decode_mb_s", "lossless", "unavailable",
               "info_bits", "model_bits", "side_bytes", "stored", "overhead_vs_elbo"}
BSWD_ROWS = ["bswd-bitswap", "bswd-bbans"]
ALL_ROWS = BSWD_ROWS + [bench.BOUND] + list(CLASSICAL_CODECS)


def bswd(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.bswm"
    path.write_bytes(make_model_file().to_bytes())
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """A smooth RGB image (PNG) and a grey noise image (BMP), both read as RGB by the bench."""
    folder = tmp_path_factory.mktemp("images")
    y, x = np.mgrid[0:24, 0:40]
    smooth = np.stack([4 * x, 8 * y, 2 * (x + y)], axis=-1).astype(np.uint8)
    Image.fromarray(smooth).save(folder / "smooth.png")
    Image.fromarray(noise(33, 20, 1, seed=3)[..., 0]).save(folder / "grey.bmp")
    return [folder / "smooth.png", folder / "grey.bmp"]


@pytest.fixture(scope="module")
def default_run(images, model_path, tmp_path_factory):
    """One bench with the default options, every scheme and codec, JSON and chart."""
    out = tmp_path_factory.mktemp("bench")
    res = bswd("bench", *images, "--model", model_path, "--json", out / "bench.json",
               "--chart", out / "chart.png", "--threads", "1", "-q")
    assert res.exit_code == 0, res.output
    return res.output, json.loads((out / "bench.json").read_text()), out / "chart.png"


def bsw_sizes(path: Path, model_path: Path, scheme: str, allow_stored: bool) -> int:
    """What compress_images writes for the pixels the bench measures, built independently."""
    with Image.open(path) as im:
        buffer = io.BytesIO()
        im.convert("RGB").save(buffer, "PPM")
    split = split_image(buffer.getvalue(), name=str(path), verify=False)
    engine = Engine(load_coding_model(read_model_file(model_path)))
    [coded] = compress_images(engine, [split], scheme, allow_stored=allow_stored)
    return len(coded.data)


def results(entry: dict) -> dict[str, dict]:
    return {r["name"]: r for r in entry["results"]}


def test_every_codec_has_a_row_with_a_positive_lossless_size(default_run):
    output, report, _ = default_run
    for entry in report["images"] + [report["overall"]]:
        rows = results(entry)
        assert list(rows) == ALL_ROWS
        for name in BSWD_ROWS + list(CLASSICAL_CODECS):
            row = rows[name]
            assert row["unavailable"] is None, row
            assert row["size_bytes"] > 0 and row["lossless"] is True, row
            assert row["encode_s"] > 0 and row["decode_s"] > 0 and row["encode_mb_s"] > 0
            assert row["bits_per_dim"] == pytest.approx(8 * row["size_bytes"] / entry["n_subpixels"])
            assert row["percent_raw"] == pytest.approx(100 * row["size_bytes"] / entry["n_bytes_raw"])
    for name in ALL_ROWS:
        assert any(line.startswith(name) for line in output.splitlines()), name
    assert "NOT LOSSLESS" not in output
    assert 'convert("RGB")' in output and "torch threads 1" in output and "tiny-test" in output


def test_bswd_sizes_are_the_bsw_files_compress_images_writes(default_run, images, model_path):
    _, report, _ = default_run
    for path, entry in zip(images, report["images"]):
        assert entry["name"] == str(path)
        for scheme in ("bitswap", "bbans"):
            row = results(entry)[f"bswd-{scheme}"]
            assert row["size_bytes"] == bsw_sizes(path, model_path, scheme, allow_stored=True)
    overall = results(report["overall"])
    for name in ALL_ROWS:
        if overall[name]["unavailable"] is None:
            assert overall[name]["size_bytes"] == sum(
                results(e)[name]["size_bytes"] for e in report["images"])


def test_the_json_has_the_documented_keys(default_run):
    _, report, _ = default_run
    assert set(report) == TOP_KEYS and report["bswd_bench"] == bench.JSON_VERSION
    assert set(report["machine"]) == MACHINE_KEYS and set(report["settings"]) == SETTINGS_KEYS
    assert set(report["overall"]) == OVERALL_KEYS
    for entry in report["images"]:
        assert set(entry) == IMAGE_KEYS
        assert entry["n_subpixels"] == entry["width"] * entry["height"] * 3
        assert all(set(r) == RESULT_KEYS for r in entry["results"])
    assert all(set(r) == RESULT_KEYS for r in report["overall"]["results"])
    assert report["overall"]["n_images"] == 2
    for key in TOP_KEYS | MACHINE_KEYS | SETTINGS_KEYS | IMAGE_KEYS | OVERALL_KEYS | RESULT_KEYS:
        assert key in bench.__doc__, f"{key} is not documented in bswd/bench.py"
    assert report["machine"]["model_sha256"] == make_model_file().sha256.hex()


def test_the_chart_is_a_png_of_the_expected_size(default_run):
    _, _, chart = default_run
    with Image.open(chart) as im:
        assert im.format == "PNG" and im.size == bench.CHART_SIZE


def test_no_stored_measures_the_model_elbo_and_crop(images, model_path, tmp_path):
    out = tmp_path / "b.json"
    res = bswd("bench", images[0], "--model", model_path, "--no-stored", "--crop", "16",
               "--codecs", "png", "--schemes", "bitswap", "--repeat", "2", "--json", out, "-q")
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    [entry] = report["images"]
    assert (entry["width"], entry["height"]) == (16, 16)
    rows = results(entry)
    assert list(rows) == ["bswd-bitswap", bench.BOUND, "png"]
    bound, coded = rows[bench.BOUND], rows["bswd-bitswap"]
    assert bound["info_bits"] > 0 and bound["encode_s"] is None
    assert bound["bits_per_dim"] == pytest.approx(bound["info_bits"] / entry["n_subpixels"])
    assert coded["stored"] is False and coded["info_bits"] == bound["info_bits"]
    assert coded["overhead_vs_elbo"] == pytest.approx(8 * coded["size_bytes"] / coded["info_bits"] - 1)
    assert "size over the model -ELBO" in res.output


def test_repeat_keeps_the_minimum_times():
    ticks = iter([0, 5, 6, 10, 12, 13, 20, 21, 25])
    m = bench.measure_classical(noise(8, 8), "gzip", repeat=3, clock=lambda: next(ticks))
    assert (m.result.encode_s, m.result.decode_s) == (1, 1) and m.result.lossless


def test_help_documents_every_option():
    res = bswd("bench", "--help")
    assert res.exit_code == 0
    command = typer.main.get_command(app).commands["bench"]  # type: ignore[attr-defined]
    options = [p for p in command.params if p.param_type_name == "option"]
    assert {o for p in options for o in p.opts} >= {
        "--model", "--device", "--schemes", "--codecs", "--repeat", "--crop", "--json", "--chart",
        "--stored", "--threads", "--force", "--quiet"}
    for p in options:
        assert p.help, p.name
        assert p.opts[0] in res.output, p.opts[0]


def test_a_missing_file_is_a_clear_error(tmp_path, model_path):
    res = bswd("bench", tmp_path / "nope.png", "--model", model_path)
    assert res.exit_code == 1
    assert f"{tmp_path / 'nope.png'}: no such file or directory" in res.output


def test_unreadable_inputs_and_unknown_names(tmp_path, model_path):
    (tmp_path / "notes.png").write_text("not an image")
    res = bswd("bench", tmp_path / "notes.png", "--model", model_path)
    assert res.exit_code == 1 and "cannot read as an image" in res.output
    (tmp_path / "empty").mkdir()
    res = bswd("bench", tmp_path / "empty", "--model", model_path)
    assert res.exit_code == 1 and "holds no images" in res.output
    res = bswd("bench", tmp_path / "notes.png", "--codecs", "png,zstd")
    assert res.exit_code == 2 and "unknown codec zstd" in res.output


def test_cpu_model_reads_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Example  CPU @ 3.00GHz\n")
    assert bench.cpu_model(info) == "Example CPU @ 3.00GHz"
    assert bench.cpu_model(tmp_path / "missing")


def test_doctests():
    assert doctest.testmod(bench).failed == 0
