"""``resflow eval``: its options and its run, from the arguments to the three files written.

The options are registered on the ``resflow`` command's own parser (:func:`add_arguments`, called
by :func:`resflow_fast.cli.build_parser`), so the whole command has one parser. Every argument is
checked, and the output folder proved writable, before minutes of computing; the files are written
only when everything has been computed, and then as one set: each is staged beside its old
version before any old version is replaced.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from ..baselines import BASELINES
from ..reference.system import atomic_write_files
from .degradations import DEGRADATIONS
from .images import IMAGE_SETS, EvalError, heldout_images
from .report import REGENERATE_COMMAND, figure_rows, goals, render_figure, render_json, render_markdown, summarise
from .rows import ABLATION_DIR, ABLATIONS, STEPS, default_task_models, evaluate

__all__ = ["DESCRIPTION", "add_arguments", "main", "run"]

DESCRIPTION = ("Measure the embedded models against classical restorers on held-out photographs and write "
               "EVAL.md, eval.json and eval-figure.png into --out-dir (36-53 min with 2 threads on a 2-core "
               f"CPU). From the repository root, `{REGENERATE_COMMAND}` regenerates the repository's copy.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``resflow eval``, added to ``p``."""
    p.add_argument("--out-dir", required=True,
                   help="folder for EVAL.md, eval.json and eval-figure.png (created if needed; files of those names "
                        "there are replaced). Required: an installed package has no docs/ folder to write into, and a "
                        "long run should not leave files wherever it happened to be started. "
                        f"`{REGENERATE_COMMAND}` from the repository root regenerates the repository's copy")
    p.add_argument("--images", default=",".join(IMAGE_SETS),
                   help=f"image sets, comma-separated: {', '.join(IMAGE_SETS)} (default all: 26 photographs)")
    p.add_argument("--kodak", help="a folder with the five Kodak files, or the pyiqa 0.1.16 wheel (default: fetched once "
                   "with pip download into ~/.cache/resflow_fast)")
    p.add_argument("--degradations", default=",".join(DEGRADATIONS),
                   help=f"comma-separated subset of {', '.join(DEGRADATIONS)}")
    p.add_argument("--steps", default=",".join(map(str, STEPS)),
                   help=f"ResFlow step counts on the paper's grid (default {','.join(map(str, STEPS))})")
    p.add_argument("--model", action="append", default=[], metavar="TASK=MODEL",
                   help="use another model for a task (noise, jpeg, rain, haze, snow, clean): a name or a weights path")
    p.add_argument("--no-baselines", action="store_true", help="leave out the classical rows")
    p.add_argument("--no-ablations", action="store_true", help="leave out the ablation rows")
    p.add_argument("--limit", type=int, help="evaluate only the first N images (a quick look; not for EVAL.md)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPUs, fp32 on the CPU), fp32, bf16, fp16")
    p.add_argument("--quiet", action="store_true")


def _positive_ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise EvalError(f"--{what}: expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise EvalError(f"--{what}: expected positive integers, got {text!r}")
    if len(set(values)) != len(values):
        raise EvalError(f"--{what}: a value is given twice in {text!r}")
    return values


def _output_dir(out_dir: str) -> Path:
    """``--out-dir``, created and checked writable now, before minutes of computing."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-check-"):
            pass
    except OSError as e:
        raise EvalError(f"--out-dir {out}: cannot write there ({e.strerror or e})") from None
    return out


def _check_device_dtype_models(device: str, dtype: str, task_models: dict[str, str]) -> None:
    """The device, dtype and every model exist, before the images are fetched (a download on a
    fresh machine) or the output folder is made."""
    import torch

    from ..embedded_models import resolve_model
    from ..reference.system import pick_device
    from ..restorer import resolve_dtype

    try:
        resolve_dtype(dtype, pick_device(device))
    except ValueError as error:
        raise EvalError(f"--device {device} --dtype {dtype}: {error}") from None
    for task, model in task_models.items():
        try:  # loaded on the CPU by the rule restore() uses (cached: the rows reuse it)
            resolve_model(model, torch.device("cpu"))
        except ValueError as error:  # CheckpointError and ModelNotInstalledError are ValueErrors
            raise EvalError(f"--model {task}={model}: {error}") from None


def run(args: argparse.Namespace, command: str = "resflow eval") -> int:
    """Evaluate as ``args`` (parsed by :func:`add_arguments`' options) say and write the report.

    ``command`` is the command line recorded in EVAL.md and eval.json."""
    degradations = []
    for key in (k.strip() for k in args.degradations.split(",") if k.strip()):
        if key not in DEGRADATIONS:
            raise EvalError(f"--degradations: unknown {key!r}; choose from {', '.join(DEGRADATIONS)}")
        if DEGRADATIONS[key] in degradations:
            raise EvalError(f"--degradations: {key!r} is named twice")
        degradations.append(DEGRADATIONS[key])
    if not degradations:
        raise EvalError("--degradations: none given")
    steps = _positive_ints(args.steps, "steps")
    task_models = default_task_models()
    for item in args.model:
        task, sep, model = item.partition("=")
        if not sep or task not in task_models or not model:
            raise EvalError(f"--model: expected TASK=MODEL with TASK one of {', '.join(task_models)}, got {item!r}")
        task_models[task] = model
    sets = tuple(s.strip() for s in args.images.split(",") if s.strip())
    if args.limit is not None and args.limit < 1:
        raise EvalError(f"--limit: expected a positive number of images, got {args.limit}")
    _check_device_dtype_models(args.device, args.dtype, task_models)
    out = _output_dir(args.out_dir)  # the arguments are sound: check the output before minutes of work
    images = heldout_images(sets, args.kodak)
    if args.limit is not None:
        images = images[: args.limit]
    ablations = {} if args.no_ablations else {label: ABLATION_DIR / f for label, f in ABLATIONS.items()
                                               if (ABLATION_DIR / f).is_file()}
    if not args.no_ablations and len(ablations) < len(ABLATIONS):
        print(f"resflow eval: ablation models missing from {ABLATION_DIR}; their rows are left out", file=sys.stderr)
    baselines = () if args.no_baselines else tuple(b for b, spec in BASELINES.items() if spec.available())
    missing = [] if args.no_baselines else [f"{b} ({spec.package})" for b, spec in BASELINES.items() if not spec.available()]
    if missing:
        print("resflow eval: not installed, rows left out: " + ", ".join(missing) + '; pip install -e ".[eval]"',
              file=sys.stderr)

    result = evaluate(images, degradations, task_models, steps=steps, baselines=baselines, ablations=ablations,
                      device=args.device, dtype=args.dtype, progress=not args.quiet)
    # everything is computed; now write the files as one set: all staged before any is replaced
    files = {out / "EVAL.md": render_markdown(result, command).encode(),
             out / "eval.json": render_json(result, command).encode()}
    if figure_rows(result):
        files[out / "eval-figure.png"] = render_figure(result)
    atomic_write_files(files)
    for goal, measured, met in goals(summarise(result), result.rows):
        print(f"{goal}: " + ("not run" if met is None else f"{measured} ({'met' if met else 'NOT met'})"))
    print("wrote " + ", ".join(str(p) for p in files))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``resflow eval ARGS`` from Python (``argv``: the arguments after ``eval``; default
    ``sys.argv[1:]``), parsed by the ``resflow`` command's own parser. Errors are raised, not printed."""
    from ..cli import build_parser

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(["eval", *argv])
    return run(args, " ".join(["resflow eval", *argv]))
