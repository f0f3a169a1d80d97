"""The benchmark harness end to end on the CPU (issue 3: "tiny preset, fast path replaced by the
reference, so that it cannot rot"): it writes the JSON and the Markdown with every column, keeps
BENCHMARKS.md per card, reports what the budget skipped, refuses the interpreter and a missing GPU,
and its dry run shows the plan."""
import json

import pytest
import torch

from resflow_fast.benchmarks import bench, report

SMOKE = ["--device", "cpu", "--presets", "test", "--sizes", "32", "--batch", "1"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One smoke run shared by the tests below (it takes a few seconds): kernels and the restore
    of the test preset at 32x32, all variants, into a BENCHMARKS.md that already holds another
    card's section."""
    out = tmp_path_factory.mktemp("bench")
    benchmarks_md = out / "BENCHMARKS.md"
    benchmarks_md.write_text(report.update_benchmarks_md("# Benchmarks\n\nProse.\n", "NVIDIA H200", "## NVIDIA H200\n\nkept"))
    with pytest.MonkeyPatch.context() as mp:
        # tests/conftest.py turns the interpreter on for the kernel tests; the harness refuses to
        # time it, and without it the kernels run their twins on the CPU, as a CPU user's would
        mp.delenv("TRITON_INTERPRET", raising=False)
        status = bench.main(SMOKE + ["--out", str(out), "--write-benchmarks-md", str(benchmarks_md)])
    return status, out, json.loads((out / "results.json").read_text())


def test_smoke_run_writes_every_row_and_column(smoke):
    status, out, data = smoke
    assert status == 0
    assert data["environment"]["device"] == "cpu" and data["ceilings"]["copy_gbs"] > 0
    rows = {r["variant"]: r for r in data["restore"]}
    assert list(rows) == ["fp32", "bf16", "compile", "fast", "graph"]
    for variant in ("fp32", "bf16", "fast"):
        row = rows[variant]
        assert row["status"] == "ok", row
        assert 0 < row["median_ms"] <= row["p90_ms"] and row["reps"] >= 3 and row["first_call_s"] > 0
        assert row["images_per_s"] > 0 and row["tflops"] > 0 and row["pct_matmul"] > 0
        assert row["joules_per_image"] is None  # no NVML on the CPU: missing, never zero
    assert rows["fp32"]["psnr_vs_ref"] is None or rows["fp32"]["psnr_vs_ref"] > 100  # identical to itself
    assert rows["fast"]["psnr_vs_ref"] is None or rows["fast"]["psnr_vs_ref"] > 100  # the reference on the CPU
    assert 20 < rows["bf16"]["psnr_vs_ref"] < 100
    assert rows["compile"]["status"] == "skipped" and "--compile none" in rows["compile"]["note"]
    assert rows["graph"]["status"] == "skipped" and "CUDA" in rows["graph"]["note"]
    assert {k["op"] for k in data["kernels"]} == {"group_norm_modulate_silu", "euler_step"}
    assert all(r["gbs"] > 0 for k in data["kernels"] for r in k["rows"])
    md = (out / "results.md").read_text()
    for title, _ in report.KERNEL_COLUMNS + report.RESTORE_COLUMNS:
        assert f" {title} |" in md
    assert "| test (1.6M) | 32x32 | 1 | eager fp32 reference |" in md
    assert data["command"].startswith("python -m resflow_fast.benchmarks --device cpu")


def test_smoke_run_updates_only_its_cards_section(smoke):
    _, out, data = smoke
    text = (out / "BENCHMARKS.md").read_text()
    assert text.startswith("# Benchmarks\n\nProse.\n") and "## NVIDIA H200\n\nkept" in text
    assert text.count(f"## {data['environment']['card']}") == 1


def test_budget_skips_are_reported(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert bench.main(SMOKE + ["--out", str(tmp_path), "--budget-s", "0"]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["kernels"][0]["error"].startswith("skipped: budget spent")
    assert [r["status"] for r in data["restore"]] == ["skipped"] * 5
    assert all("budget" in r["note"] or "compile" in r["note"] for r in data["restore"])
    assert "| skipped | budget spent" in capsys.readouterr().out  # the progress line of each row
    assert "skipped; budget spent" in (tmp_path / "results.md").read_text()


def test_refuses_the_interpreter(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert bench.main(SMOKE + ["--out", str(tmp_path)]) == 2
    assert "refusing to time under TRITON_INTERPRET=1" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_a_gpu_says_how_to_smoke(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert bench.main(["--out", str(tmp_path)]) == 2
    assert "--device cpu" in capsys.readouterr().err


def test_dry_run_shows_the_plan_within_the_budget(capsys):
    assert bench.main(["--dry-run", "--budget-s", "440"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[2].endswith("kernels")  # issue 4's rows first: the kernels, then 1024^2 batch 1
    assert lines[3].endswith("bench19m 1024x1024 b1 eager fp32 reference")
    assert "default 3840x2160 b8" in text and "skipped" in text
    assert float(lines[-1].split()[-2]) <= 440  # "estimated end: N s"


def test_bad_arguments_are_one_line(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--only", "nonsense"])
    assert "--only: unknown ['nonsense']" in capsys.readouterr().err


def test_compiled_rows_on_the_cpu(tmp_path, monkeypatch):
    """The torch.compile rows, with dynamo's eager backend (inductor's C++ build would take
    minutes here): the compiled model restores, and the fast row is compared with it."""
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None, dynamic=None: compile_(fn, backend="eager", dynamic=dynamic))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    argv = SMOKE + ["--out", str(tmp_path), "--compile", "all", "--only", "kernels,compile,fast", "--min-reps", "1"]
    assert bench.main(argv) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    rows = {r["variant"]: r for r in data["restore"]}
    assert list(rows) == ["compile", "fast"] and rows["compile"]["status"] == "ok", rows
    assert rows["fast"]["ratio_to_compile"] == pytest.approx(rows["fast"]["median_ms"] / rows["compile"]["median_ms"])
    norm = data["kernels"][0]
    assert [r["variant"] for r in norm["rows"]] == ["eager (twin)", "torch.compile (twin)", "resflow_fast"]
    assert norm["speedup_vs_compile"] > 0
