"""``bswd train`` / ``bswd export`` / ``bswd eval``: making a model and measuring it honestly."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bswd.shell import Exit, atomic_write, engine_or_fail, fail

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".ppm", ".webp"}


NEW_RUN_DEFAULTS = {"steps": 6000, "batch": 64, "width": 48, "layers": 3, "latent_channels": 8,
                    "context_width": 32, "pixel_context": True, "init": None, "qat_from": 0.3, "lr": None}


def run_train(data: Path | None, out: Path | None, resume: Path | None, steps: int | None, device: str,
              threads: int = 0, options: dict[str, Any] | None = None) -> Exit:
    """``options``: the new-run settings given (NEW_RUN_DEFAULTS names them); a resumed run keeps
    its own and refuses them."""
    import torch

    from bswd.model.config import ModelConfig
    from bswd.train import CHECKPOINT, PhotoPatches, TrainConfig, Trainer

    options = options or {}
    threads = threads or int(os.environ.get("BSWD_THREADS") or 0)  # as compress and the daemon
    if device.startswith("cuda") and not torch.cuda.is_available():
        fail(f"--device {device}: no CUDA device is available")
        return Exit.USAGE
    if resume is None and (data is None or out is None):
        fail("give --data and --out for a new run, or --resume RUN")
        return Exit.USAGE
    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        fail(f"--device {device}: not a device; use cpu, cuda or cuda:N")
        return Exit.USAGE
    if out is not None and out.exists() and not out.is_dir():
        fail(f"--out {out}: exists and is not a folder")
        return Exit.USAGE
    if resume is not None and out is not None:
        fail(f"--resume continues {resume} in its own folder; --out {out} cannot go with it")
        return Exit.USAGE
    if resume is not None and options:
        names = ", ".join("--" + k.replace("_", "-") for k in options)
        fail(f"--resume continues {resume} as it was configured: {names} cannot change "
             "(only --steps, --device, --threads and --data can)")
        return Exit.USAGE
    run_dir = resume or out
    assert run_dir is not None
    try:
        if resume is not None:
            if not (resume / CHECKPOINT).exists():
                fail(f"{resume}: no {CHECKPOINT} to resume from")
                return Exit.FAILED
            note = resume / "data_dir.txt"
            if data is None and not note.exists():
                fail(f"{resume}: the run does not record its data folder; pass --data")
                return Exit.USAGE
            data = data or Path(note.read_text().strip())
            trainer = Trainer.resume(resume, PhotoPatches(data), device, threads or None, steps)
        else:
            assert data is not None and out is not None
            if (out / CHECKPOINT).exists():
                fail(f"{out}: already holds a run; use --resume {out}")
                return Exit.FAILED
            o = {**NEW_RUN_DEFAULTS, **options, "steps": steps or NEW_RUN_DEFAULTS["steps"]}
            init = o["init"]
            if init is not None and not (init / CHECKPOINT).exists():
                fail(f"--init {init}: no {CHECKPOINT} there")
                return Exit.USAGE
            rates = {} if o["lr"] is None else {"lr": o["lr"], "lr_final": o["lr"] / 4}  # the recipe's 4x decay
            cfg = TrainConfig(steps=o["steps"], batch=o["batch"], device=device, threads=threads,
                              qat_start=o["qat_from"], **rates,
                              model=ModelConfig(width=o["width"], n_layers=o["layers"],
                                                pixel_context=o["pixel_context"], latent_channels=o["latent_channels"],
                                                context_width=o["context_width"]))
            patches = PhotoPatches(data)  # bad data fails here, before the run folder exists
            out.mkdir(parents=True, exist_ok=True)
            trainer = Trainer(cfg, out, patches)
            if init is not None:
                loaded, fresh = trainer.init_from(init / CHECKPOINT)
                print(f"initialized {loaded} tensors from {init}; {fresh} start fresh", file=sys.stderr)
                if trainer.init_note:
                    print(trainer.init_note, file=sys.stderr)
                if trainer.pruned_from is not None:
                    kept = trainer.pruned_from["kept"]
                    record = {"init": str(init), **trainer.pruned_from}
                    (out / "pruned_from.json").write_text(json.dumps(record, indent=2))
                    print(f"kept the latent channels with the most information: {kept} (pruned_from.json)",
                          file=sys.stderr)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
        return Exit.FAILED
    (run_dir / "data_dir.txt").write_text(str(data.resolve()) + "\n")
    from tqdm import tqdm

    bar = tqdm(total=trainer.cfg.steps, initial=trainer.step, unit="step", file=sys.stderr)
    last_val: list[float] = []

    stopping: list[int] = []

    def progress(step: int, train_bpd: float, val: float | None) -> None:
        if stopping:  # a step boundary: the checkpoint will be consistent
            raise KeyboardInterrupt
        if val is not None:
            last_val.append(val)
        bar.update(1)
        bar.set_postfix(train_bpd=f"{train_bpd:.3f}", val_bpd=f"{last_val[-1]:.3f}" if last_val else "-")

    import signal

    def stop(signum, frame):  # SIGTERM (kill, systemd, a job scheduler): save at the next step
        stopping.append(signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        trainer.run(progress)
    except KeyboardInterrupt:
        trainer.save()
        fail(f"interrupted at step {trainer.step}; checkpoint saved, continue with --resume {run_dir}")
        return Exit.FAILED
    finally:
        signal.signal(signal.SIGTERM, previous)
        bar.close()
    print(f"trained to step {trainer.step} in {trainer.elapsed / 3600:.2f} h; log {run_dir / 'log.csv'}, "
          f"curve {run_dir / 'curve.png'}")
    return Exit.OK


def run_export(run: Path, output: Path, model_id: str, force: bool = False) -> Exit:
    import torch

    from bswd.model.net import BitSwapVAE
    from bswd.model.quant import export_model
    from bswd.train import CHECKPOINT, TrainConfig

    if output.exists() and not force:
        fail(f"{output}: already exists (use --force to overwrite)")
        return Exit.USAGE
    if output.is_dir():
        fail(f"{output}: is a folder; name the model file to write")
        return Exit.USAGE
    try:
        state = torch.load(run / CHECKPOINT, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError) as exc:
        fail(f"{run / CHECKPOINT}: cannot load checkpoint: {exc}")
        return Exit.FAILED
    cfg = TrainConfig.from_dict(state["train_config"])
    model = BitSwapVAE(cfg.model)
    model.load_state_dict(state["ema"])
    model.set_quant(True)
    # Only what the checkpoint holds goes in (no export time): the file's hash names the model in
    # every .bsw, so exporting the same checkpoint again must give the same file.
    meta = {"train_config": cfg.to_dict(), "step": state["step"],
            "train_hours": round(state["elapsed"] / 3600, 3),
            "quantized_from_step": int(cfg.qat_start * cfg.steps)}
    data_note = run / "data_dir.txt"
    if data_note.exists():
        meta["data"] = "bswd data fetch (see ../shared/data/train-sources.md allow-list), training split"
    mf = export_model(model, model_id, meta)
    try:
        atomic_write(output, mf.to_bytes(), overwrite=force)
    except OSError as exc:
        fail(f"{output}: cannot write: {exc}")
        return Exit.FAILED
    print(f"{output}: model {model_id!r}, sha256 {mf.sha256.hex()}, {output.stat().st_size:,} bytes")
    return Exit.OK


def image_paths(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    return out


def run_eval(paths: list[Path], model: Path | None, device: str, scheme: str, out: Path | None = None,
             force: bool = False) -> Exit:
    from PIL import Image

    from bswd import container
    from bswd.classical import compare
    from bswd.codec import SCHEMES
    from bswd.files import compress_images, decompress_many
    from bswd.images import ImageInputError, raw_sample_bytes, split_image

    if scheme not in SCHEMES:
        fail(f"unknown scheme {scheme!r}; use bitswap or bbans")
        return Exit.USAGE
    files = image_paths(paths)
    if not files:
        fail("no images found in " + ", ".join(map(str, paths)))
        return Exit.FAILED
    engine = engine_or_fail(model, device)
    if engine is None:
        return Exit.FAILED
    header = (f"{'image':32} {'size':>9} {'-ELBO':>7} {'bswd':>7} {'png':>7} {'webp':>7} {'jxl':>7}  (bits/dim; "
              "the model itself: no classical fallback)")
    print(header)
    totals = np.zeros(6)
    status = Exit.OK
    measured = 0
    for path in files:
        try:
            data = path.read_bytes()
            source = split_image(data, name=str(path), verify=False)  # names what is wrong with a bad file
            with Image.open(io.BytesIO(data)) as im:
                mode = im.mode
        except ImageInputError as exc:
            fail(str(exc))  # it names the file already
            status = Exit.FAILED
            continue
        except OSError as exc:
            fail(f"{path}: {exc.strerror or exc}")
            status = Exit.FAILED
            continue
        planes = source.planes
        # one 8-bit RGB plane holding every sample: anything else (16-bit, alpha, palette, grey,
        # frames) would be measured, and written with --out, as a different picture
        if len(planes) != 1 or planes[0].shape[2] != 3 or raw_sample_bytes(source.side) != planes[0].size:
            what = "16-bit or multi-frame RGB" if mode == "RGB" else mode
            print(f"bswd: note: {path}: skipped: a {what} image; eval measures the model on 8-bit RGB "
                  "pictures (bswd compress codes every kind)", file=sys.stderr)
            continue
        rgb = planes[0]
        measured += 1
        buf = _png_bytes(rgb)
        split = split_image(buf, name=str(path), verify=False)
        [res] = compress_images(engine, [split], scheme, allow_stored=False)  # measure the model itself
        [(back, _)] = decompress_many(engine, [container.decode(res.data)])
        again = split_image(back, name=str(path), verify=False)
        if not np.array_equal(again.planes[0], rgb):
            fail(f"{path}: round trip failed")
            return Exit.FAILED
        dims = rgb.size
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            try:
                atomic_write(out / (path.name + ".bsw"), res.data, overwrite=force)
            except OSError as exc:
                fail(f"{out / (path.name + '.bsw')}: not written: {exc}")
                status = Exit.FAILED
        sizes = {r.name: r.size_bytes for r in compare(rgb, ["png", "webp", "jxl"])}
        row = np.array([dims, res.info_bits, 8 * len(res.data), 8 * sizes["png"], 8 * sizes["webp"], 8 * sizes["jxl"]])
        totals += row
        print(f"{path.name[:32]:32} {rgb.shape[1]}x{rgb.shape[0]:<5} " + " ".join(f"{v / dims:7.3f}" for v in row[1:]))
    if totals[0]:
        print(f"{'overall':32} {'':9} " + " ".join(f"{v / totals[0]:7.3f}" for v in totals[1:]))
    if not measured:
        fail("no 8-bit RGB picture to measure")
        return Exit.FAILED
    return status


def _png_bytes(rgb: np.ndarray) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="PNG", compress_level=1)
    return out.getvalue()



