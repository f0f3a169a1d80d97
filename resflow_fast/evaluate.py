"""The public names of ``resflow eval``, kept importable from ``resflow_fast.evaluate``.

The evaluation lives in :mod:`resflow_fast.evaluation`, one module per job; this module only
re-exports its public names, so ``from resflow_fast.evaluate import heldout_images`` keeps working.
"""
from .evaluation.command import main
from .evaluation.degradations import DEGRADATIONS, EvalDegradation
from .evaluation.images import (CROP, KODAK_FILES, KODAK_MEMBER, PYIQA_WHEEL, PYIQA_WHEEL_SHA256, SKIMAGE_CROPS,
                                EvalError, EvalImage, heldout_images, kodak_dir)
from .evaluation.report import goals, render_figure, render_json, render_markdown, summarise
from .evaluation.rows import (ABLATION_DIR, ABLATIONS, DEFAULT_MODEL_ROW, STEPS, EvalResult, Row, build_rows,
                              default_task_models, describe_device, evaluate)

__all__ = [
    "ABLATIONS", "ABLATION_DIR", "CROP", "DEFAULT_MODEL_ROW", "DEGRADATIONS", "EvalDegradation", "EvalError",
    "EvalImage", "EvalResult", "KODAK_FILES", "KODAK_MEMBER", "PYIQA_WHEEL", "PYIQA_WHEEL_SHA256", "Row",
    "SKIMAGE_CROPS", "STEPS", "build_rows", "default_task_models", "describe_device", "evaluate", "goals",
    "heldout_images", "kodak_dir", "main", "render_figure", "render_json", "render_markdown", "summarise",
]
