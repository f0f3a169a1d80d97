"""Rows of the memory-bound kernels: each against its eager pure-torch twin (the formula it fuses)
and, for the norm, ``torch.compile`` of that twin; achieved GB/s for the bytes the op must move
(one read of each input, one write of each output) and its share of the copy bandwidth measured
in the same run.

On CUDA the shapes are the acceptance shapes of the GPU run; on the CPU (smoke mode) tiny ones,
where the "kernel" is its twin (without ``TRITON_INTERPRET`` the launchers fall back to it). Each
section is one job of the plan (:func:`kernel_jobs`), estimated and budgeted on its own.
"""
from __future__ import annotations

import importlib
import traceback
from dataclasses import dataclass
from typing import Callable

import torch

from .measure import Clock, kernel_time_ms

GROUP_NORM_SHAPES = {
    "cuda": ((1, 128, 512, 512),  # the acceptance shape: the top level of the 19.1M model at 512^2
             (1, 64, 2048, 2048),  # a large image: far beyond L2
             (4, 256, 256, 256)),  # batched, many channels
    "cpu": ((1, 32, 16, 16),),
}
EULER_SHAPES = {"cuda": ((1, 6, 2048, 2048),), "cpu": ((1, 6, 32, 32),)}
NUM_GROUPS = 32


def _rows(variants: dict, bytes_moved: int, clock: Clock, copy_gbs: float) -> list[dict]:
    """Time each variant; GB/s, share of the copy ceiling and speed-up over the first (eager)."""
    rows = []
    for name, fn in variants.items():
        median, p90 = kernel_time_ms(fn, clock)
        gbs = bytes_moved / median / 1e6
        rows.append({"variant": name, "median_ms": median, "p90_ms": p90, "gbs": gbs, "pct_copy": 100 * gbs / copy_gbs})
    for row in rows:
        row["speedup_vs_eager"] = rows[0]["median_ms"] / row["median_ms"]
    return rows


def group_norm_section(shape, device: torch.device, clock: Clock, copy_gbs: float, compile_twin: bool) -> dict:
    """``group_norm_modulate_silu`` on a bf16 channels-last activation (fp32 on the CPU)."""
    from resflow_fast.kernels import group_norm_modulate_silu, group_norm_modulate_silu_reference

    N, C, H, W = shape
    dtype = torch.bfloat16 if clock.cuda else torch.float32
    torch.manual_seed(0)
    x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(C, device=device), torch.randn(C, device=device)
    scale, shift = 0.1 * torch.randn(N, C, device=device), 0.1 * torch.randn(N, C, device=device)
    args = (x, NUM_GROUPS, weight, bias, scale, shift)
    variants = {"eager (twin)": lambda: group_norm_modulate_silu_reference(*args)}
    if compile_twin:
        compiled = torch.compile(group_norm_modulate_silu_reference, dynamic=False)
        variants["torch.compile (twin)"] = lambda: compiled(*args)
    variants["resflow_fast"] = lambda: group_norm_modulate_silu(*args)
    got, ref = group_norm_modulate_silu(*args).float(), group_norm_modulate_silu_reference(*args).float()
    section = {"op": "group_norm_modulate_silu", "shape": f"{N}x{C}x{H}x{W} {str(dtype)[6:]} channels-last",
               "max_abs_err_vs_twin": (got - ref).abs().max().item(),
               "rows": _rows(variants, 2 * x.numel() * x.element_size(), clock, copy_gbs)}
    timed = {r["variant"]: r["median_ms"] for r in section["rows"]}
    if "torch.compile (twin)" in timed:  # the kernel is accepted at >= 3x torch.compile
        section["speedup_vs_compile"] = timed["torch.compile (twin)"] / timed["resflow_fast"]
    if clock.cuda:
        section["recompiled_for_new_sizes"] = recompiles_for_new_sizes(args)
    return section


def norm_kernels() -> list:
    """The ``@triton.jit`` kernels of the norm. Through importlib: ``import
    resflow_fast.kernels.group_norm_modulate_silu as m`` binds the *function* the package
    re-exports under the module's name, which has no kernels (and made the check vacuous)."""
    module = importlib.import_module("resflow_fast.kernels.group_norm_modulate_silu")
    return [getattr(module, k) for k in dir(module) if k.startswith("_gn_") and k.endswith("_kernel")]


def recompiles_for_new_sizes(args) -> bool:
    """Whether two new (odd) H, W make the norm's Triton kernels compile new variants: they must
    not (docs/design/architecture.md, "Numerics contract": sizes are runtime arguments)."""
    from resflow_fast.kernels import group_norm_modulate_silu
    from resflow_fast.kernels._runtime import compiled_variants

    x, groups, *rest = args
    before = [compiled_variants(k) for k in norm_kernels()]
    N, C, H, W = x.shape
    for h, w in ((H // 2 + 3, W // 2 + 5), (H // 4 + 1, W // 3 + 7)):
        other = torch.randn(N, C, h, w, device=x.device, dtype=x.dtype).contiguous(memory_format=torch.channels_last)
        group_norm_modulate_silu(other, groups, *rest)
    return [compiled_variants(k) for k in norm_kernels()] != before


def euler_section(shape, device: torch.device, clock: Clock, copy_gbs: float) -> dict:
    """``euler_step`` of fp32 x, y with fp32 v, out of place and NCHW; then the sampler's own call
    (resflow_fast/sampler.py): fp32 x, y, bf16 v and the next bf16 network input, all channels-last
    (NHWC), x and y updated in place. Each against its eager twin in the same layout."""
    from resflow_fast.kernels import euler_step, euler_step_reference

    N, C2, H, W = shape
    torch.manual_seed(0)
    x, y = torch.randn(N, C2 // 2, H, W, device=device), torch.randn(N, C2 // 2, H, W, device=device)
    v = torch.randn(N, C2, H, W, device=device)
    dt = 0.25
    out_of_place = _rows({"eager (twin), NCHW fp32": lambda: euler_step_reference(x, y, v, dt),
                          "resflow_fast, NCHW fp32": lambda: euler_step(x, y, v, dt)},
                         4 * (4 * x.numel() + v.numel()), clock, copy_gbs)  # read x, y, v; write x, y
    bitwise = all(torch.equal(a, b) for a, b in zip(euler_step(x, y, v, dt), euler_step_reference(x, y, v, dt)))
    cl = torch.channels_last
    x_cl, y_cl = x.contiguous(memory_format=cl), y.contiguous(memory_format=cl)  # copies: updated in place
    v_net = v.to(torch.bfloat16).contiguous(memory_format=cl)
    next_input = torch.empty_like(v_net)  # keeps v_net's channels-last strides
    sampler_call = dict(inplace=True, next_input=next_input)
    in_place = _rows({"eager (twin), sampler's call": lambda: euler_step_reference(x_cl, y_cl, v_net, dt, **sampler_call),
                      "resflow_fast, sampler's call": lambda: euler_step(x_cl, y_cl, v_net, dt, **sampler_call)},
                     4 * 4 * x.numel() + 2 * v_net.numel() * 2, clock, copy_gbs)  # + read v, write next (bf16)
    return {"op": "euler_step", "shape": f"{N}x{C2}x{H}x{W}", "bitwise_equal_to_twin": bitwise,
            "layouts": {"NCHW fp32": "x, y, v fp32, NCHW, out of place",
                        "sampler's call": "x, y fp32 and v, next input bf16, all channels-last (NHWC); "
                                          "x, y in place"},
            "rows": out_of_place + in_place}


@dataclass(frozen=True)
class KernelJob:
    """One kernel section of the plan: the op, its label, and the function that measures it."""

    op: str
    label: str
    run: Callable[[], dict]


def kernel_jobs(device: torch.device, clock: Clock, copy_gbs: float, compile_twin: bool) -> list[KernelJob]:
    """Every kernel section, in running order; each job returns its section, or on failure a
    section with the error (the others still run)."""
    kind = "cuda" if clock.cuda else "cpu"
    jobs = [KernelJob("group_norm_modulate_silu", f"group_norm_modulate_silu {'x'.join(map(str, s))}",
                      lambda s=s: group_norm_section(s, device, clock, copy_gbs, compile_twin))
            for s in GROUP_NORM_SHAPES[kind]]
    jobs += [KernelJob("euler_step", f"euler_step {'x'.join(map(str, s))}",
                       lambda s=s: euler_section(s, device, clock, copy_gbs)) for s in EULER_SHAPES[kind]]
    return [KernelJob(job.op, job.label, _recording_errors(job)) for job in jobs]


def _recording_errors(job: KernelJob) -> Callable[[], dict]:
    def run() -> dict:
        try:
            return job.run()
        except Exception as e:  # noqa: BLE001 - recorded; the other sections still run
            traceback.print_exc()
            return {"op": job.op, "shape": job.label.split(" ", 1)[1], "rows": [],
                    "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    return run
