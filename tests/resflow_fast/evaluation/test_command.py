"""Tests of resflow_fast/evaluation/command.py (`resflow eval`): the options are a subcommand of
the one `resflow` parser, the three files are written as a set, bad requests are one-line errors
that write nothing, and the output folder is named, never guessed."""
import subprocess
import sys

import pytest

from resflow_fast.cli import build_parser
from resflow_fast.cli import main as cli_main
from resflow_fast.evaluation import command
from resflow_fast.evaluation.images import EvalError


def test_eval_command_writes_all_three_files(tiny_model, tmp_path, capsys):
    args = ["eval", "--images", "skimage", "--limit", "1", "--degradations", "noise-15", "--steps", "1",
            "--no-baselines", "--no-ablations", "--model", f"noise={tiny_model}", "--out-dir", str(tmp_path), "--quiet"]
    assert cli_main(args) == 0
    # the figure shows the model at its shipped settings, a row that runs whatever --steps says
    assert sorted(p.name for p in tmp_path.iterdir()) == ["EVAL.md", "eval-figure.png", "eval.json"]
    md = (tmp_path / "EVAL.md").read_text()
    assert "astronaut" in md and "`resflow eval --images skimage --limit 1 --degradations noise-15" in md
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--degradations", "noise-30"], "unknown 'noise-30'"),
    (["--model", "deblur=x"], "TASK=MODEL"),
    (["--steps", "4,0"], "positive integers"),
    (["--steps", "four"], "comma-separated integers"),
    (["--images", "div2k"], "unknown image set 'div2k'"),
    (["--images", "skimage,div2k"], "unknown image set 'div2k'"),
    (["--steps", "4,4"], "given twice"),
    (["--degradations", "noise-15,noise-15"], "named twice"),
    (["--limit", "0"], "positive number of images"),
    (["--model", "noise=/no/such/model.safetensors"], "checkpoint not found"),
    (["--dtype", "fp8"], "'fp8' is not one of"),
    (["--device", "gpu"], "unknown device 'gpu'"),
])
def test_bad_requests_are_one_line_and_write_nothing(tmp_path, capsys, extra, message):
    args = ["eval", "--images", "skimage", "--degradations", "noise-15", "--steps", "1", "--no-baselines",
            "--no-ablations", "--out-dir", str(tmp_path / "out"), "--quiet"]
    assert cli_main(args + extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir())  # checked for writing, perhaps, but nothing written
    if "--model" in extra or "--dtype" in extra or "--device" in extra:
        assert not out.exists()  # refused before the images are fetched or the folder is made


def test_the_output_folder_must_be_named(capsys):
    """An installed package has no docs/ to write into, so the folder is never guessed."""
    with pytest.raises(SystemExit) as exit_:
        cli_main(["eval", "--images", "skimage", "--limit", "1", "--quiet"])
    assert exit_.value.code == 2
    assert "--out-dir" in capsys.readouterr().err


def test_an_unwritable_out_dir_fails_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli_main(["eval", "--images", "skimage", "--out-dir", str(blocker / "sub"), "--no-baselines",
                     "--no-ablations", "--quiet"]) == 2
    assert "cannot write there" in capsys.readouterr().err


def test_eval_is_a_subcommand_of_the_one_parser_and_its_help_lists_every_option(capsys):
    args = build_parser().parse_args(["eval", "--out-dir", "x", "--steps", "4", "--model", "noise=a",
                                      "--model", "jpeg=b", "--no-baselines"])
    assert args.func is command.run
    assert (args.out_dir, args.steps, args.model, args.no_baselines, args.no_ablations) == (
        "x", "4", ["noise=a", "jpeg=b"], True, False)
    with pytest.raises(SystemExit) as exit_:
        cli_main(["eval", "--help"])
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    assert help_text.startswith("usage: resflow eval")
    for option in ("--out-dir", "--images", "--kodak", "--degradations", "--steps", "--model", "--no-baselines",
                   "--no-ablations", "--limit", "--device", "--dtype", "--quiet"):
        assert option in help_text
    # how the repository's copy is regenerated (argparse wraps lines, so words are compared)
    assert "`resflow eval --out-dir docs`" in " ".join(help_text.split())


def test_main_from_python_parses_with_the_same_parser_and_raises():
    with pytest.raises(EvalError, match="unknown 'noise-30'"):
        command.main(["--out-dir", "unused", "--degradations", "noise-30"])


def test_the_resflow_command_does_not_import_the_benchmarks_at_start_up():
    code = ("import sys, resflow_fast.cli as cli; cli.build_parser(); "
            "print(sorted(m for m in sys.modules if m.startswith('resflow_fast.benchmarks')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
