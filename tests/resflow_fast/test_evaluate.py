"""Tests of resflow_fast/evaluate.py: the public names of `resflow eval` stay importable from it,
as the very objects the evaluation package defines (the behaviour is tested in tests/resflow_fast/evaluation/)."""
from resflow_fast import evaluate
from resflow_fast.evaluation import command, degradations, images, report, rows


def test_every_public_name_is_the_evaluation_packages_own():
    homes = (command, degradations, images, report, rows)
    for name in evaluate.__all__:
        value = getattr(evaluate, name)
        assert any(getattr(home, name, None) is value for home in homes), name


def test_the_names_users_and_docs_import_are_there():
    for name in ("heldout_images", "EvalImage", "EvalDegradation", "DEGRADATIONS", "evaluate", "render_markdown",
                 "main", "SKIMAGE_CROPS"):
        assert name in evaluate.__all__
