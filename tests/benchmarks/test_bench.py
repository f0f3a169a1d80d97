"""The benchmark harness end to end on the CPU (tiny preset, the fast path replaced by the
reference, so that it cannot rot): it writes the JSON and the Markdown with every column, keeps
BENCHMARKS.md per card, reports what the budget skipped, refuses the interpreter and a missing GPU,
and its dry run shows the plan. The plan itself, driven with fake rows on a fake clock and killed
midway, is tested in test_device_call.py."""
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
        # reps: at least one; how many fit the timing window depends on the machine's speed
        assert 0 < row["median_ms"] <= row["p90_ms"] and row["reps"] >= 1 and row["first_call_s"] > 0
        assert row["images_per_s"] > 0 and row["tflops"] > 0 and row["pct_matmul"] > 0
        assert row["joules_per_image"] is None  # no NVML on the CPU: missing, never zero
    # fp32 is the reference: it is not compared with itself
    assert rows["fp32"]["psnr_vs_ref"] is None and rows["fp32"]["max_abs_err_vs_ref"] is None
    # on the CPU the fast path runs the reference sampler: the same output to the bit
    assert rows["fast"]["max_abs_err_vs_ref"] == 0.0
    assert 20 < rows["bf16"]["psnr_vs_ref"] < 100 and 0 < rows["bf16"]["max_abs_err_vs_ref"] < 1
    assert rows["compile"]["status"] == "skipped" and "--compile none" in rows["compile"]["note"]
    assert rows["graph"]["status"] == "skipped" and "CUDA" in rows["graph"]["note"]
    assert {k["op"] for k in data["kernels"]} == {"group_norm_modulate_silu", "euler_step"}
    assert all(r["gbs"] > 0 for k in data["kernels"] for r in k["rows"])
    md = (out / "results.md").read_text()
    for title, _ in report.KERNEL_COLUMNS + report.RESTORE_COLUMNS:
        assert f" {title} |" in md
    assert "| test (1.6M) | 32x32 | 1 | eager fp32 reference |" in md
    assert data["command"].startswith("python -m resflow_fast.benchmarks --device cpu")
    assert all(r["phase"] == "matrix" and "estimate_s" in r for r in data["restore"])  # no acceptance model here
    assert all("wall_s" in r for r in data["restore"] if r["status"] == "ok")
    assert "running" not in data and data["elapsed_s"] > 0
    euler = next(k for k in data["kernels"] if k["op"] == "euler_step")
    assert [r["variant"] for r in euler["rows"]] == ["eager (twin), NCHW fp32", "resflow_fast, NCHW fp32",
                                                     "eager (twin), sampler's call", "resflow_fast, sampler's call"]


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
    assert "| skipped | est 0 s | budget spent" in capsys.readouterr().out  # the progress line of each row
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
    # the acceptance rows first: the kernels, then bench19m and paper at 1024^2, batch 1
    assert [line.split("  ")[-1] for line in lines[2:6]] == [
        "kernel group_norm_modulate_silu 1x128x512x512", "kernel group_norm_modulate_silu 1x64x2048x2048",
        "kernel group_norm_modulate_silu 4x256x256x256", "kernel euler_step 1x6x2048x2048"]
    assert lines[6].endswith("bench19m 1024x1024 b1 torch.compile default, bf16 channels-last")
    assert lines[7].endswith("bench19m 1024x1024 b1 resflow_fast")
    assert lines[13].endswith("paper 1024x1024 b1 resflow_fast + fused conv (auto) + CUDA graph")
    assert "default 3840x2160 b8" in text and "skipped" in text
    started = [float(line.split()[0]) for line in lines[2:-1] if line.split()[0] != "-"]
    assert started == sorted(started)
    assert float(lines[-1].split()[-2]) <= 440  # "estimated end: N s"


def test_dry_run_of_the_quick_call(capsys):
    """--acceptance-only: the kernels and the eight acceptance rows, nothing else, not the conv table."""
    assert bench.main(["--dry-run", "--acceptance-only", "--conv-layers", "--budget-s", "10000"]) == 0
    lines = capsys.readouterr().out.splitlines()[2:-1]
    assert len(lines) == 4 + 8 and not any("skipped" in line or line.split("  ")[-1].startswith("conv ")
                                           for line in lines)
    assert all(" 1024x1024 b1 " in line for line in lines[4:])


def test_end_by_is_a_deadline_from_the_wall_clock():
    args = bench.parse_args(["--end-by", "1000", "--budget-s", "440"])
    budget = bench.make_budget(args, now=lambda: 0.0, wall=lambda: 900.0)
    assert budget.seconds == 100.0 and "before --end-by" in budget.label
    budget = bench.make_budget(args, now=lambda: 0.0, wall=lambda: 100.0)
    assert budget.seconds == 440.0 and budget.label == "--budget-s 440"  # the budget comes first


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
