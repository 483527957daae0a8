"""Golden .bsw files made with every model that was ever the bundled default: they must decode,
bit-exactly, forever (bswd-default-1 and -2: a factorized pixel likelihood; bswd-default-3 and -4: the
pixel-context one, -4 with 3 latent channels a layer).

When a new default ships, add its tag to MODELS and write its files (existing files are never
rewritten; a new format version gets new files beside the old ones):
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
MODELS = {"": "bswd-default-1.bswm", ".default-2": "bswd-default-2.bswm", ".default-2.donated": "bswd-default-2.bswm",
          ".default-3": "bswd-default-3.bswm", ".default-3.donated": "bswd-default-3.bswm",
          ".default-4": "bswd-default-4.bswm", ".default-4.donated": "bswd-default-4.bswm"}
# the .donated files are format v2: one lane per patch, lanes started from a donor's words
ENGINES = {".default-2.donated": EngineConfig(min_patches_per_lane=1),
           ".default-3.donated": EngineConfig(min_patches_per_lane=1),
           ".default-4.donated": EngineConfig(min_patches_per_lane=1)}
CASES = [(name, scheme, tag) for tag in MODELS for name, scheme in [("messi_96x64.png", "bitswap"),
                                                                      ("cups_37x53.png", "bbans")]]


def golden_path(name: str, scheme: str, tag: str) -> Path:
    return GOLDEN / f"{name}.{scheme}{tag}.bsw"


@pytest.mark.parametrize("name,scheme,tag", CASES)
def test_golden_file_decodes_to_its_source(name, scheme, tag):
    path = golden_path(name, scheme, tag)
    source = DATA / name
    if os.environ.get("BSWD_REGEN_GOLDEN") and not path.exists():
        from bswd.model.registry import PACKAGE_MODELS

        model = load_coding_model(read_model_file(PACKAGE_MODELS / MODELS[tag]))
        engine = Engine(model, ENGINES.get(tag, EngineConfig()))
        split = split_image(source.read_bytes(), name=name)
        [res] = compress_images(engine, [split], scheme, allow_stored=False)
        path.write_bytes(res.data)
    f = container.decode(path.read_bytes())
    assert f.scheme == scheme and f.channels == 3 and len(f.lanes) >= 1  # really model-coded
    mf = find_model(f.model_hash, f.model_id)  # a shipped model, found by hash
    assert mf.model_id == MODELS[tag].removesuffix(".bswm")
    assert f.format_version == (2 if tag.endswith(".donated") else 1)
    assert any(lane.donor >= 0 for lane in f.lanes) == tag.endswith(".donated")
    engine = Engine(load_coding_model(mf), EngineConfig(max_rows=3))
    [(image, ext)] = decompress_many(engine, [f])
    with Image.open(io.BytesIO(image)) as got, Image.open(source) as want:
        assert ext == ".png" and got.mode == want.mode and got.size == want.size
        assert np.array_equal(np.asarray(got), np.asarray(want))
