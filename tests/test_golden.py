"""Golden .bsw files made with the bundled default model: they must decode, bit-exactly, forever.

Regenerate only when the format version changes (and keep the old files):
    BSWD_REGEN_GOLDEN=1 pytest tests/test_golden.py
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bswd import container
from bswd.engine import Engine, EngineConfig
from bswd.files import compress_images, decompress_many
from bswd.images import split_image
from bswd.model.modelfile import read_model_file
from bswd.model.quant import load_coding_model
from bswd.model.registry import find_model

GOLDEN = Path(__file__).parent / "golden"
DATA = Path(__file__).parent / "data"
CASES = [("messi_96x64.png", "bitswap"), ("cups_37x53.png", "bbans")]


def golden_path(name: str, scheme: str) -> Path:
    return GOLDEN / f"{name}.{scheme}.bsw"


@pytest.mark.parametrize("name,scheme", CASES)
def test_golden_file_decodes_to_its_source(name, scheme):
    path = golden_path(name, scheme)
    source = DATA / name
    if os.environ.get("BSWD_REGEN_GOLDEN"):
        from bswd.model.registry import default_model_path

        engine = Engine(load_coding_model(read_model_file(default_model_path())), EngineConfig())
        split = split_image(source.read_bytes(), name=name)
        [res] = compress_images(engine, [split], scheme, allow_stored=False)
        path.write_bytes(res.data)
    f = container.decode(path.read_bytes())
    assert f.scheme == scheme and f.channels == 3 and len(f.lanes) >= 1  # really model-coded
    mf = find_model(f.model_hash, f.model_id)  # a shipped model, found by hash
    engine = Engine(load_coding_model(mf), EngineConfig(max_rows=3))
    [(image, ext)] = decompress_many(engine, [f])
    with Image.open(io.BytesIO(image)) as got, Image.open(source) as want:
        assert ext == ".png" and got.mode == want.mode and got.size == want.size
        assert np.array_equal(np.asarray(got), np.asarray(want))
