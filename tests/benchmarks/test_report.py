"""Tests of benchmarks/report.py: every table row has its header's cells, and BENCHMARKS.md keeps
one section per card, replacing only the card it is given."""
from resflow_fast.benchmarks import report as rep


def _data(card="NVIDIA H200"):
    return {
        "command": "python -m resflow_fast.benchmarks", "date": "2026-11-26", "elapsed_s": 400.0,
        "environment": {"card": card, "device": "cuda", "torch": "2.11.0", "triton": "3.6.0", "power_limit_w": 700.0},
        "ceilings": {"copy_gbs": 4210.0, "matmul_tflops": 790.0, "matmul": "bfloat16 8192^3"},
        "models": {"paper": {"params_m": 118.8}},
        "kernels": [{"op": "euler_step", "shape": "1x6x2048x2048 fp32", "bitwise_equal_to_twin": True, "rows": [
            {"variant": "resflow_fast", "median_ms": 0.1, "p90_ms": 0.11, "gbs": 4000.0, "pct_copy": 95.0,
             "speedup_vs_eager": 1.4}]}],
        "restore": [
            {"preset": "paper", "image": "1024x1024", "batch": 1, "variant": "fast", "label": "resflow_fast",
             "status": "ok", "median_ms": 90.0, "p90_ms": 91.0, "ratio_to_compile": 0.7, "joules_per_image": 40.0},
            {"preset": "paper", "image": "2048x2048", "batch": 8, "variant": "fp32", "label": "eager fp32 reference",
             "status": "skipped", "note": "one call would take ~44 s (> --max-call-s 10)"},
            {"preset": "paper", "image": "1024x1024", "batch": 1, "variant": "graph", "label": "a | b",
             "status": "error", "note": "RuntimeError: boom"}],
    }


def test_section_has_every_column_and_consistent_tables():
    md = rep.render_section(_data())
    assert md.startswith("## NVIDIA H200")
    for title, _ in rep.KERNEL_COLUMNS + rep.RESTORE_COLUMNS:
        assert f" {title} |" in md
    assert "| paper (118.8M) | 1024x1024 | 1 | resflow_fast | 90 | 91 |" in md
    assert "0.70x torch.compile's time" in md and "skipped; one call would take" in md and "error; RuntimeError: boom" in md
    assert "bitwise equal to twin: yes" in md
    for block in md.split("\n\n"):
        rows = [line for line in block.splitlines() if line.startswith("|")]
        if rows:
            assert len({row.count("|") for row in rows}) == 1, block  # pipes in values are escaped


def test_benchmarks_md_keeps_one_section_per_card():
    text = "# Benchmarks\n\nProse that stays.\n"
    text = rep.update_benchmarks_md(text, "NVIDIA H100 80GB HBM3", "## NVIDIA H100 80GB HBM3\n\nold H100 table")
    text = rep.update_benchmarks_md(text, "NVIDIA H200", "## NVIDIA H200\n\nold H200 table")
    text = rep.update_benchmarks_md(text, "NVIDIA H100 80GB HBM3", "## NVIDIA H100 80GB HBM3\n\nnew H100 table")
    assert text.startswith("# Benchmarks\n\nProse that stays.\n")
    assert "old H100" not in text and text.count("new H100 table") == 1
    assert text.count("old H200 table") == 1 and text.count("## NVIDIA H200") == 1
    assert text.index("new H100 table") < text.index("old H200 table")  # replaced in place


def test_write_benchmarks_md(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    rep.write_benchmarks_md(path, _data("card A"))
    rep.write_benchmarks_md(path, _data("card B"))
    rep.write_benchmarks_md(path, _data("card A"))
    text = path.read_text()
    assert text.count("## card A") == 1 and text.count("## card B") == 1
