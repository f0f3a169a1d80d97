"""The per-layer conv table: every 3x3 conv shape of a U-Net preset at one image size, timed as
the fast U-Net runs it today against :func:`fused_conv3x3` with the norm in its prologue.

The shapes come from the reference :class:`UNet` itself, run once on the ``meta`` device (no
memory, no compute: the paper preset at 1024^2 takes a fraction of a second) with forward hooks
on its 3x3 ``nn.Conv2d`` modules, at the full image size, so the padding to the network's multiple,
the stride-2 downsamplers, the nearest-x2 upsamplers and the decoder's concatenated inputs are all
exactly what a forward sees. A shape is (N, C_in, H, W, C_out, stride) plus whether a GroupNorm +
SiLU runs right before the conv in :class:`resflow_fast.fast_unet.FastUNet` (a ResBlock's conv1 and
conv2, the output conv; not the input conv, the downsamplers nor the upsamplers); each distinct
one is measured once and weighted by how often a forward runs it.

Per shape, on CUDA in bf16 channels-last (the fast U-Net's layout), with random data:

* "cuDNN + norm": ``group_norm_modulate_silu(x, G, gamma, beta, scale, shift)`` then
  ``F.conv2d(..., w, b)`` with a channels-last bf16 weight and bias: the fast U-Net's path today
  (rows without a norm: ``F.conv2d`` alone). The norm is timed with its modulation; a ResBlock's
  conv1 runs it without, which differs by two (N, C) loads.
* "fused": ``fused_conv3x3(x, packed w, b, prologue=(A, B))`` with the same norm folded into
  per-(n, c) coefficients A, B, computed once outside the timed calls: in the fused network they
  come from the previous conv's epilogue (rows without a norm: no prologue).
* "fused + stats": the same, also writing the GroupNorm statistics of its output
  (``stats_groups=G``), the epilogue work that pays for the next layer's A, B; only where
  ``C_out`` divides into G groups.
* "fused TMA": the plain fused call again with ``RESFLOW_CONV_TMA=1`` (tensor-descriptor loads,
  2-D pixel tiles), where the GPU and the shape allow it (:func:`fused_conv3x3.tma_eligible`:
  stride 1, Hopper or newer); its parity against cuDNN + norm is checked as well.

Before timing, the two paths' outputs are compared (max abs error, and relative to the largest
output value, both of bf16 outputs). Times are medians of triton's ``do_bench`` (L2 flushed between
calls) through :func:`measure.kernel_time_ms`. Rows run heaviest first (count x FLOPs), so a
budget cut drops the shapes that matter least to the per-forward total.

On the CPU (smoke mode) everything is fp32 and both paths are the pure-torch twins
(:func:`group_norm_modulate_silu_reference`, :func:`fused_conv3x3_reference`): the code path runs,
the times say nothing about the kernels. Nothing here times the Triton interpreter.
"""
from __future__ import annotations

import contextlib
import math
import os
import statistics
import traceback
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .measure import Clock, kernel_time_ms, refusal_to_time
from .report import fmt, table

#: ``--conv-layers`` given without a value: the paper model at 1024^2, or the CPU smoke.
CONV_DEFAULTS = {"cuda": "paper:1024", "cpu": "test:32"}
#: Seconds one shape is estimated to take before any has been measured in this run: (the first
#: shape, each later one). A shape makes a parity check and four do_bench calls of ~0.25 s, and
#: compiles the fused conv's Triton variants it needs (plain, + statistics, TMA): all of them for
#: the first shape (unless the fused restore rows compiled some), new block configurations and
#: flags after. None on the CPU.
ROW_PRIOR_S = {"cuda": (20.0, 6.0), "cpu": (0.0, 0.0)}
#: The fused output may differ from cuDNN + norm by a bf16 rounding or two of the largest value;
#: beyond this share of it the row is flagged (a wrong padding or prologue is far larger).
PARITY_REL_TOL = 3e-2


@dataclass(frozen=True)
class ConvShape:
    """One 3x3 conv (padding 1) as a forward runs it: the input's (N, C_in, H, W), C_out, stride,
    and whether the fast U-Net runs a GroupNorm + SiLU on its input right before it."""

    batch: int
    c_in: int
    height: int
    width: int
    c_out: int
    stride: int
    norm: bool

    @property
    def out_hw(self) -> tuple[int, int]:
        return (self.height - 1) // self.stride + 1, (self.width - 1) // self.stride + 1

    @property
    def flops(self) -> float:
        """2 per multiply-add: 2 N H_out W_out C_out 9 C_in."""
        h, w = self.out_hw
        return 2.0 * self.batch * h * w * self.c_out * 9 * self.c_in

    @property
    def input(self) -> str:
        return f"{self.batch}x{self.c_in}x{self.height}x{self.width}"

    @property
    def label(self) -> str:
        return f"{self.input} -> {self.c_out} s{self.stride}" + (" +norm" if self.norm else "")


@dataclass
class ConvLayer:
    """A distinct shape, how many convs of one forward have it, and their module names."""

    shape: ConvShape
    count: int
    names: list[str] = field(default_factory=list)


def parse_spec(text: str) -> tuple[str, int, int]:
    """'paper:1024' -> ('paper', 1024, 1024); 'default:3840x2160' -> ('default', 2160, 3840):
    a preset and an image size as ``--sizes`` takes them (width x height)."""
    from .plan import parse_size

    preset, sep, size = text.partition(":")
    if not sep or not preset.strip():
        raise ValueError(f"--conv-layers takes PRESET:SIZE, e.g. paper:1024 or default:3840x2160; got {text!r}")
    height, width = parse_size(size.strip())
    return preset.strip(), height, width


def normed_convs(model) -> set[int]:
    """ids of the convs whose input the fast U-Net (resflow_fast/fast_unet.py) runs through
    ``group_norm_modulate_silu`` with SiLU right before them: each ResBlock's conv1 (norm1) and
    conv2 (norm2, modulated) and the output conv (out_norm)."""
    from resflow_fast.reference.unet import ResBlock

    ids = {id(model.out_conv)}
    for block in model.modules():
        if isinstance(block, ResBlock):
            ids |= {id(block.conv1), id(block.conv2)}
    return ids


def conv_layers(preset: str, height: int, width: int, batch: int = 1) -> tuple[list[ConvLayer], int]:
    """(the distinct 3x3 conv shapes of one forward of ``preset`` on a ``batch`` x H x W image, in
    the order the forward first runs them; the model's parameter count). Counted on the meta
    device with forward hooks, at the full size: exact, and free even at 3840x2160."""
    from resflow_fast.reference.unet import build_unet, count_parameters

    with torch.device("meta"):
        model = build_unet(preset)
        z = torch.empty(batch, model.config.in_channels, height, width)
        t = torch.full((batch,), 0.5)
    normed = normed_convs(model)
    layers: dict[ConvShape, ConvLayer] = {}

    def record(name: str):
        def hook(module: torch.nn.Conv2d, inputs, output) -> None:
            if module.padding != (1, 1) or module.dilation != (1, 1) or module.groups != 1 \
                    or module.stride[0] != module.stride[1]:
                raise ValueError(f"{name}: not a padding-1 3x3 conv ({module})")
            N, C, H, W = inputs[0].shape
            shape = ConvShape(N, C, H, W, module.out_channels, module.stride[0], id(module) in normed)
            layer = layers.setdefault(shape, ConvLayer(shape, 0))
            layer.count += 1
            layer.names.append(name)
        return hook

    handles = [m.register_forward_hook(record(name)) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    try:
        with torch.no_grad():
            model(z, t)
    finally:
        for handle in handles:
            handle.remove()
    return list(layers.values()), count_parameters(model)


def run_order(layers: list[ConvLayer]) -> list[ConvLayer]:
    """Heaviest first (count x FLOPs; ties in forward order): a budget cut drops what matters least."""
    return sorted(layers, key=lambda layer: -layer.count * layer.shape.flops)


def prologue_coefficients(x: torch.Tensor, groups: int, gamma, beta, scale, shift, eps: float):
    """(A, B), each (N, C) fp32, with ``SiLU(A x + B) == SiLU(GN(x) (1 + scale) + shift)``: the
    norm as fused_conv3x3's prologue takes it, from x's group statistics - the fast U-Net's own
    :func:`~resflow_fast.fast_unet.group_stats` and :func:`~resflow_fast.fast_unet.fold_group_norm`,
    so the benchmark times exactly what the fused path runs."""
    from resflow_fast.fast_unet import fold_group_norm, group_stats

    return fold_group_norm(*group_stats(x, groups, eps), gamma, beta, scale, shift)


def base_row(layer: ConvLayer) -> dict:
    s = layer.shape
    names = layer.names
    return {"layer": names[0] + (f" +{len(names) - 1}" if len(names) > 1 else ""), "layers": list(names),
            "count": layer.count, "shape": s.input, "n": s.batch, "c_in": s.c_in, "h": s.height, "w": s.width,
            "c_out": s.c_out, "stride": s.stride, "norm": s.norm, "gflop": s.flops / 1e9, "status": "ok"}


def measure_layer(layer: ConvLayer, device: torch.device, clock: Clock, groups: int, eps: float = 1e-5) -> dict:
    """One row: the parity of the two paths, then their median times (see the module docstring)."""
    from resflow_fast.kernels import (fused_conv3x3, fused_conv3x3_reference, group_norm_modulate_silu,
                                      group_norm_modulate_silu_reference, pack_conv3x3_weight)
    from resflow_fast.kernels.fused_conv3x3 import tma_eligible

    refusal = refusal_to_time()
    if refusal:
        raise RuntimeError(refusal)
    s, row = layer.shape, base_row(layer)
    cuda = clock.cuda
    dtype = torch.bfloat16 if cuda else torch.float32
    norm_fn = group_norm_modulate_silu if cuda else group_norm_modulate_silu_reference
    conv_fn = fused_conv3x3 if cuda else fused_conv3x3_reference
    torch.manual_seed(0)
    cl = torch.channels_last
    x = torch.randn(s.batch, s.c_in, s.height, s.width, device=device, dtype=dtype).contiguous(memory_format=cl)
    w = (torch.randn(s.c_out, s.c_in, 3, 3, device=device) / math.sqrt(9 * s.c_in)).to(dtype)
    w = w.contiguous(memory_format=cl)  # as FastUNet.refresh_weights keeps it for cuDNN
    b = (0.1 * torch.randn(s.c_out, device=device)).to(dtype)
    packed = pack_conv3x3_weight(w, dtype)  # once per weight, as a fused network would
    prologue = None
    if s.norm:
        gamma, beta = 1 + 0.1 * torch.randn(s.c_in, device=device), 0.1 * torch.randn(s.c_in, device=device)
        scale = 0.1 * torch.randn(s.batch, s.c_in, device=device)
        shift = 0.1 * torch.randn(s.batch, s.c_in, device=device)
        prologue = prologue_coefficients(x, groups, gamma, beta, scale, shift, eps)

        def cudnn():
            return F.conv2d(norm_fn(x, groups, gamma, beta, scale, shift, eps), w, b, stride=s.stride, padding=1)
    else:
        def cudnn():
            return F.conv2d(x, w, b, stride=s.stride, padding=1)

    def fused():
        return conv_fn(x, packed, b, stride=s.stride, prologue=prologue)

    variants = {"cudnn": cudnn, "fused": fused}
    if s.c_out % groups == 0:
        variants["fused_stats"] = lambda: conv_fn(x, packed, b, stride=s.stride, prologue=prologue,
                                                  stats_groups=groups, stats_eps=eps)
    # the TMA variant of the same call (RESFLOW_CONV_TMA=1), where this GPU and shape allow it
    with_tma = cuda and tma_eligible(x, packed, s.stride)
    if with_tma:
        variants["fused_tma"] = fused
    with torch.no_grad():
        with tma_switch(False):  # the pointer variant, whatever the caller's environment says
            ref, got = cudnn().float(), fused().float()
        err = (ref - got).abs().max().item()
        row["max_abs_err"] = err
        row["rel_err"] = err / max(ref.abs().max().item(), 1e-30)
        row["parity_ok"] = row["rel_err"] <= PARITY_REL_TOL
        if with_tma:
            with tma_switch(True):
                got = fused().float()
            row["tma_rel_err"] = (ref - got).abs().max().item() / max(ref.abs().max().item(), 1e-30)
            row["parity_ok"] = row["parity_ok"] and row["tma_rel_err"] <= PARITY_REL_TOL
        del ref, got
        for name, fn in variants.items():
            with tma_switch(name == "fused_tma"):
                median, p90 = kernel_time_ms(fn, clock)
            row[f"{name}_ms"], row[f"{name}_p90_ms"] = median, p90
            row[f"{name}_tflops"] = s.flops / median / 1e9
    row["speedup"] = row["cudnn_ms"] / row["fused_ms"]
    if with_tma:
        row["speedup_tma"] = row["cudnn_ms"] / row["fused_tma_ms"]
    if "fused_stats_ms" in row:
        row["speedup_with_stats"] = row["cudnn_ms"] / row["fused_stats_ms"]
    if not row["parity_ok"]:
        worst = max(row["rel_err"], row.get("tma_rel_err", 0.0))
        row["note"] = f"parity: relative error {worst:.3g} > {PARITY_REL_TOL:g}"
    return row


@contextlib.contextmanager
def tma_switch(on: bool):
    """``$RESFLOW_CONV_TMA`` set to 1 (or removed) for the calls inside, restored afterwards."""
    from resflow_fast.kernels.fused_conv3x3 import ENV_TMA

    before = os.environ.get(ENV_TMA)
    if on:
        os.environ[ENV_TMA] = "1"
    else:
        os.environ.pop(ENV_TMA, None)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV_TMA, None)
        else:
            os.environ[ENV_TMA] = before


def time_layers(layers: list[ConvLayer], device: torch.device, clock: Clock, budget, groups: int,
                budget_note: str = "", measure=None, on_start=None):
    """Yield one row per layer, in the given order. Before each, the budget (a
    :class:`plan.Budget`) decides whether it may start, from the median time of the rows measured
    so far (:data:`ROW_PRIOR_S` before the first); a layer it refuses, or one that fails, is a row
    with that status and a note, and the others still run. ``measure(layer)`` measures one
    (default :func:`measure_layer`); ``on_start(layer, estimate_s)`` is told before it starts.
    Seconds are read off the budget's clock."""
    measure = measure or (lambda layer: measure_layer(layer, device, clock, groups))
    first, later = ROW_PRIOR_S["cuda" if clock.cuda else "cpu"]
    seconds: list[float] = []
    for layer in layers:
        # the first shape measured paid the compiles: it says little of the others
        if not seconds:
            estimate = first
        elif len(seconds) == 1:
            estimate = min(seconds[0], later)
        else:
            estimate = statistics.median(seconds[1:])
        reason = budget.skip_reason(estimate)
        if reason:
            yield {**base_row(layer), "status": "skipped", "note": reason + budget_note, "estimate_s": estimate}
            continue
        if on_start is not None:
            on_start(layer, estimate)
        t0 = budget.now()
        try:
            row = measure(layer)
        except Exception as e:  # noqa: BLE001 - recorded; the other shapes still run
            traceback.print_exc()
            row = {**base_row(layer), "status": "error", "note": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            if clock.cuda:
                torch.cuda.empty_cache()  # an out-of-memory must not take the next shapes with it
        row["seconds"] = budget.now() - t0
        row["estimate_s"] = estimate
        seconds.append(row["seconds"])
        yield row


def new_section(preset: str, height: int, width: int, batch: int, layers: list[ConvLayer], params: int,
                device: torch.device, groups: int) -> dict:
    """The table's header: what was measured, before any row."""
    return {"preset": preset, "params_m": params / 1e6, "image": f"{width}x{height}", "batch": batch,
            "dtype": "bf16 channels-last" if device.type == "cuda" else "fp32 channels-last (CPU smoke: twins)",
            "device": device.type, "groups": groups, "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "convs": sum(layer.count for layer in layers),
            "shapes": len(layers), "rows": [], "totals": {}}


def totals(section: dict) -> dict:
    """Per-forward time of each path: the sum of count x median over the shapes measured, and how
    many of the forward's convs that covers."""
    ok = [r for r in section["rows"] if r["status"] == "ok"]
    out = {"shapes_measured": len(ok), "convs_measured": sum(r["count"] for r in ok),
           "convs": section["convs"], "shapes": section["shapes"]}
    for name in ("cudnn", "fused"):
        out[f"{name}_ms"] = sum(r["count"] * r[f"{name}_ms"] for r in ok) if ok else None
    # a conv whose C_out has no whole groups (the output conv) feeds no norm: its plain fused time
    out["fused_stats_ms"] = sum(r["count"] * r.get("fused_stats_ms", r["fused_ms"]) for r in ok) if ok else None
    # TMA where a row has it, the pointer variant elsewhere (stride 2, unaligned channel counts)
    if any("fused_tma_ms" in r for r in ok):
        out["fused_tma_ms"] = sum(r["count"] * r.get("fused_tma_ms", r["fused_ms"]) for r in ok)
    out["gflop"] = sum(r["count"] * r["gflop"] for r in ok)
    if out["cudnn_ms"]:
        out["speedup"] = out["cudnn_ms"] / out["fused_ms"]
        out["speedup_with_stats"] = out["cudnn_ms"] / out["fused_stats_ms"]
        if "fused_tma_ms" in out:
            out["speedup_tma"] = out["cudnn_ms"] / out["fused_tma_ms"]
    for r in ok:
        r["pct_of_cudnn_total"] = 100 * r["count"] * r["cudnn_ms"] / out["cudnn_ms"] if out["cudnn_ms"] else None
    return out


def add_row(section: dict, row: dict) -> None:
    section["rows"].append(row)
    section["totals"] = totals(section)


# -- Markdown (report.py's style: its table() and fmt()) -------------------------------------------
CONV_COLUMNS = [("layers", "layer"), ("count", "count"), ("input NxCxHxW", "shape"), ("C_out", "c_out"),
                ("stride", "stride"), ("norm", "norm"), ("GFLOP", "gflop"), ("cuDNN + norm ms", "cudnn_ms"),
                ("cuDNN TFLOP/s", "cudnn_tflops"), ("fused ms", "fused_ms"), ("fused TFLOP/s", "fused_tflops"),
                ("fused speed-up", "speedup"), ("fused + stats ms", "fused_stats_ms"),
                ("+ stats speed-up", "speedup_with_stats"), ("fused TMA ms", "fused_tma_ms"),
                ("TMA speed-up", "speedup_tma"), ("% of cuDNN total", "pct_of_cudnn_total"),
                ("max abs err", "max_abs_err"), ("rel err", "rel_err"), ("note", "note")]


def _display_rows(section: dict) -> list[dict]:
    rows = []
    for row in section["rows"]:
        notes = [] if row.get("status", "ok") == "ok" else [row["status"]]
        notes += [row["note"]] if row.get("note") else []
        rows.append({**row, "note": "; ".join(notes)})
    return rows


def render_conv_section(section: dict) -> list[str]:
    """The Markdown lines of the per-layer table, its totals and what its columns mean."""
    tot = section.get("totals") or {}
    model = f"{section['preset']} ({section['params_m']:.1f}M)"
    lines = [f"### 3x3 convs of {model} at {section['image']}, batch {section['batch']}: "
             "fused_conv3x3 against cuDNN + fused norm", "",
             f"{section['shapes']} distinct shapes of the {section['convs']} 3x3 convs of one forward, "
             f"{section['dtype']}, heaviest first. \"norm\": the fast U-Net runs group_norm_modulate_silu "
             f"({section['groups']} groups, SiLU) before this conv; \"cuDNN + norm\" times that norm then "
             "F.conv2d, \"fused\" reads it as fused_conv3x3's prologue (A, B from the previous conv's "
             "statistics, not timed); \"+ stats\" also writes its output's GroupNorm statistics; "
             "\"fused TMA\" is the plain fused call through the TMA variant (RESFLOW_CONV_TMA=1; "
             "stride 1, Hopper or newer). "
             + (f"torch.backends.cudnn.benchmark = {section.get('cudnn_benchmark')} (the fast U-Net does not "
                "set it). Medians of triton do_bench (L2 flushed between calls)" if section.get("device") == "cuda"
                else "Medians of 20 wall-clock calls")
             + "; errors are fused against cuDNN + norm, relative to the largest output.", ""]
    if section.get("device") != "cuda":
        lines += ["CPU smoke mode: both paths are the pure-torch twins; these times say nothing about the kernels.", ""]
    lines += table(CONV_COLUMNS, _display_rows(section))
    lines.append("")
    if tot:
        partial = (f"{tot['shapes_measured']} of {tot['shapes']} shapes measured, covering "
                   f"{tot['convs_measured']} of {tot['convs']} convs")
        summary = (f"Per forward (sum of count x median; {partial}, {fmt(tot['gflop'])} GFLOP): "
                   f"cuDNN + norm {fmt(tot['cudnn_ms'])} ms, fused {fmt(tot['fused_ms'])} ms")
        if tot.get("speedup"):
            summary += (f" ({tot['speedup']:.2f}x), fused + stats {fmt(tot['fused_stats_ms'])} ms "
                        f"({tot['speedup_with_stats']:.2f}x; plain fused where C_out has no whole groups)")
        if tot.get("speedup_tma"):
            summary += (f", fused with TMA {fmt(tot['fused_tma_ms'])} ms ({tot['speedup_tma']:.2f}x; "
                        "the pointer variant where TMA cannot run)")
        lines += [summary + ".", ""]
    if section.get("error"):
        lines += [f"error: {section['error']}", ""]
    return lines
