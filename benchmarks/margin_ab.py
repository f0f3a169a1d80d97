"""``python -m resflow_fast.benchmarks.margin_ab``: what the restorer's mirrored margin does to quality.

For each margin asked for, every held-out crop of ``resflow eval`` (or the first ``--limit``) is
degraded as the evaluation degrades it and restored with ``Restorer(model, margin=m)``; the table
gives the mean PSNR over the whole crop and over its outer ``--frame`` pixels, where the margin
acts. Flat images (levels 0, 128, 200, 255) give the largest change in 8-bit levels. The numbers
in BENCHMARKS.md ("Mirrored context at the borders") come from this script.

    python -m resflow_fast.benchmarks.margin_ab --model default --margins 0,8,16,32
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import numpy as np

FLAT_LEVELS = (0, 128, 200, 255)


def _psnr(restored: np.ndarray, target: np.ndarray, frame: int = 0) -> float:
    """PSNR (dB, :func:`resflow_fast.reference.metrics.psnr`) of 8-bit images, over the whole image
    or, with ``frame``, over its outer ``frame`` pixels only."""
    import torch

    from resflow_fast.reference.metrics import psnr

    keep = np.ones(restored.shape[:2], bool)
    if frame:
        keep[frame:-frame, frame:-frame] = False
    # the kept pixels as one (1, N, 1) plane in the model range, which psnr() maps back to [0, 1]
    a, b = (torch.from_numpy(image[keep].astype(np.float64) / 255.0 * 2 - 1).reshape(1, -1, 1)
            for image in (restored, target))
    return psnr(a, b)


def measure(model, margins: Sequence[int], degradations: Sequence[str], images, frame: int = 16,
            seed: int = 0, steps: int | None = None) -> dict:
    """{degradation: {margin: (mean PSNR, mean PSNR of the frame)}} and {"flat": {margin: [levels]}}."""
    from resflow_fast import Restorer
    from resflow_fast.evaluation.degradations import DEGRADATIONS

    restorers = {m: Restorer(model, margin=m, steps=steps) for m in margins}
    table: dict = {}
    for key in degradations:
        spec = DEGRADATIONS[key]
        scores: dict = {m: ([], []) for m in margins}
        for image in images:
            degraded, target = spec.apply(image.clean, image.name), spec.target(image.clean)
            for m, restorer in restorers.items():
                restored = restorer.restore(degraded, seed=seed)
                scores[m][0].append(_psnr(restored, target))
                scores[m][1].append(_psnr(restored, target, frame))
        table[key] = {m: (float(np.mean(whole)), float(np.mean(border))) for m, (whole, border) in scores.items()}
    table["flat"] = {m: [int(np.abs(restorer.restore(np.full((64, 64, 3), level, np.uint8), seed=seed).astype(int)
                                    - level).max()) for level in FLAT_LEVELS]
                     for m, restorer in restorers.items()}
    return table


def render(table: dict, margins: Sequence[int], frame: int) -> str:
    head = "| degradation | " + " | ".join(f"margin {m}" for m in margins) + " |"
    lines = [head, "|---|" + "---|" * len(margins)]
    for key, row in table.items():
        if key == "flat":
            continue
        lines.append(f"| {key} | " + " | ".join(f"{row[m][0]:.2f} (frame {row[m][1]:.2f})" for m in margins) + " |")
    lines.append(f"| flat 64x64, largest change at levels {', '.join(map(str, FLAT_LEVELS))} | "
                 + " | ".join(", ".join(map(str, table["flat"][m])) for m in margins) + " |")
    return "\n".join(lines) + f"\n\nPSNR in dB over the whole crop, and over its outer {frame} pixels (frame).\n"


def _margins(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated pixel counts such as 0,16, got {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"margins must be non-negative, got {text!r}")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resflow_fast.benchmarks.margin_ab",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default", help="an embedded model name or a weights path")
    parser.add_argument("--margins", type=_margins, default=[0, 8, 16, 32])
    parser.add_argument("--degradations", default="clean,noise-25,jpeg-10,grey-noise-25")
    parser.add_argument("--limit", type=int, default=None, help="only the first N held-out crops")
    parser.add_argument("--frame", type=int, default=16)
    parser.add_argument("--steps", type=int, default=None, help="Euler steps (default: the model's recorded)")
    args = parser.parse_args(argv)

    from resflow_fast.evaluation.degradations import DEGRADATIONS
    from resflow_fast.evaluation.images import heldout_images

    unknown = [d for d in args.degradations.split(",") if d not in DEGRADATIONS]
    if unknown:
        parser.error(f"--degradations: unknown {', '.join(unknown)} (known: {', '.join(DEGRADATIONS)})")
    images = heldout_images()[:args.limit]
    table = measure(args.model, args.margins, args.degradations.split(","), images, args.frame, steps=args.steps)
    sys.stdout.write(render(table, args.margins, args.frame))
    return 0


if __name__ == "__main__":
    sys.exit(main())
