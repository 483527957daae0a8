"""The pixel-context likelihood (cfg.pixel_context): stages only ever read what the decoder has,
the integer twin computes what the trained float network computes, and wide integer sums stay exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bswd.codec import context_pixels, merge_polyphase, patch_mask, split_polyphase
from bswd.engine import Engine, EngineConfig
from bswd.model.integer import EXACT_FLOAT32, IntConv, cpu_conv_is_exact, exact_splits
from bswd.model.modelfile import ModelFile
from bswd.model.net import BitSwapVAE, head_params
from bswd.model.quant import export_model, load_coding_model
from bswd.tables import MEAN_FRAC, latent_centres
from tests.conftest import TINY_CONTEXT, noise


def test_polyphase_split_and_merge_are_inverse():
    x = noise(32, 32, seed=3).transpose(2, 0, 1)[None]
    parts = split_polyphase(x)
    assert parts.shape == (1, 4, 3, 16, 16)
    assert parts[0, 1, 2, 0, 0] == x[0, 2, 1, 1]  # stage 1 is the (1, 1) sub-lattice
    assert np.array_equal(merge_polyphase(parts), x)


def test_context_hides_padding_and_keeps_grey_copies():
    x = noise(32, 32, seed=4).transpose(2, 0, 1)[None].copy()
    x[0, 1:] = x[0, 0]  # a grey patch, as extract_patch fills it
    mask = patch_mask(20, 9, 1)[None]
    ctx = merge_polyphase(context_pixels(x, mask))
    assert (ctx[0, :, 20:, :] == 128).all() and (ctx[0, :, :, 9:] == 128).all()
    assert np.array_equal(ctx[0, 1, :20, :9], x[0, 0, :20, :9])


def test_undecoded_pixels_never_change_a_stage(context_model):
    """What a stage and a channel's mean read must be decoded already: garbage anywhere else
    leaves every parameter bit-identical (the decoder holds 128 there, the encoder the truth)."""
    nets = context_model.nets
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 256, (3, 4, 3, 16, 16))
    z1 = rng.integers(0, context_model.cfg.latent_bins, (3, *context_model.cfg.latent_shape))
    trunk = nets.pixel_trunk(z1)
    for s in range(4):
        for c in range(3):
            known = np.zeros(truth.shape, dtype=bool)
            known[:, :s] = True
            known[:, s, :c] = True
            garbage = np.where(known, truth, rng.integers(0, 256, truth.shape))
            base_t, sidx_t = nets.pixel_stage(trunk, truth, s)
            base_g, sidx_g = nets.pixel_stage(trunk, garbage, s)
            assert np.array_equal(sidx_t, sidx_g)
            assert torch.equal(base_t, base_g)
            mean_t = nets.pixel_mean(base_t, truth, s)[:, c]
            mean_g = nets.pixel_mean(base_g, garbage, s)[:, c]
            assert np.array_equal(mean_t, mean_g), (s, c)


def test_integer_twin_computes_the_float_network():
    """Export maps every multiplier right: the integer means and scales equal the QAT float ones
    up to the rounding of requantization (a wrong scale would be off by far more)."""
    torch.manual_seed(5)
    net = BitSwapVAE(TINY_CONTEXT)
    net.set_quant(True)
    net.eval()
    model = load_coding_model(export_model(net, "twin"))
    cfg = TINY_CONTEXT
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (4, 3, 32, 32))
    x[:2] = np.clip(x[:2] // 8 + 100, 0, 255)  # some smoother patches too
    z1 = rng.integers(0, cfg.latent_bins, (4, *cfg.latent_shape))
    centres = latent_centres(cfg.latent_bins, cfg.latent_in_frac, cfg.latent_in_bound)
    with torch.no_grad():
        z_in = torch.from_numpy(centres[z1] * 2.0**-cfg.latent_in_frac).float()
        raw_m, raw_s = net.priors[0](z_in, net.pixel_input(torch.from_numpy(x).float()))
        mean_f, logscale_f = head_params(raw_m, raw_s, cfg.pixel_head, True)
    nets = model.nets
    trunk = nets.pixel_trunk(z1)
    ctx = split_polyphase(x)
    means, idx = [], []
    for s in range(4):
        base, sidx = nets.pixel_stage(trunk, ctx, s)
        means.append(nets.pixel_mean(base, ctx, s))
        idx.append(sidx)
    mean_i = merge_polyphase(np.stack(means, 1)) / 2.0**MEAN_FRAC
    index_f = np.round((logscale_f.numpy() - cfg.pixel_scales.log_min) / cfg.pixel_scales.step)
    index_i = merge_polyphase(np.stack(idx, 1))
    assert np.abs(mean_i - mean_f.numpy()).max() < 0.6
    assert np.abs(mean_i - mean_f.numpy()).mean() < 0.05
    assert np.abs(index_i - index_f).max() <= 1
    assert (index_i == index_f).mean() > 0.95


def test_wide_weights_are_cut_into_exact_sums():
    rng = np.random.default_rng(2)
    w = rng.integers(-2047, 2048, (3, 300)).astype(np.int16)  # 12 input channels x 5 x 5
    cuts = exact_splits(w, 128, kernel=5)
    assert cuts and all(c % 25 == 0 for c in cuts)  # whole input channels: conv2d can take the parts
    bounds = np.abs(w.astype(np.int64)) * 128
    edges = (0, *cuts, 300)
    assert all(bounds[:, i:j].sum(1).max() < EXACT_FLOAT32 for i, j in zip(edges[:-1], edges[1:]))
    assert exact_splits(np.full((2, 9), 127, np.int8), 128, kernel=3) == ()
    # the split conv equals int64 arithmetic on inputs at the bound, on the CPU conv2d path and on
    # the im2col path (the one CUDA takes; the CPU takes it too whenever NNPACK is switched on)
    a = rng.integers(-128, 128, (2, 12, 16, 16)).astype(np.float32)
    conv = IntConv(torch.from_numpy(w.astype(np.float32)), torch.zeros(3, dtype=torch.int64),
                   torch.ones(3, dtype=torch.int64), torch.ones(3, dtype=torch.int64), 5, 1, 2, cuts)
    cols = torch.nn.functional.unfold(torch.from_numpy(a).double(), 5, padding=2)
    exact = torch.einsum("ok,bkl->bol", torch.from_numpy(w.astype(np.float64)), cols).round().long()
    assert cpu_conv_is_exact()
    assert torch.equal(conv.accumulate(torch.from_numpy(a)).flatten(2), exact)
    with torch.backends.nnpack.flags(enabled=True):
        assert not cpu_conv_is_exact()
        assert torch.equal(conv.accumulate(torch.from_numpy(a)).flatten(2), exact)
    with pytest.raises(ValueError, match="2\\*\\*24"):
        exact_splits(np.array([[1 << 17]], dtype=np.int64), 128)
    with pytest.raises(ValueError, match="input-channel boundaries"):
        IntConv(torch.from_numpy(w.astype(np.float32)), torch.zeros(3, dtype=torch.int64),
                torch.ones(3, dtype=torch.int64), torch.ones(3, dtype=torch.int64), 5, 1, 2, (30,))


def test_model_file_keeps_the_wide_predictor_weights():
    torch.manual_seed(6)
    mf = export_model(BitSwapVAE(TINY_CONTEXT), "wide")
    again = ModelFile.from_bytes(mf.to_bytes())
    assert again.sha256 == mf.sha256
    w = again.tensors["prior1.stage3.linear.w"]
    assert w.dtype == np.int16 and w.shape == (3, 12 * TINY_CONTEXT.context_kernel**2)
    assert again.tensors["prior1.stage3.hidden.w"].dtype == np.int8
    assert (w.reshape(3, 12, -1)[0, 9:] == 0).all()  # R of stage 3 sees none of its own channels


def test_a_mixed_batch_of_grey_and_colour_edge_patches_round_trips(context_model):
    """One step codes grey and colour lanes side by side: a grey lane's G/B copies must survive
    the colour lanes' G/B pops (a bug the first draft had)."""
    engine = Engine(context_model, EngineConfig(min_patches_per_lane=2))
    planes = [noise(45, 70, seed=1), noise(33, 31, 1, seed=2), noise(1, 1, seed=3),
              np.full((40, 40, 1), 200, np.uint8)]
    for scheme in ("bitswap", "bbans"):
        back = engine.decode(engine.encode(planes, scheme))
        assert all(np.array_equal(a, b) for a, b in zip(planes, back))


@pytest.mark.parametrize("stage", range(4))
def test_the_starting_predictor_only_reads_decoded_pixels(stage):
    from bswd.model.net import context_mask, interpolation_weights

    w = interpolation_weights(stage, 5)
    assert not ((w != 0) & (context_mask(stage, 5) == 0)).any()
    sums = w.flatten(1).sum(1)  # predicts a flat patch exactly
    assert torch.allclose(sums, torch.tensor([0.0 if stage == 0 else 1.0, 1.0, 1.0]))
