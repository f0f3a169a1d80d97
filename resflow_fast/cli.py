"""The ``resflow`` command: ``train``, ``restore``, ``export``, ``demo``, ``bench``, ``eval`` and
``training-photos``.

Errors a user can act on (a bad path, a corrupt checkpoint, an unknown preset...) are printed as
one line naming the problem, with exit status 2 and no traceback; ``RESFLOW_DEBUG=1`` shows it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch


class UsageError(ValueError):
    """A command-line mistake, reported without a traceback."""


# ----------------------------------------------------------------------------------------------
# helpers shared by the commands
# ----------------------------------------------------------------------------------------------
def _device(name: str) -> torch.device:
    """--device by the package's one device rule (bad names are ValueErrors)."""
    from .reference.system import pick_device

    return pick_device(name)


#: File endings `resflow restore` picks up in folders (explicitly named files may have any ending).
RESTORE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".tga", ".ppm", ".pgm", ".pnm")


def _tile_arg(text: str) -> int | str | None:
    """--tile: "auto", "0"/"off" (never tile) or a side in pixels."""
    from .restorer import MIN_TILE_SIDE

    if text in ("auto", "off", "none", "0"):
        return None if text != "auto" else "auto"
    try:
        side = int(text)
    except ValueError:
        side = -1
    if side < MIN_TILE_SIDE:
        raise argparse.ArgumentTypeError(f"expected 'auto', 'off' or a tile side of at least {MIN_TILE_SIDE} pixels, "
                                         f"got {text!r}")
    return side


def _seed_arg(text: str) -> int:
    """--seed of restore: an integer the auxiliary noise's 64-bit generator takes."""
    from .restorer import MAX_SEED

    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if not 0 <= seed <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2**64 - 1, got {text!r}")
    return seed


def _folder_images(folder: Path, recursive: bool) -> tuple[list[Path], int]:
    """The images in ``folder`` (and below it with ``recursive``), and how many sub-folders were not searched."""
    candidates = list(folder.rglob("*") if recursive else folder.iterdir())
    # Hidden files (macOS "._x.jpg" forks, our own ".x.png.tmp" temp files) are never images to restore.
    visible = [p for p in candidates if not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    images = (p for p in visible if p.is_file() and p.suffix.lower() in RESTORE_EXTENSIONS)
    skipped_folders = 0 if recursive else sum(1 for p in visible if p.is_dir())
    return sorted(images, key=lambda p: p.relative_to(folder).as_posix()), skipped_folders


def _is_under(path: Path, folder: Path) -> bool:
    return folder in path.resolve().parents


def _collect_inputs(patterns: list[str], recursive: bool,
                    out_folder: Path | None = None) -> tuple[list[tuple[Path, Path]], int]:
    """(file, where it goes under OUT) for files, folders (tree mirrored) and globs (flat), and the
    number of sub-folders of the named folders that were not searched (no ``--recursive``).

    Files a folder or pattern finds inside ``out_folder`` are earlier outputs, not inputs: left out,
    so that restoring a tree into a folder within it and running again does not restore the
    restorations. A folder or pattern that finds no image is a usage error."""
    import glob

    found: list[tuple[Path, Path]] = []
    skipped_folders = 0
    outputs = out_folder.resolve() if out_folder is not None else None
    for text in patterns:
        path = Path(text)
        if path.is_dir():
            images, skipped = _folder_images(path, recursive)
            images = [f for f in images if outputs is None or not _is_under(f, outputs)]
            if not images:
                hint = f" ({skipped} sub-folder{'s' if skipped > 1 else ''} not searched: -r to include)" if skipped else ""
                raise UsageError(f"{text}: no images to restore in this folder{hint}")
            found += [(f, f.relative_to(path)) for f in images]
            skipped_folders += skipped
        elif path.exists():
            found.append((path, Path(path.name)))
        elif glob.has_magic(text):
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=recursive)) if Path(m).is_file()]
            matches = [m for m in matches if outputs is None or not _is_under(m, outputs)]
            if not matches:
                raise UsageError(f"{text}: no files match")
            found += [(m, Path(m.name)) for m in matches]
        else:
            raise UsageError(f"{text}: no such file or folder")
    return found, skipped_folders


def _output_is_a_file(out: Path) -> bool:
    """-o names a file (not a folder) when it has an image file ending and is not an existing folder."""
    from PIL import Image

    return not out.is_dir() and out.suffix.lower() in Image.registered_extensions()


def _check_writable(folders: set[Path], out: Path) -> None:
    """Create every output folder and write a probe file in each, before any restoring: a location
    that cannot take the outputs is an error naming the output, not a failure after the work."""
    import tempfile

    for folder in sorted(folders):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder, prefix=".resflow-probe-"):
                pass
        except OSError as error:
            where = out if folder == out or folder == out.parent else folder
            raise UsageError(f"{where}: cannot write the output there ({error.strerror or error})") from None


def _plan_outputs(inputs: list[tuple[Path, Path]], out: Path, single_file: bool) -> list[tuple[Path, Path]]:
    """(source, destination) pairs. The destination keeps the source's format (its extension) when
    Pillow can write it, else it becomes .png; two sources onto one destination, or a destination
    that is its own source, are refused before anything runs."""
    from .imageio import ResflowInputError, check_can_save, output_format

    if single_file:
        output_format(out)  # an -o name Pillow cannot write is a usage error, not a per-file failure
        try:  # and so is a format that cannot hold this image (RGBA or 16-bit colour as JPEG, ...)
            check_can_save(inputs[0][0], out)
        except ResflowInputError as error:
            raise UsageError(str(error)) from None
    plan, taken = [], {}
    for src, rel in inputs:
        dst = out if single_file else out / rel
        try:
            output_format(dst)
        except ResflowInputError:  # a format Pillow reads but cannot write (.psd, .pcx, ...)
            dst = dst.with_suffix(".png")
        if dst.resolve() == src.resolve():
            raise UsageError(f"{src}: the output would overwrite its own input; choose another -o")
        if dst.resolve() in taken:
            raise UsageError(f"{taken[dst.resolve()]} and {src} would both be written to {dst}")
        taken[dst.resolve()] = src
        plan.append((src, dst))
    return plan


# ----------------------------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------------------------
#: Options that belong to the machine and the sitting, not to the run: a resumed run (or one
#: started --options-from another) takes them from its own command line or the defaults, never
#: from the record (a GPU run's device, data workers and pruning must not follow it to a CPU, nor a
#: time limit outlive the command that set it).
NOT_INHERITED = ("out_dir", "device", "data_workers", "keep_last", "max_minutes")


def _checkpoint_folder(checkpoint: str | Path | bool, out_dir: str | None) -> Path | None:
    """The checkpoint folder ``checkpoint`` names: itself, a run folder's latest, or (True) the
    latest in ``out_dir``; None where there is none."""
    from .reference.checkpoint import RECORD_NAME, latest_checkpoint
    from .reference.train import TrainConfig

    if checkpoint is True:
        return latest_checkpoint(out_dir or TrainConfig.out_dir)
    path = Path(checkpoint)
    if path.is_dir() and not (path / RECORD_NAME).is_file():  # a run folder: its latest checkpoint
        return latest_checkpoint(path)
    return path


def _recorded_config(checkpoint: Path | None) -> dict:
    """The run's TrainConfig fields recorded in ``checkpoint`` (less :data:`NOT_INHERITED`); empty if
    it holds no record, for the caller or the trainer to report."""
    from .reference.checkpoint import RECORD_NAME
    from .reference.train import TrainConfig

    record_file = checkpoint / RECORD_NAME if checkpoint is not None else None
    if record_file is None or not record_file.is_file():
        return {}
    saved = json.loads(record_file.read_text(encoding="utf-8")).get("train", {})
    known = {f.name for f in fields(TrainConfig)} - set(NOT_INHERITED)
    return {k: v for k, v in saved.items() if k in known}


def cmd_train(args: argparse.Namespace) -> int:
    from .reference.train import TrainConfig, train

    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    if args.data and len(args.data) == 1:
        overrides["data"] = args.data[0]
    if args.degradation == "none":
        overrides["degradation"] = None
    # Resuming continues the run as it was configured: options not given on this command line come
    # from the checkpoint's record, so `resflow train --out-dir RUN --resume` is enough. A new run
    # may take them from another run's record the same way (--options-from).
    if args.resume is not None and args.options_from is not None:
        raise UsageError("--options-from starts a new run; --resume continues one with its own options: give one")
    resume = args.resume
    if resume is not None:
        checkpoint = _checkpoint_folder(resume, args.out_dir)
        base = _recorded_config(checkpoint)
        if resume is not True and checkpoint is not None:
            resume = str(checkpoint)
            if args.out_dir is None:  # the run goes on in the folder that holds the checkpoint
                overrides["out_dir"] = str(checkpoint.parent)
    elif args.options_from is not None:
        base = _recorded_config(_checkpoint_folder(args.options_from, None))
        if not base:
            raise UsageError(f"--options-from {args.options_from}: no training record (record.json) found there")
        base.pop("init_from", None)  # where that run started is its own history; this run says its own
    else:
        base = {}
    config = TrainConfig(**{**base, **overrides})
    from .training_hooks import trainer_hooks

    device = _device(config.device)
    result = train(config, resume=resume if resume is not None else False, progress=not args.quiet,
                   **trainer_hooks(device))
    if int(os.environ.get("RANK", 0)) == 0:
        v = result["validation"]
        msg = f"trained to step {result['step']}; checkpoint {result['checkpoint']}"
        if v:
            msg += f"; validation PSNR {v['psnr_restored']:.2f} dB (degraded input {v['psnr_input']:.2f} dB)"
        if result.get("samples_per_second"):
            msg += f"; {result['samples_per_second']:.1f} samples/s (validation and checkpoints included)"
        print(msg)
    return 0


def _sampling_options(args: argparse.Namespace) -> dict:
    return dict(steps=args.steps, time_power=args.time_power, y_mode=args.y_mode,
                sampling="paper" if args.paper_sampling else None)


class _ImageProgress:
    """A progress bar inside one image, by tile and Euler step, shown once the image has taken
    ``delay`` seconds (so quick restores print nothing)."""

    #: Seconds an image must take before its bar appears.
    DELAY_S = 2.0

    def __init__(self, name: str, enabled: bool, position: int):
        self.name, self.enabled, self.position = name, enabled, position
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.name, unit="step", delay=self.DELAY_S, leave=False,
                            position=self.position, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)
        # tqdm skips redraws within its refresh interval: a shown bar always draws its last count
        # (one not yet shown, the image quicker than DELAY_S, stays hidden)
        if done >= total and time.time() - self.bar.start_t >= self.DELAY_S:
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_restore(args: argparse.Namespace) -> int:
    """Restore files, folders (mirrored under OUT) and globs; one bad file is reported and the rest
    proceed (exit 1 if any failed). Everything that can be checked before restoring is: the model,
    the inputs, the outputs' names and that their folders can be written. Under torchrun each rank
    restores its share of the inputs."""
    from tqdm import tqdm

    from .imageio import save_image
    from .embedded_models import ModelNotInstalledError
    from .restorer import Restorer, RestoreError

    try:
        restorer = Restorer(args.model, device=args.device, dtype=args.dtype, tile=args.tile, overlap=args.overlap,
                            margin=args.margin, fused_conv=args.fused_conv, max_memory=args.max_memory,
                            **_sampling_options(args))
    except ModelNotInstalledError:
        # the package was installed without its weights files (a partial copy, or files removed)
        raise UsageError(f"the embedded {args.model!r} model is not installed in this copy of the package; "
                         "reinstall resflow-fast, or give --model a weights file, a checkpoint folder or a run "
                         "folder") from None
    out = Path(args.output)
    single_file = _output_is_a_file(out)
    inputs, skipped_folders = _collect_inputs(args.inputs, args.recursive, None if single_file else out)
    if single_file and not (len(args.inputs) == 1 and len(inputs) == 1 and Path(args.inputs[0]).is_file()):
        given = f"{len(inputs)} images were" if len(inputs) != 1 else "a folder or pattern was"
        raise UsageError(f"-o {out} names one file, but {given} given; give a folder for several inputs")
    plan = _plan_outputs(inputs, out, single_file)

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    shard = plan[rank::world]  # every rank lists the same inputs in the same order: no communication needed
    todo = [(src, dst) for src, dst in shard if args.overwrite or not dst.exists()]
    _check_writable({dst.parent for _, dst in todo} | ({out} if not single_file else set()), out)

    restored, skipped, failed = 0, len(shard) - len(todo), 0
    several = len(todo) > 1
    bar = tqdm(total=len(todo), unit="image", disable=args.quiet or not several, dynamic_ncols=True,
               desc=f"rank {rank}" if world > 1 else "restore")
    for src, dst in todo:
        inner = _ImageProgress(src.name, not args.quiet, position=1 if several else 0)
        try:
            save_image(restorer.restore(src, seed=args.seed, progress=inner), dst)
            restored += 1
            bar.update(1)  # the bar counts images restored: a failed one never moves it to 100%
        except (ValueError, OSError, RestoreError) as error:  # one bad file is reported, the rest proceed
            failed += 1
            bar.set_postfix_str(f"{failed} failed")
            reason = str(error) if str(src) in str(error) else f"{src}: {error}"
            tqdm.write(f"resflow: error: {reason}", file=sys.stderr)
        finally:
            inner.close()
    bar.close()
    where = f"rank {rank}/{world}: " if world > 1 else ""
    notes = [f"{skipped} skipped (output exists; --overwrite to redo)"] if skipped else []
    if failed:
        notes.append(f"{failed} failed")
    if skipped_folders:
        notes.append(f"{skipped_folders} sub-folder{'s' if skipped_folders > 1 else ''} not searched (-r to include)")
    summary = f"{where}restored {restored} of {len(shard)} to {out}" + "".join(f", {n}" for n in notes)
    print(summary)
    return 1 if failed else 0


def _check_export_output(checkpoint: Path, out: Path, overwrite: bool) -> None:
    """An export never replaces a file unasked, never writes into the checkpoint or run folder it
    reads (a weights file there would corrupt the checkpoint), and names a folder given as output."""
    if out.is_dir():
        raise UsageError(f"{out} is a folder; give the weights file's name, e.g. {out / 'model.safetensors'}")
    source = checkpoint.resolve()
    if (source.is_dir() and source in out.resolve().parents) or out.resolve() == source:
        raise UsageError(f"{out} lies inside the checkpoint being exported ({checkpoint}); write it elsewhere")
    if out.exists() and not overwrite:
        raise UsageError(f"{out} exists; pass --overwrite to replace it")


def cmd_export(args: argparse.Namespace) -> int:
    from .reference.checkpoint import check_margin, check_tile_side, export_weights

    for value, check in ((args.margin, check_margin), (args.tile, check_tile_side)):
        if value is not None:
            try:
                check(value)
            except ValueError as error:  # before any folder is made
                raise UsageError(f"--{error}") from None
    out = Path(args.output)
    _check_export_output(Path(args.checkpoint), out, args.overwrite)
    if Path(args.checkpoint).exists():  # else the export says the checkpoint is missing, and no folder is left
        out.parent.mkdir(parents=True, exist_ok=True)

    sampling = None
    if (args.steps, args.time_power, args.y_mode) != (None, None, None):
        from .reference.sampler import PAPER_SAMPLING

        sampling = dict(PAPER_SAMPLING.to_dict(), **{k: v for k, v in (("steps", args.steps), ("time_power", args.time_power),
                                                                     ("y_mode", args.y_mode)) if v is not None})
    path = export_weights(args.checkpoint, args.output, use_ema=not args.raw, half=args.half, sampling=sampling,
                          margin=args.margin, tile=args.tile)
    print(f"wrote {path}")
    return 0


def cmd_training_photos(args: argparse.Namespace) -> int:
    from .training_photos import TrainingPhotoError, gather, list_sha256

    try:
        paths = gather(args.out)
    except TrainingPhotoError as error:
        raise ValueError(str(error)) from error  # main() prints it as a one-line error
    print(f"{len(paths)} photographs in {args.out} (list SHA-256 {list_sha256()})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Train the test-sized model for about ``--minutes`` on procedural images with Gaussian noise,
    then restore a held-out noisy image and report PSNRs: a smoke run on a fresh machine."""
    from PIL import Image

    from .imageio import save_image
    from .reference.checkpoint import load_model
    from .reference.data import build_dataset, from_model_range, validation_set
    from .restorer import restore
    from .reference.metrics import psnr
    from .reference.train import TrainConfig, train

    out = Path(args.out)
    # A run folder of its own: a second demo into the same OUT must not meet the first one's checkpoints.
    run_dir = out / "run"
    while run_dir.exists():
        run_dir = out / f"run-{int(run_dir.name.partition('-')[2] or 1) + 1}"
    config = TrainConfig(preset="test", data="procedural", degradation=f"noise:{args.sigma}", crop=32, batch_size=8,
                         steps=100000, lr=2e-3, warmup_steps=20, max_minutes=args.minutes, checkpoint_every=100000,
                         val_every=100000, val_images=2, seed=args.seed, out_dir=str(run_dir), device=args.device)
    device = _device(args.device)
    out.mkdir(parents=True, exist_ok=True)  # after the options are known good: a refused demo leaves nothing
    result = train(config, progress=not args.quiet)
    model, schedule, _ = load_model(result["checkpoint"])
    model.to(device)
    # A held-out image: a dataset seed no training sample used, and a larger size than the crops.
    held_out = build_dataset("procedural", f"noise:{args.sigma}", 256, seed=args.seed + 10_000)
    hq, lq = validation_set(held_out, 1, seed=args.seed + 10_000)
    t0 = time.perf_counter()
    restored = restore(from_model_range(lq[0]), model=model, schedule=schedule, steps=4, seed=args.seed, device=device)
    seconds = time.perf_counter() - t0
    for name, img in (("clean", from_model_range(hq[0])), ("noisy", from_model_range(lq[0])), ("restored", restored)):
        save_image(Image.fromarray(np.rint(img * 255.0).astype(np.uint8)), out / f"{name}.png")
    from .reference.data import to_model_range

    p_in, p_out = psnr(lq, hq), psnr(to_model_range(restored)[None], hq)
    print(f"trained {result['step']} steps; restored a held-out 256x256 image in {seconds:.2f} s: "
          f"PSNR {p_in:.2f} dB (noisy) -> {p_out:.2f} dB (restored); images in {out}/")
    return 0


# ----------------------------------------------------------------------------------------------
# the parser
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from .reference.schedule import SCHEDULES
    from .reference.unet import PRESETS
    from .restorer import DEFAULT_MARGIN, DEFAULT_OVERLAP, DEFAULT_TILE

    parser = argparse.ArgumentParser(prog="resflow", description="ResFlow image restoration")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (torchrun for several processes)")
    t.add_argument("--preset", choices=list(PRESETS),
                   help="U-Net size (default: test, the small preset for quick checks; the embedded models are default)")
    t.add_argument("--schedule", choices=list(SCHEDULES))
    t.add_argument("--beta", type=float)
    t.add_argument("--gamma", type=float)
    t.add_argument("--loss-weight-floor", dest="loss_weight_floor", type=float,
                   help="train with max(lambda(t), FLOOR) (0, the paper's weight, by default)")
    t.add_argument("--endpoint-fraction", dest="endpoint_fraction", type=float,
                   help="share of samples trained at t = 1, the only time a 1-step restore evaluates, instead "
                        "of t drawn from U(0, 1) (0, the paper's sampling, by default)")
    t.add_argument("--data", action="append",
                   help='"procedural", a folder of clean images, or a folder with lq/ and hq/; '
                        'repeat to interleave several sources')
    t.add_argument("--degradation", help='e.g. "noise:0-50", "jpeg:10-50", "rain", "haze", "snow", "mix"; "none" for paired data')
    t.add_argument("--crop", type=int)
    t.add_argument("--grey-fraction", dest="grey_fraction", type=float,
                   help="share of samples made grey (three equal channels) before degrading (default 0)")
    t.add_argument("--flat-fraction", dest="flat_fraction", type=float,
                   help="share of clean crops replaced by their mean colour before degrading, so flat "
                        "regions stay flat (default 0)")
    t.add_argument("--flat-grey-share", dest="flat_grey_share", type=float,
                   help="share of those flat crops given a grey level drawn uniformly from [0, 1] instead "
                        "of the mean colour, so mid-grey fields are seen in training too (default 0)")
    t.add_argument("--file-weighting", dest="file_weighting", choices=["uniform", "area"],
                   help="pick image-folder files uniformly (default) or by pixel count")
    t.add_argument("--batch-size", dest="batch_size", type=int)
    t.add_argument("--data-workers", dest="data_workers", type=int,
                   help="processes preparing batches ahead of the step (default 0: in the training loop)")
    t.add_argument("--steps", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--warmup-steps", dest="warmup_steps", type=int)
    t.add_argument("--ema-decay", dest="ema_decay", type=float)
    t.add_argument("--grad-clip", dest="grad_clip", type=float)
    t.add_argument("--dropout", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument("--out-dir", dest="out_dir")
    t.add_argument("--checkpoint-every", dest="checkpoint_every", type=int)
    t.add_argument("--keep-last", dest="keep_last", type=int)
    t.add_argument("--val-every", dest="val_every", type=int)
    t.add_argument("--val-images", dest="val_images", type=int)
    t.add_argument("--max-minutes", dest="max_minutes", type=float)
    t.add_argument("--device")
    t.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the training step: minutes to compile at the start, then faster steps "
                        "(needs a C++ compiler on a CPU; recorded, so a resume keeps it unless --no-compile)")
    t.add_argument("--no-amp", dest="amp", action="store_const", const=False,
                   help="train in fp32 throughout (default: bf16 autocast on a GPU, or a CPU with AMX or AVX-512 BF16)")
    t.add_argument("--amp", dest="amp", action="store_const", const=True,
                   help="bf16 autocast where the device has bf16 arithmetic (the default; undoes a recorded --no-amp)")
    t.add_argument("--resume", nargs="?", const=True, default=None,
                   help="continue the latest checkpoint in --out-dir, or the given checkpoint or run folder (the "
                        "run then goes on in the folder holding that checkpoint)")
    t.add_argument("--init-from", dest="init_from",
                   help="fine-tune: start a new run (step 0, fresh optimizer) from this weights file or checkpoint")
    t.add_argument("--options-from", dest="options_from", metavar="CHECKPOINT",
                   help="start a new run with the options recorded in this checkpoint or run folder (its "
                        "data, degradations, schedule, ...); options given here override them")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("restore", help="restore image files, folders or globs",
                       description="Restore images. Outputs keep each input's format, mode and bit depth; "
                                   "folders are mirrored under OUT; existing outputs are skipped. The outputs' "
                                   "folders are checked before any restoring.")
    r.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or (quoted) glob patterns")
    r.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output folder (created if needed), or a file name for a single input file")
    from .embedded_models import EMBEDDED_MODELS

    r.add_argument("--model", default="default",
                   help=f"embedded model ({', '.join(EMBEDDED_MODELS)}: docs/MODEL_CARD.md), weights file, "
                        "checkpoint folder or run folder (default: %(default)s)")
    r.add_argument("--steps", type=int, help="Euler steps (default: the model's recorded setting, else 4)")
    r.add_argument("--time-power", dest="time_power", type=float,
                   help="time grid t_k = (1 - k/N)^P (default: the model's recorded setting, else 1, uniform)")
    r.add_argument("--y-mode", dest="y_mode", choices=["joint", "exact"],
                   help="how y moves (default: the model's recorded setting, else joint)")
    r.add_argument("--paper-sampling", dest="paper_sampling", action="store_true",
                   help="the paper's sampler (4 uniform steps, joint y) instead of the model's recorded settings")
    r.add_argument("--seed", type=_seed_arg, default=0,
                   help="seed of the auxiliary noise; the same seed gives the same result (default 0)")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    r.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="activation precision (auto: bf16 on GPUs that have it, fp32 on the CPU)")
    r.add_argument("--fp32", dest="dtype", action="store_const", const="fp32", help="same as --dtype fp32")
    r.add_argument("--fused-conv", dest="fused_conv", choices=["off", "on", "auto"],
                   help="GPU only: run the ResBlock convs as fused Triton convs (default: $RESFLOW_FUSED_CONV, else off)")
    r.add_argument("--max-memory", dest="max_memory", metavar="SIZE",
                   help="memory budget such as 4GB or 512MB (default: half the free memory); "
                        "the restore tiles to stay inside it")
    r.add_argument("--tile", type=_tile_arg, default="auto",
                   help=f"largest tile side in pixels, 'auto' (tiles of at most the side the model's file records, else "
                        f"{DEFAULT_TILE} px; smaller if the memory budget says so) or 'off' (one piece: attention "
                        "over the whole image)")
    r.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP, help="pixels shared by neighbouring tiles")
    r.add_argument("--margin", type=int, default=None,
                   help="pixels of mirrored context restored around the image and cropped away, so that the "
                        f"network's edges fall outside the picture (0: none; default: what the model's file "
                        f"records, else {DEFAULT_MARGIN})")
    r.add_argument("--recursive", "-r", action="store_true", help="descend into sub-folders (and ** in globs)")
    r.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=cmd_restore)

    e = sub.add_parser("export", help="write an inference-only weights file from a training checkpoint")
    e.add_argument("checkpoint")
    e.add_argument("output")
    e.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA")
    e.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    e.add_argument("--half", action="store_true", help="store the weights as fp16 (half the file size)")
    e.add_argument("--steps", type=int, help="record the Euler steps the model restores with by default")
    e.add_argument("--time-power", dest="time_power", type=float,
                   help="record the default time grid t_k = (1 - k/N)^P (1: the paper's uniform grid)")
    e.add_argument("--y-mode", dest="y_mode", choices=["joint", "exact"], help="record the default y update")
    e.add_argument("--margin", type=int, help="record the mirrored context (pixels) restore() adds around an image "
                                              "for this model (0: none; unrecorded: the restorer's default)")
    e.add_argument("--tile", type=int, help="record the largest tile side (pixels) restore() cuts an image into "
                                            "for this model when the tiling is left to it (unrecorded: the "
                                            "restorer's default)")
    e.set_defaults(func=cmd_export)

    d = sub.add_parser("demo", help="train a tiny denoiser for about a minute and restore a held-out image")
    d.add_argument("--out", default="demo-output")
    d.add_argument("--minutes", type=float, default=1.0)
    d.add_argument("--sigma", type=float, default=25.0, help="noise sigma in /255 units")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="auto")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)

    p = sub.add_parser("training-photos", help="gather the photographs the embedded `default` model trains on "
                       "(Debian wallpaper packages, scikit-image, scikit-learn), each checked by SHA-256")
    p.add_argument("out", metavar="OUT", help="folder to copy them into (created; files already right are kept)")
    p.set_defaults(func=cmd_training_photos)

    # `resflow bench ...` hands all its arguments to the benchmark's own parser (see main()).
    sub.add_parser("bench", help="the side-by-side benchmark table (GPU); `resflow bench --help` for its options",
                   add_help=False)
    from .evaluation import command as eval_command

    v = sub.add_parser("eval", help="measure the embedded models against classical restorers on held-out "
                       "photographs (EVAL.md, eval.json, a figure)", description=eval_command.DESCRIPTION)
    eval_command.add_arguments(v)
    v.set_defaults(func=eval_command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from .benchmarks.bench import main as bench_main

        return bench_main(argv[1:], prog="resflow bench")
    if argv[:1] == ["eval"]:
        args = build_parser().parse_args(argv)
        run = lambda: args.func(args, " ".join(["resflow", *argv]))  # noqa: E731  (the report records it)
    else:
        args = build_parser().parse_args(argv)
        run = lambda: args.func(args)  # noqa: E731
    try:
        return run()
    except (ValueError, OSError) as e:  # user-facing errors (CheckpointError, DataError are ValueErrors)
        if os.environ.get("RESFLOW_DEBUG"):
            raise
        print(f"resflow: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("resflow: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
