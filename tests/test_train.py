"""Training: the loss falls on real crops, a resumed run is the same run, export codes exactly,
and `bswd eval` reports the sizes of the files it writes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bswd.cli import app
from bswd.data import PatchSampler
from bswd.engine import Engine, EngineConfig
from bswd.model.config import ModelConfig
from bswd.model.quant import load_coding_model
from bswd.train import PatchSource, TrainConfig, Trainer, evaluate
from tests.conftest import noise

DATA = Path(__file__).parent / "data"
SMALL = ModelConfig(n_layers=2, width=16, upsample_width=8, latent_channels=4)
SMALL_CONTEXT = ModelConfig(n_layers=2, width=16, latent_channels=4, pixel_context=True, context_width=8)


class CropPatches(PatchSource):
    """Patches of the committed real photo crops (tests/data)."""

    def __init__(self) -> None:
        self.sampler = PatchSampler(sorted(DATA.glob("*.png")), seed=0, n_scales=1, workers=1)

    def sample(self, n, rng):
        return self.sampler.sample(n, rng)

    def validation(self, n):
        return self.sampler.sample(n, np.random.default_rng(99))


def config(steps: int, qat_start: float = 0.5, model: ModelConfig = SMALL) -> TrainConfig:
    return TrainConfig(steps=steps, batch=16, val_every=1000, val_patches=64, qat_start=qat_start,
                       checkpoint_minutes=1000, model=model)


# the pixel-context net starts from an interpolating predictor (4.7 bits/dim, not ~8): less to gain
@pytest.mark.parametrize("model,gain", [(SMALL, 0.2), (SMALL_CONTEXT, 0.05)], ids=["factorized", "pixel-context"])
def test_a_few_steps_lower_the_loss(tmp_path, model, gain):
    data = CropPatches()
    trainer = Trainer(config(60, qat_start=1.0, model=model), tmp_path, data)
    before = evaluate(trainer.model, trainer.val_patches)
    trainer.run()
    after = evaluate(trainer.model, trainer.val_patches)
    assert after < before - gain, (before, after)  # 60 steps, most of them in the LR warm-up
    assert (tmp_path / "log.csv").read_text().startswith("step,seconds,train_bpd,val_bpd")
    assert (tmp_path / "curve.png").stat().st_size > 0


def test_resume_continues_the_same_run(tmp_path):
    data = CropPatches()
    straight = Trainer(config(8), tmp_path / "a", data)
    straight.run()
    first = Trainer(config(8), tmp_path / "b", data)
    first.run(stop_at=4)  # crosses into QAT at step 4 after resuming
    resumed = Trainer.resume(tmp_path / "b", data)
    assert resumed.step == 4
    assert resumed.opt.state_dict()["state"][0]["step"] == first.opt.state_dict()["state"][0]["step"]
    resumed.run()
    assert resumed.step == 8
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("model", [SMALL, SMALL_CONTEXT], ids=["factorized", "pixel-context"])
def test_export_codes_exactly(tmp_path, model):
    from bswd.train_cmd import run_export

    trainer = Trainer(config(4, qat_start=0.0, model=model), tmp_path / "run", CropPatches())
    trainer.run()
    assert run_export(tmp_path / "run", tmp_path / "m.bswm", "t") == 0
    from bswd.model.modelfile import read_model_file

    model = load_coding_model(read_model_file(tmp_path / "m.bswm"))
    engine = Engine(model, EngineConfig(min_patches_per_lane=1))
    img = noise(40, 40, seed=8)
    assert np.array_equal(engine.decode(engine.encode([img]))[0], img)


def test_export_is_deterministic_and_never_replaces_a_file_unasked(tmp_path):
    """The model hash names the model in every .bsw: exporting a checkpoint again must give the
    same bytes; an existing output (here an image) is refused without --force."""
    Trainer(config(2, model=SMALL_CONTEXT), tmp_path / "run", CropPatches()).run()
    runner = CliRunner()
    first = runner.invoke(app, ["export", str(tmp_path / "run"), "-o", str(tmp_path / "a.bswm")])
    second = runner.invoke(app, ["export", str(tmp_path / "run"), "-o", str(tmp_path / "b.bswm")])
    assert first.exit_code == second.exit_code == 0, first.output
    assert (tmp_path / "a.bswm").read_bytes() == (tmp_path / "b.bswm").read_bytes()
    photo = tmp_path / "photo.png"
    photo.write_bytes((DATA / "home_64x64.png").read_bytes())
    res = runner.invoke(app, ["export", str(tmp_path / "run"), "-o", str(photo)])
    assert res.exit_code == 2 and "photo.png: already exists (use --force to overwrite)" in res.output
    assert photo.read_bytes() == (DATA / "home_64x64.png").read_bytes()
    res = runner.invoke(app, ["export", str(tmp_path / "run"), "-o", str(photo), "--force"])
    assert res.exit_code == 0 and photo.read_bytes() == (tmp_path / "a.bswm").read_bytes()
    res = runner.invoke(app, ["export", str(tmp_path / "run"), "-o", str(tmp_path / "nodir" / "m.bswm")])
    assert res.exit_code == 1 and "nodir: no such folder" in res.output


def test_init_warm_starts_every_matching_tensor(tmp_path):
    """`bswd train --init`: a pixel-context run starts from a factorized run's latent networks."""
    data = CropPatches()
    old = Trainer(config(2), tmp_path / "old", data)
    old.run()
    new = Trainer(config(2, model=SMALL_CONTEXT), tmp_path / "new", data)
    copied, fresh = new.init_from(tmp_path / "old" / "checkpoint.pt")
    own = new.model.state_dict()
    heads = ("priors.0.from_", "priors.0.hidden", "priors.0.head", "priors.0.linear")
    assert copied + fresh == len(own)
    assert fresh == len([k for k in own if k.startswith(heads)]) > 0  # only the new pixel head
    assert torch.equal(own["posteriors.0.stem.v"], old.ema.state_dict()["posteriors.0.stem.v"])
    assert torch.equal(new.ema.state_dict()["priors.1.head.v"], old.ema.state_dict()["priors.1.head.v"])


def test_eval_reports_the_sizes_of_the_files_it_writes(tmp_path):
    from tests.conftest import make_model_file

    model = tmp_path / "m.bswm"
    model.write_bytes(make_model_file().to_bytes())
    res = CliRunner().invoke(app, ["eval", str(DATA / "home_64x64.png"), "--model", str(model),
                                   "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    row = next(line for line in res.output.splitlines() if line.startswith("home_64x64"))
    bswd_bpd = float(row.split()[3])
    size = (tmp_path / "out" / "home_64x64.png.bsw").stat().st_size
    assert re.match(r"home_64x64\.png\s+64x64", row)
    assert abs(bswd_bpd - 8 * size / (64 * 64 * 3)) < 5e-4


def test_eval_skips_what_is_not_8_bit_rgb_and_keeps_existing_files(tmp_path):
    """A 16-bit or RGBA picture would be measured (and its --out .bsw written) as something else."""
    from PIL import Image

    from tests.conftest import make_model_file

    model = tmp_path / "m.bswm"
    model.write_bytes(make_model_file().to_bytes())
    import imagecodecs

    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(tmp_path / "deep.png")
    # Pillow opens 16-bit RGB as 8-bit "RGB": the check must not trust the mode
    (tmp_path / "rgb16.png").write_bytes(imagecodecs.png_encode(np.full((8, 8, 3), 40000, dtype=np.uint16)))
    Image.new("RGBA", (8, 8), (1, 2, 3, 4)).save(tmp_path / "alpha.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "home_64x64.png.bsw").write_bytes(b"mine")
    inputs = [str(tmp_path / n) for n in ("deep.png", "alpha.png", "rgb16.png")] + [str(DATA / "home_64x64.png")]
    res = CliRunner().invoke(app, ["eval", *inputs, "--model", str(model), "--out", str(tmp_path / "out")])
    assert res.exit_code == 1
    assert f"{tmp_path / 'deep.png'}: skipped: a I;16 image" in res.output
    assert f"{tmp_path / 'alpha.png'}: skipped: a RGBA image" in res.output
    assert f"{tmp_path / 'rgb16.png'}: skipped: a 16-bit or multi-frame RGB image" in res.output
    assert [line.split()[0] for line in res.output.splitlines() if line.endswith(tuple("0123456789"))
            and not line.startswith("bswd")] == ["home_64x64.png", "overall"]  # only the RGB photo measured
    assert "home_64x64.png.bsw: not written" in res.output and "home_64x64.png " in res.output
    assert (tmp_path / "out" / "home_64x64.png.bsw").read_bytes() == b"mine"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["home_64x64.png.bsw"]


def test_cli_run_records_its_quantization_start(tmp_path):
    """`bswd train --qat-from`: the run folder's config says when quantization-aware training began."""
    import json

    res = CliRunner().invoke(app, ["train", "--data", str(DATA), "--out", str(tmp_path / "run"), "--steps", "2",
                                   "--batch", "4", "--width", "8", "--layers", "2", "--no-pixel-context",
                                   "--threads", "1", "--qat-from", "0.5"])
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["qat_start"] == 0.5 and saved["steps"] == 2
    assert (tmp_path / "run" / "checkpoint.pt").exists()


def test_resume_takes_a_new_step_total_and_refuses_other_settings(tmp_path):
    """`bswd train --resume RUN --steps N` extends a finished run (the learning rate follows the
    new plan); settings that would change the run are refused, not silently ignored."""
    import json

    runner = CliRunner()
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", "--data", str(DATA), "--out", str(run), "--steps", "2", "--batch", "4",
                              "--width", "8", "--layers", "2", "--latent-channels", "2", "--context-width", "4",
                              "--threads", "1"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["train", "--resume", str(run), "--steps", "3"])
    assert res.exit_code == 0 and "trained to step 3" in res.output, res.output
    assert json.loads((run / "train_config.json").read_text())["steps"] == 3
    res = runner.invoke(app, ["train", "--resume", str(run), "--steps", "3"])
    assert res.exit_code == 1 and "is at step 3: --steps must be more than that" in res.output
    res = runner.invoke(app, ["train", "--resume", str(run), "--out", str(tmp_path / "elsewhere"), "--steps", "9"])
    assert res.exit_code == 2 and "--out" in res.output and not (tmp_path / "elsewhere").exists()
    res = runner.invoke(app, ["train", "--resume", str(run), "--width", "16", "--lr", "1e-3"])
    assert res.exit_code == 2
    assert "--width, --lr cannot change (only --steps, --device, --threads and --data can)" in res.output
    for bad in (["--batch", "0"], ["--latent-channels", "0"], ["--steps", "0"]):
        res = runner.invoke(app, ["train", "--data", str(DATA), "--out", str(tmp_path / "bad"), *bad])
        assert res.exit_code == 2 and "Invalid value" in res.output
    res = runner.invoke(app, ["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "empty")])
    assert res.exit_code == 1 and not (tmp_path / "empty").exists()  # no run folder left behind


def test_train_takes_bswd_threads_and_reports_its_last_train_figure(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("BSWD_THREADS", "1")
    res = CliRunner().invoke(app, ["train", "--data", str(DATA), "--out", str(tmp_path / "run"), "--steps", "2",
                                   "--batch", "4", "--width", "8", "--layers", "2", "--latent-channels", "2",
                                   "--context-width", "4"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["threads"] == 1
    assert "train_bpd=0.000" not in res.output  # the bar's last figure (it showed 0 after a validation)


def test_train_and_eval_refuse_bad_devices_outputs_and_schemes_in_one_line(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--data", str(DATA), "--out", str(tmp_path / "r"), "--device", "tpu"])
    assert res.exit_code == 2 and "--device tpu: not a device" in res.output and not (tmp_path / "r").exists()
    (tmp_path / "file").write_text("x")
    res = runner.invoke(app, ["train", "--data", str(DATA), "--out", str(tmp_path / "file")])
    assert res.exit_code == 2 and "exists and is not a folder" in res.output
    res = runner.invoke(app, ["eval", str(DATA / "home_64x64.png"), "--scheme", "foo"])
    assert res.exit_code == 2 and "unknown scheme 'foo'" in res.output
    (tmp_path / "empty.png").write_bytes(b"")
    res = runner.invoke(app, ["eval", str(tmp_path / "empty.png")])
    assert res.exit_code == 1 and f"{tmp_path / 'empty.png'}: {tmp_path / 'empty.png'}" not in res.output
