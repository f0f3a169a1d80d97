"""Tests of benchmarks/conv_rows.py, the per-layer conv table, and of its place in the
harness (``--conv-layers``, ``--only conv``): the shapes are exactly the convs of a forward, the
CPU smoke run writes every row and the rendered table, a spent budget skips the remaining shapes
with a note, and nothing is timed under the interpreter. The CUDA rows themselves need a GPU."""
import json
import os

import pytest
import torch

from resflow_fast.benchmarks import bench, conv_rows, plan, report
from resflow_fast.benchmarks.measure import Clock

# Every 3x3 conv of one forward of the 'test' preset (reference/unet.py: base 32, channel_mult
# (1, 2, 2, 2), one ResBlock per level, no attention), counted by hand in forward order:
# (module, C_in, level = halvings of the padded input, C_out, stride, norm before it in FastUNet).
TEST_PRESET_CONVS = [
    ("input_conv", 6, 0, 32, 1, False),
    ("down.0.res.conv1", 32, 0, 32, 1, True), ("down.0.res.conv2", 32, 0, 32, 1, True),
    ("down.1.resample.conv", 32, 0, 32, 2, False),  # stride 2: reads level 0, writes level 1
    ("down.2.res.conv1", 32, 1, 64, 1, True), ("down.2.res.conv2", 64, 1, 64, 1, True),
    ("down.3.resample.conv", 64, 1, 64, 2, False),
    ("down.4.res.conv1", 64, 2, 64, 1, True), ("down.4.res.conv2", 64, 2, 64, 1, True),
    ("down.5.resample.conv", 64, 2, 64, 2, False),
    ("down.6.res.conv1", 64, 3, 64, 1, True), ("down.6.res.conv2", 64, 3, 64, 1, True),
    ("middle.0.res.conv1", 64, 3, 64, 1, True), ("middle.0.res.conv2", 64, 3, 64, 1, True),
    ("middle.1.res.conv1", 64, 3, 64, 1, True), ("middle.1.res.conv2", 64, 3, 64, 1, True),
    # decoder: each ResBlock eats a skip (skips, last first: 64 x5, then 32 x3)
    ("up.0.res.conv1", 128, 3, 64, 1, True), ("up.0.res.conv2", 64, 3, 64, 1, True),
    ("up.1.res.conv1", 128, 3, 64, 1, True), ("up.1.res.conv2", 64, 3, 64, 1, True),
    ("up.1.resample.conv", 64, 2, 64, 1, False),  # after the nearest x2
    ("up.2.res.conv1", 128, 2, 64, 1, True), ("up.2.res.conv2", 64, 2, 64, 1, True),
    ("up.3.res.conv1", 128, 2, 64, 1, True), ("up.3.res.conv2", 64, 2, 64, 1, True),
    ("up.3.resample.conv", 64, 1, 64, 1, False),
    ("up.4.res.conv1", 128, 1, 64, 1, True), ("up.4.res.conv2", 64, 1, 64, 1, True),
    ("up.5.res.conv1", 96, 1, 64, 1, True), ("up.5.res.conv2", 64, 1, 64, 1, True),
    ("up.5.resample.conv", 64, 0, 64, 1, False),
    ("up.6.res.conv1", 96, 0, 32, 1, True), ("up.6.res.conv2", 32, 0, 32, 1, True),
    ("up.7.res.conv1", 64, 0, 32, 1, True), ("up.7.res.conv2", 32, 0, 32, 1, True),
    ("out_conv", 32, 0, 6, 1, True),
]


@pytest.mark.parametrize("height, width, padded", [(32, 32, (32, 32)), (20, 30, (24, 32))])
def test_shapes_of_the_test_preset_are_exact(height, width, padded):
    """The hooks see the padded size (the test preset pads to multiples of 8) and every conv."""
    layers, params = conv_rows.conv_layers("test", height, width, batch=2)
    got = {(layer.shape, name) for layer in layers for name in layer.names}
    expected = {(conv_rows.ConvShape(2, c_in, padded[0] >> level, padded[1] >> level, c_out, stride, norm), name)
                for name, c_in, level, c_out, stride, norm in TEST_PRESET_CONVS}
    assert got == expected
    assert sum(layer.count for layer in layers) == len(TEST_PRESET_CONVS) == 36
    assert all(layer.count == len(layer.names) for layer in layers)
    assert len(layers) == len({s for s, _ in expected}) == 19  # distinct shapes, each measured once
    assert layers[0].names == ["input_conv"]  # in forward order
    counts = {layer.shape.label: layer.count for layer in layers}
    h, w = padded
    assert counts[f"2x32x{h}x{w} -> 32 s1 +norm"] == 4 and counts[f"2x64x{h // 8}x{w // 8} -> 64 s1 +norm"] == 8
    assert params == 1_563_270  # the 1.6M test preset


def test_shape_arithmetic_and_run_order():
    s2 = conv_rows.ConvShape(1, 32, 33, 17, 64, 2, False)
    assert s2.out_hw == (17, 9)  # ceil(H / 2), as fused_conv3x3 and F.conv2d(padding=1)
    assert s2.flops == 2 * 17 * 9 * 64 * 9 * 32
    assert s2.label == "1x32x33x17 -> 64 s2"
    small = conv_rows.ConvLayer(conv_rows.ConvShape(1, 8, 8, 8, 8, 1, True), 1, ["a"])
    many = conv_rows.ConvLayer(conv_rows.ConvShape(1, 8, 4, 4, 8, 1, True), 8, ["b"] * 8)  # 2x the count x FLOPs
    assert conv_rows.run_order([small, many]) == [many, small]


def test_parse_spec():
    assert conv_rows.parse_spec("paper:1024") == ("paper", 1024, 1024)
    assert conv_rows.parse_spec("default:3840x2160") == ("default", 2160, 3840)
    for bad in ("paper", ":1024", "paper:", "paper:x"):
        with pytest.raises(ValueError):
            conv_rows.parse_spec(bad)


def test_prologue_coefficients_are_the_norm():
    """SiLU(A x + B) is the adaptive GroupNorm + SiLU that the cuDNN path runs before its conv."""
    from resflow_fast.kernels import group_norm_modulate_silu_reference

    torch.manual_seed(0)
    x = (3 + 2 * torch.randn(2, 64, 5, 7)).contiguous(memory_format=torch.channels_last)
    gamma, beta = 1 + 0.1 * torch.randn(64), 0.1 * torch.randn(64)
    scale, shift = 0.1 * torch.randn(2, 64), 0.1 * torch.randn(2, 64)
    a, b = conv_rows.prologue_coefficients(x, 32, gamma, beta, scale, shift, 1e-5)
    assert a.shape == b.shape == (2, 64) and a.dtype == torch.float32
    folded = torch.nn.functional.silu(a[:, :, None, None] * x + b[:, :, None, None])
    norm = group_norm_modulate_silu_reference(x, 32, gamma, beta, scale, shift, 1e-5)
    torch.testing.assert_close(folded, norm, atol=1e-5, rtol=1e-5)


def test_remaining_shapes_are_skipped_when_the_budget_runs_out(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    layers = conv_rows.run_order(conv_rows.conv_layers("test", 8, 8)[0])[:4]
    now = [0.0]
    budget = plan.Budget(10.0, now=lambda: now[0])
    rows = []
    for row in conv_rows.time_layers(layers, torch.device("cpu"), Clock(torch.device("cpu")), budget, 32, " (note)"):
        rows.append(row)
        now[0] += 6.0  # the budget is spent after the second shape
    assert [r["status"] for r in rows] == ["ok", "ok", "skipped", "skipped"]
    assert rows[2]["note"].startswith("budget spent (12 s of --budget-s 10)") and rows[2]["note"].endswith(" (note)")
    assert "cudnn_ms" not in rows[2] and rows[2]["count"] == layers[2].count


def test_nothing_is_timed_under_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    layer = conv_rows.conv_layers("test", 8, 8)[0][0]
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        conv_rows.measure_layer(layer, torch.device("cpu"), Clock(torch.device("cpu")), 32)


# -- in the harness --------------------------------------------------------------------------------
def test_cli_option_parses():
    assert bench.parse_args([]).conv_spec is None  # off unless asked for: the default run is unchanged
    assert bench.parse_args(["--conv-layers"]).conv_spec == ("paper", 1024, 1024)
    assert bench.parse_args(["--device", "cpu", "--conv-layers"]).conv_spec == ("test", 32, 32)
    args = bench.parse_args(["--conv-layers", "default:3840x2160", "--conv-batch", "2", "--conv-budget-s", "90"])
    assert (args.conv_spec, args.conv_batch, args.conv_budget_s) == (("default", 2160, 3840), 2, 90.0)
    args = bench.parse_args(["--only", "conv"])  # the conv table alone, at the default
    assert args.conv_spec == ("paper", 1024, 1024) and args.conv_budget_s == 0.0
    # the argument after a bare --conv-layers is not swallowed
    assert bench.parse_args(["--conv-layers", "--budget-s", "5"]).budget_s == 5.0


@pytest.mark.parametrize("argv, message", [
    (["--conv-layers", "nonsense:1024"], "unknown preset 'nonsense'"),
    (["--conv-layers", "paper"], "PRESET:SIZE"),
    (["--conv-budget-s", "-1"], "expected a number >= 0"),
    (["--conv-batch", "0"], "expected a positive integer"),
    (["--only", "conv,nonsense"], "--only: unknown ['nonsense']"),
])
def test_bad_conv_arguments_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert message in capsys.readouterr().err


def test_dry_run_lists_the_conv_shapes(capsys):
    assert bench.main(["--dry-run", "--only", "conv", "--budget-s", "400", "--conv-budget-s", "40"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if " conv " in line]
    assert len(lines) == 30  # the distinct 3x3 conv shapes of the paper U-Net at 1024^2
    assert lines[0].endswith("conv 1x128x1024x1024 -> 128 s1 +norm x7")  # heaviest first
    ran = [line for line in lines if "skipped" not in line]
    first, later = conv_rows.ROW_PRIOR_S["cuda"]  # the first shape pays the fused conv's compiles
    assert len(ran) == 1 + int((40 - first) // later)
    assert lines[-1].endswith("(at 38 s, estimated 6 s more; --conv-budget-s 40, from 0 s)")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The conv table alone on the CPU (test preset at 32x32, the twins), within --conv-budget-s."""
    out = tmp_path_factory.mktemp("conv")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("TRITON_INTERPRET", raising=False)  # the harness refuses to time the interpreter
        status = bench.main(["--device", "cpu", "--only", "conv", "--budget-s", "600", "--conv-budget-s", "300",
                             "--out", str(out)])
    return status, out, json.loads((out / "results.json").read_text())


def test_smoke_run_writes_every_shape(smoke):
    status, out, data = smoke
    assert status == 0 and data["kernels"] == [] and data["restore"] == []
    section = data["conv_layers"]
    assert (section["preset"], section["image"], section["batch"], section["device"]) == ("test", "32x32", 1, "cpu")
    assert section["shapes"] == len(section["rows"]) == 19 and section["convs"] == 36
    for row in section["rows"]:
        assert row["status"] == "ok", row
        assert row["parity_ok"] and row["rel_err"] < 1e-5  # fp32 twins: the same math
        assert 0 < row["cudnn_ms"] <= row["cudnn_p90_ms"] and 0 < row["fused_ms"] <= row["fused_p90_ms"]
        assert row["cudnn_tflops"] > 0 and row["speedup"] == pytest.approx(row["cudnn_ms"] / row["fused_ms"])
        assert ("fused_stats_ms" in row) == (row["c_out"] % 32 == 0)  # the output conv has 6 channels
    weights = [r["count"] * r["gflop"] for r in section["rows"]]
    assert weights == pytest.approx(sorted(weights, reverse=True))  # heaviest first
    tot = section["totals"]
    assert (tot["shapes_measured"], tot["convs_measured"]) == (19, 36)
    assert tot["cudnn_ms"] == pytest.approx(sum(r["count"] * r["cudnn_ms"] for r in section["rows"]))
    assert tot["speedup"] == pytest.approx(tot["cudnn_ms"] / tot["fused_ms"])
    assert sum(r["pct_of_cudnn_total"] for r in section["rows"]) == pytest.approx(100)
    assert data["models"]["test"]["params_m"] == pytest.approx(1.56327)


def test_smoke_run_renders_the_table(smoke):
    _, out, data = smoke
    md = (out / "results.md").read_text()
    assert "### 3x3 convs of test (1.6M) at 32x32, batch 1: fused_conv3x3 against cuDNN + fused norm" in md
    for title, _ in conv_rows.CONV_COLUMNS:
        assert f" {title} |" in md
    assert "| input_conv | 1 | 1x6x32x32 | 32 | 1 | no |" in md
    assert "| down.1.resample.conv | 1 | 1x32x32x32 | 32 | 2 | no |" in md
    assert "Per forward (sum of count x median; 19 of 19 shapes measured, covering 36 of 36 convs" in md
    assert "CPU smoke mode" in md


def test_budget_exhaustion_is_reported(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    argv = ["--device", "cpu", "--only", "conv", "--conv-layers", "test:16", "--budget-s", "0", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    section = json.loads((tmp_path / "results.json").read_text())["conv_layers"]
    assert [r["status"] for r in section["rows"]] == ["skipped"] * 19
    assert all(r["note"].startswith("budget spent") for r in section["rows"])
    assert section["totals"]["shapes_measured"] == 0 and section["totals"]["cudnn_ms"] is None
    assert "| skipped | est 0 s | budget spent" in capsys.readouterr().out  # the progress line of each shape
    md = (tmp_path / "results.md").read_text()
    assert "| skipped; budget spent" in md and "0 of 19 shapes measured, covering 0 of 36 convs" in md


def test_rendered_with_the_rest_of_a_gpu_report():
    """In a CUDA run's section (BENCHMARKS.md keeps it per card) after the other tables, with ok,
    skipped and failed shapes; every table row has its header's cells."""
    layers, params = conv_rows.conv_layers("paper", 1024, 1024)
    section = conv_rows.new_section("paper", 1024, 1024, 1, layers, params, torch.device("cuda"), 32)
    ok = {**conv_rows.base_row(layers[1]), "cudnn_ms": 2.0, "fused_ms": 1.6, "fused_stats_ms": 1.7, "speedup": 1.25,
          "cudnn_tflops": 150.0, "fused_tflops": 190.0, "max_abs_err": 0.01, "rel_err": 0.004, "parity_ok": True}
    conv_rows.add_row(section, ok)
    conv_rows.add_row(section, {**conv_rows.base_row(layers[0]), "status": "error", "note": "OutOfMemoryError: a | b"})
    conv_rows.add_row(section, {**conv_rows.base_row(layers[2]), "status": "skipped", "note": "budget spent"})
    data = {"command": "python -m resflow_fast.benchmarks --conv-layers", "date": "2026-11-26",
            "environment": {"card": "NVIDIA H100", "device": "cuda"}, "ceilings": {}, "models": {},
            "kernels": [], "restore": [], "conv_layers": section}
    md = report.render_section(data)
    assert "### 3x3 convs of paper (118.8M) at 1024x1024" in md and "triton do_bench" in md
    assert "CPU smoke" not in md
    n = layers[1].count
    assert f"1 of 30 shapes measured, covering {n} of 76 convs" in md
    assert (f"cuDNN + norm {report.fmt(2.0 * n)} ms, fused {report.fmt(1.6 * n)} ms (1.25x), "
            f"fused + stats {report.fmt(1.7 * n)} ms (1.18x") in md
    assert "| error; OutOfMemoryError: a / b |" in md and "| skipped; budget spent |" in md
    for block in md.split("\n\n"):
        rows = [line for line in block.splitlines() if line.startswith("|")]
        if rows:
            assert len({row.count("|") for row in rows}) == 1, block


def test_tma_rows_total_with_the_pointer_variant_where_tma_cannot_run():
    """A row with a TMA time counts it; a row without (stride 2, say) counts its pointer time."""
    layers, params = conv_rows.conv_layers("paper", 1024, 1024)
    section = conv_rows.new_section("paper", 1024, 1024, 1, layers, params, torch.device("cuda"), 32)
    common = {"cudnn_tflops": 1.0, "fused_tflops": 1.0, "max_abs_err": 0.0, "rel_err": 0.0, "parity_ok": True}
    with_tma = {**conv_rows.base_row(layers[0]), **common, "cudnn_ms": 2.0, "fused_ms": 1.6, "speedup": 1.25,
                "fused_tma_ms": 1.0, "speedup_tma": 2.0}
    without = {**conv_rows.base_row(layers[1]), **common, "cudnn_ms": 1.0, "fused_ms": 0.5, "speedup": 2.0}
    conv_rows.add_row(section, with_tma)
    conv_rows.add_row(section, without)
    tot = section["totals"]
    n0, n1 = layers[0].count, layers[1].count
    assert tot["fused_tma_ms"] == pytest.approx(1.0 * n0 + 0.5 * n1)
    assert tot["speedup_tma"] == pytest.approx((2.0 * n0 + 1.0 * n1) / (1.0 * n0 + 0.5 * n1))
    md = "\n".join(conv_rows.render_conv_section(section))
    assert f"fused with TMA {report.fmt(tot['fused_tma_ms'])} ms" in md and "| fused TMA ms |" in md


def test_tma_switch_restores_the_environment(monkeypatch):
    from resflow_fast.kernels.fused_conv3x3 import ENV_TMA, tma_requested

    monkeypatch.setenv(ENV_TMA, "0")
    with conv_rows.tma_switch(True):
        assert tma_requested()
    assert os.environ[ENV_TMA] == "0"
    monkeypatch.delenv(ENV_TMA)
    with conv_rows.tma_switch(False):
        assert not tma_requested()
    assert ENV_TMA not in os.environ
