"""The torch coder (codec_torch.TorchPatchCoder: networks, tables and ANS lanes on one device)
writes exactly the numpy coder's bytes and decodes its files. Run on the CPU here; tests/test_cuda.py
runs the same coder on a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bswd.ans import Lanes
from bswd.ans_torch import TorchLanes
from bswd.engine import Engine, EngineConfig
from bswd.model.quant import load_coding_model
from tests.conftest import noise

DATA = Path(__file__).parent / "data"
PLANES = [noise(70, 45, 3, seed=1), noise(33, 64, 1, seed=2), noise(96, 96, 3, seed=3)]


def lanes_of(coded):
    return [(ln.n_patches, ln.low_water, ln.heads.tobytes(), ln.words.tobytes(), ln.donor, ln.fork, ln.donated)
            for c in coded for ln in c.lanes]


@pytest.fixture(params=["factorized", "pixel-context"])
def model(request, tiny_model, context_model):
    return tiny_model if request.param == "factorized" else context_model


@pytest.mark.parametrize("scheme", ["bitswap", "bbans"])
@pytest.mark.parametrize("workers", [1, 2])
def test_torch_coder_writes_the_numpy_coders_bytes_and_reads_them(model, scheme, workers):
    options = dict(min_patches_per_lane=2, workers=workers, max_rows=4)
    numpy_engine = Engine(model, EngineConfig(backend="numpy", **options))
    torch_engine = Engine(model, EngineConfig(backend="torch", **options))
    a = numpy_engine.encode(PLANES, scheme)
    b = torch_engine.encode(PLANES, scheme)
    assert sum(len(c.lanes) for c in a) > 3 and any(ln.donor >= 0 for c in a for ln in c.lanes)
    assert lanes_of(a) == lanes_of(b)
    assert [c.info_bits for c in a] == pytest.approx([c.info_bits for c in b], rel=1e-12)
    for decoded in (torch_engine.decode(a), numpy_engine.decode(b)):
        assert all(np.array_equal(x, y) for x, y in zip(decoded, PLANES))


def test_the_default_model_gives_the_same_file_on_either_coder():
    from bswd.model.modelfile import read_model_file
    from bswd.model.registry import default_model_path

    torch.set_num_threads(1)
    model = load_coding_model(read_model_file(default_model_path()))
    img = np.asarray(Image.open(DATA / "home_64x64.png").convert("RGB"))
    a = Engine(model, EngineConfig(backend="numpy")).encode([img])
    b = Engine(model, EngineConfig(backend="torch")).encode([img])
    assert lanes_of(a) == lanes_of(b)
    assert np.array_equal(Engine(model, EngineConfig(backend="torch")).decode(b)[0], img)


def test_auto_picks_numpy_on_the_cpu_and_unknown_backends_are_refused(tiny_model):
    from bswd.codec_torch import TorchPatchCoder

    assert type(Engine(tiny_model).coder("bitswap")).__name__ == "PatchCoder"
    assert isinstance(Engine(tiny_model, EngineConfig(backend="torch")).coder("bbans"), TorchPatchCoder)
    with pytest.raises(ValueError, match="unknown engine backend 'cuda'"):
        Engine(tiny_model, EngineConfig(backend="cuda"))


def test_torch_lanes_bookkeeping_matches_lanes():
    """start, put/take words, payload, load, is_initial(_below) on a device row equal ans.Lanes."""
    ref, dev = Lanes(3, 4, 24), TorchLanes.empty(3, 4, 24)
    gift = (np.arange(2000, dtype=np.uint64) * 2654435761 % (1 << 32)).astype(np.uint32)  # high bits set too
    for lanes in (ref, dev):
        lanes.start(1, seed=7, lane=5, reservoir=40)
        lanes.put_words(1, gift)  # grows past the initial capacity of 1024
    assert np.array_equal(dev.take_words(1, 300), ref.take_words(1, 300))
    low_r, heads_r, words_r = ref.payload(1)
    low_d, heads_d, words_d = dev.payload(1)
    assert (low_d, heads_d.tolist(), words_d.tolist()) == (low_r, heads_r.tolist(), words_r.tolist())
    assert np.array_equal(dev.is_initial_below(1, 7, 5, 40), ref.is_initial_below(1, 7, 5, 40))
    assert dev.is_initial_below(1, 7, 6, 40) is None and not dev.is_initial(1, 7, 5)
    dev.load(2, 7, 5, low_r, heads_r, words_r)
    assert np.array_equal(dev.to_lanes().words[2, : low_r + len(words_r)], ref.words[1, : ref.ptr[1]])
    dev.start(0, seed=7, lane=5, reservoir=40)
    assert dev.is_initial(0, 7, 5) and dev.content_words(0) == 0
