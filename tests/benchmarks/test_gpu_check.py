"""Tests of benchmarks/gpu_check.py that need no GPU: it refuses to time where it must not, and
its report renders every kind of row (so a GPU run's output is readable)."""
import pytest
import torch

from resflow_fast.benchmarks import gpu_check


def test_refuses_the_interpreter(monkeypatch, tmp_path):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(SystemExit, match="refusing to time under TRITON_INTERPRET=1"):
        gpu_check.main(["--out", str(tmp_path)])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_refuses_without_a_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        gpu_check.main(["--out", str(tmp_path)])


def test_summary_statistics():
    s = gpu_check.summarize([5.0, 1.0, 3.0, 2.0, 4.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    assert s["median_ms"] == 5.5 and s["p90_ms"] == 9.0 and s["reps"] == 10


def test_report_renders_and_is_written_as_it_goes(tmp_path):
    report = gpu_check.Report(tmp_path, ["--quick"])
    report.put("environment", {"card": "NVIDIA H200", "torch": "2.11.0", "triton": "3.6.0"})
    report.put("ceilings", {"copy_gbs": 4210.0, "matmul_tflops": 790.0})
    report.put("kernel:gn", {"op": "group_norm_modulate_silu", "shape": "1x128x512x512", "rows": [
        {"variant": "eager", "median_ms": 1.4, "p90_ms": 1.5, "gbs": 96.0, "pct_copy": 2.3, "speedup_vs_eager": 1.0}]})
    report.put("restore:paper:1024", {"preset": "paper", "image": "1024x1024", "rows": [
        {"variant": "resflow_fast", "median_ms": 100.0, "p90_ms": 101.0, "psnr_vs_ref": 50.0},
        {"variant": "torch.compile", "error": "RuntimeError: boom"}]})
    md = (tmp_path / "results.md").read_text()
    assert "NVIDIA H200" in md and "| group_norm_modulate_silu | 1x128x512x512 | eager | 1.4 |" in md
    assert "| paper | 1024x1024 | resflow_fast | 100 | 101 |" in md and "RuntimeError: boom" in md
    assert (tmp_path / "results.json").read_text().count("restore:paper:1024") == 1
    # every table row has as many cells as its header
    for block in md.split("\n\n"):
        rows = [line for line in block.splitlines() if line.startswith("|")]
        if rows:
            assert len({row.count("|") for row in rows}) == 1, block
