"""The ``resflow`` command: ``train``, ``restore``, ``export`` and ``demo``.

Errors a user can act on (a bad path, a corrupt checkpoint, an unknown preset...) are printed as
one line naming the problem, with exit status 2 and no traceback; ``RESFLOW_DEBUG=1`` shows it.
"""
from __future__ import annotations

import argparse
import io
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
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def _save_image_atomic(path: Path, img01: np.ndarray) -> None:
    """Encode an HWC [0, 1] image with Pillow by the file's extension, then write it atomically."""
    from PIL import Image

    from .reference.checkpoint import atomic_write_bytes

    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise UsageError(f"{path}: unknown image extension {path.suffix!r} (use .png, .jpg, .tif, ...)")
    arr = np.clip(np.rint(img01 * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(buf, format=fmt)
    atomic_write_bytes(path, buf.getvalue())


def _restore_array(model, schedule, img01: np.ndarray, steps: int, seed: int, device: torch.device) -> np.ndarray:
    """Restore one HWC [0, 1] image with the reference sampler."""
    from .reference.data import from_model_range, to_model_range
    from .reference.sampler import euler_sample

    lq = to_model_range(img01)[None].to(device)
    restored = euler_sample(model, lq, steps=steps, seed=seed, schedule=schedule)
    return from_model_range(restored[0].cpu())


# ----------------------------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from .reference.train import TrainConfig, train

    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    if args.degradation == "none":
        overrides["degradation"] = None
    config = TrainConfig(**overrides)
    from .training import trainer_hooks

    device = _device(config.device) if config.device == "auto" else torch.device(config.device)
    result = train(config, resume=args.resume if args.resume is not None else False, progress=not args.quiet,
                   **trainer_hooks(device))
    if int(os.environ.get("RANK", 0)) == 0:
        v = result["validation"]
        msg = f"trained to step {result['step']}; checkpoint {result['checkpoint']}"
        if v:
            msg += f"; validation PSNR {v['psnr_restored']:.2f} dB (degraded input {v['psnr_input']:.2f} dB)"
        print(msg)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from .reference.checkpoint import load_model
    from .reference.data import load_image

    if args.model is None:
        raise UsageError("--model is required until the embedded default model ships: give a weights file "
                         "or a training run folder (see `resflow train` or `resflow demo`)")
    inputs = [Path(p) for p in args.inputs]
    out = Path(args.output)
    if len(inputs) > 1 and not out.is_dir():
        raise UsageError(f"-o {out}: several inputs need an existing output folder")
    device = _device(args.device)
    model, schedule, _ = load_model(args.model)
    model.to(device)
    failed = 0
    for src in inputs:
        dst = out / f"{src.stem}.png" if out.is_dir() else out
        try:
            img = load_image(src)
            _save_image_atomic(dst, _restore_array(model, schedule, img, args.steps, args.seed, device))
            print(f"{src} -> {dst}")
        except ValueError as e:  # one bad file is reported and the rest proceed
            print(f"resflow: error: {e}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def cmd_export(args: argparse.Namespace) -> int:
    from .reference.checkpoint import export_weights

    path = export_weights(args.checkpoint, args.output, use_ema=not args.raw)
    print(f"wrote {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Train the test-sized model for about ``--minutes`` on procedural images with Gaussian noise,
    then restore a held-out noisy image and report PSNRs: a smoke run on a fresh machine."""
    from .reference.checkpoint import load_model
    from .reference.data import build_dataset, from_model_range, validation_set
    from .reference.metrics import psnr
    from .reference.train import TrainConfig, train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(preset="test", data="procedural", degradation=f"noise:{args.sigma}", crop=32, batch_size=8,
                         steps=100000, lr=2e-3, warmup_steps=20, max_minutes=args.minutes, checkpoint_every=100000,
                         val_every=100000, val_images=2, seed=args.seed, out_dir=str(out / "run"), device=args.device)
    result = train(config, progress=not args.quiet)
    model, schedule, _ = load_model(result["checkpoint"])
    device = _device(args.device)
    model.to(device)
    # A held-out image: a dataset seed no training sample used, and a larger size than the crops.
    held_out = build_dataset("procedural", f"noise:{args.sigma}", 256, seed=args.seed + 10_000)
    hq, lq = validation_set(held_out, 1, seed=args.seed + 10_000)
    t0 = time.perf_counter()
    restored = _restore_array(model, schedule, from_model_range(lq[0]), steps=4, seed=args.seed, device=device)
    seconds = time.perf_counter() - t0
    for name, img in (("clean", from_model_range(hq[0])), ("noisy", from_model_range(lq[0])), ("restored", restored)):
        _save_image_atomic(out / f"{name}.png", img)
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

    parser = argparse.ArgumentParser(prog="resflow", description="ResFlow image restoration")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (torchrun for several processes)")
    t.add_argument("--preset", choices=list(PRESETS))
    t.add_argument("--schedule", choices=list(SCHEDULES))
    t.add_argument("--beta", type=float)
    t.add_argument("--gamma", type=float)
    t.add_argument("--data", help='"procedural", a folder of clean images, or a folder with lq/ and hq/')
    t.add_argument("--degradation", help='e.g. "noise:0-50", "jpeg:10-50", "rain", "haze", "snow", "mix"; "none" for paired data')
    t.add_argument("--crop", type=int)
    t.add_argument("--batch-size", dest="batch_size", type=int)
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
    t.add_argument("--num-workers", dest="num_workers", type=int)
    t.add_argument("--device")
    t.add_argument("--no-amp", dest="amp", action="store_const", const=False)
    t.add_argument("--resume", nargs="?", const=True, default=None,
                   help="continue the latest checkpoint in --out-dir, or the given checkpoint folder")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("restore", help="restore images with a trained model")
    r.add_argument("inputs", nargs="+")
    r.add_argument("-o", "--output", required=True, help="output file, or an existing folder for several inputs")
    r.add_argument("--model", help="weights file, checkpoint folder or run folder")
    r.add_argument("--steps", type=int, default=4)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default="auto")
    r.set_defaults(func=cmd_restore)

    e = sub.add_parser("export", help="write an inference-only weights file from a training checkpoint")
    e.add_argument("checkpoint")
    e.add_argument("output")
    e.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA")
    e.set_defaults(func=cmd_export)

    d = sub.add_parser("demo", help="train a tiny denoiser for about a minute and restore a held-out image")
    d.add_argument("--out", default="demo-output")
    d.add_argument("--minutes", type=float, default=1.0)
    d.add_argument("--sigma", type=float, default=25.0, help="noise sigma in /255 units")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="auto")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
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
