"""One GPU command that checks correctness and times everything issue 4 is accepted on.

    python -m resflow_fast.benchmarks.gpu_check --out results/   [--quick] [--budget-s 420]

Side by side, in one process on one card (anchors.md, "How to report"):

* ceilings measured in the same run: device-to-device copy (GB/s, bytes read + written) and an
  8192^3 bf16 matmul (TFLOP/s);
* ``group_norm_modulate_silu`` against the eager and ``torch.compile``d formula, and the fused
  ``euler_step`` against the eager update, with achieved GB/s and its share of the copy ceiling;
* the 4-step restore at batch 1 for the bench19m and paper presets: eager fp32 reference, eager
  bf16 channels-last, torch.compile (default mode, bf16 channels-last), the fast path, and the
  fast path under CUDA graphs: median and p90 latency (CUDA events), images/s, first-call time,
  peak memory, achieved TFLOP/s, energy per image (NVML, windows of at least 2 s), and the PSNR of
  each against the fp32 reference on the same input and seed.

Results are written as they come (``results.json`` and ``results.md`` under ``--out``), so a run
cut short still reports what it finished. Never runs under the Triton interpreter.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

MiB = 1 << 20


# ------------------------------------------------------------------------------------------------
# measurement helpers
# ------------------------------------------------------------------------------------------------
def cuda_times_ms(fn, reps: int, warmup: int = 3) -> list[float]:
    """Per-call latencies in ms from CUDA events, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def summarize(times: list[float]) -> dict:
    times = sorted(times)
    p90 = times[min(len(times) - 1, math.ceil(0.9 * len(times)) - 1)]
    return {"median_ms": statistics.median(times), "p90_ms": p90, "reps": len(times)}


def kernel_time_ms(fn) -> tuple[float, float]:
    """(median, p90) ms of a memory-bound op, L2 flushed between calls (triton's do_bench)."""
    import triton.testing

    q = triton.testing.do_bench(fn, warmup=25, rep=200, quantiles=[0.5, 0.9])
    return float(q[0]), float(q[1])


class EnergyMeter:
    """Joules over a window from NVML's total-energy counter (millijoules since driver load)."""

    def __init__(self):
        self.handle = None
        try:
            import pynvml

            pynvml.nvmlInit()
            index = torch.cuda.current_device()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.pynvml = pynvml
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        except Exception as e:  # no NVML or no energy counter on this card: report, do not fail
            self.error = f"{type(e).__name__}: {e}"
            self.handle = None

    def read_mj(self) -> int | None:
        return None if self.handle is None else self.pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)

    def card_info(self) -> dict:
        if self.handle is None:
            return {"nvml": getattr(self, "error", "unavailable")}
        p, h = self.pynvml, self.handle
        info = {}
        for key, call in (("power_limit_w", lambda: p.nvmlDeviceGetPowerManagementLimit(h) / 1000),
                          ("sm_clock_max_mhz", lambda: p.nvmlDeviceGetMaxClockInfo(h, p.NVML_CLOCK_SM)),
                          ("mem_clock_max_mhz", lambda: p.nvmlDeviceGetMaxClockInfo(h, p.NVML_CLOCK_MEM)),
                          ("sm_clock_now_mhz", lambda: p.nvmlDeviceGetClockInfo(h, p.NVML_CLOCK_SM)),
                          ("driver", lambda: p.nvmlSystemGetDriverVersion())):
            try:
                v = call()
                info[key] = v.decode() if isinstance(v, bytes) else v
            except Exception as e:
                info[key] = f"n/a ({type(e).__name__})"
        return info


def energy_per_call_j(meter: EnergyMeter, fn, min_seconds: float = 2.0) -> float | None:
    """Run ``fn`` repeatedly for at least ``min_seconds``; joules per call from NVML."""
    if meter.handle is None:
        return None
    torch.cuda.synchronize()
    e0, t0, n = meter.read_mj(), time.perf_counter(), 0
    while time.perf_counter() - t0 < min_seconds:
        fn()
        n += 1
        if n % 4 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    return (meter.read_mj() - e0) / 1000.0 / n


# ------------------------------------------------------------------------------------------------
# the report
# ------------------------------------------------------------------------------------------------
class Report:
    def __init__(self, out: Path, argv: list[str]):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.data = {"command": " ".join(["python -m resflow_fast.benchmarks.gpu_check", *argv]),
                     "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "sections": {}}

    def put(self, section: str, value) -> None:
        self.data["sections"][section] = value
        self.flush()
        print(f"[{section}] {json.dumps(value, default=str)[:2000]}", flush=True)

    def flush(self) -> None:
        (self.out / "results.json").write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        (self.out / "results.md").write_text(render_markdown(self.data))


def _fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def render_markdown(data: dict) -> str:
    s = data["sections"]
    env = s.get("environment", {})
    lines = [f"# GPU check: {env.get('card', '?')}", "",
             f"Date {data['date']}; torch {env.get('torch')}, triton {env.get('triton')}, CUDA {env.get('cuda')}, "
             f"Python {env.get('python')}; power limit {env.get('power_limit_w')} W; command `{data['command']}`.", ""]
    if "ceilings" in s:
        c = s["ceilings"]
        lines += [f"Ceilings measured in this run: copy {_fmt(c.get('copy_gbs'))} GB/s (read + write), "
                  f"bf16 matmul 8192^3 {_fmt(c.get('matmul_tflops'))} TFLOP/s.", ""]
    kernels = [v for k, v in s.items() if k.startswith("kernel:")]
    if kernels:
        lines += ["| op | shape | variant | median ms | p90 ms | GB/s | % of copy | speed-up vs eager |",
                  "|---|---|---|---|---|---|---|---|"]
        for k in kernels:
            for row in k.get("rows", []):
                lines.append(f"| {k['op']} | {k['shape']} | {row['variant']} | {_fmt(row['median_ms'])} | "
                             f"{_fmt(row['p90_ms'])} | {_fmt(row.get('gbs'))} | {_fmt(row.get('pct_copy'))} | "
                             f"{_fmt(row.get('speedup_vs_eager'))} |")
            if k.get("error"):
                lines.append(f"| {k['op']} | {k['shape']} | error | {k['error'][:120]} | | | | |")
        lines.append("")
    restores = [v for k, v in s.items() if k.startswith("restore:")]
    if restores:
        lines += ["| model | image | variant | median ms | p90 ms | images/s | first call s | peak alloc MiB | "
                  "peak reserved MiB | TFLOP/s | % of matmul | J/image | PSNR vs fp32 ref dB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in restores:
            for row in r.get("rows", []):
                lines.append(
                    f"| {r['preset']} | {r['image']} | {row['variant']} | {_fmt(row.get('median_ms'))} | "
                    f"{_fmt(row.get('p90_ms'))} | {_fmt(row.get('images_per_s'))} | {_fmt(row.get('first_call_s'))} | "
                    f"{_fmt(row.get('peak_alloc_mib'))} | {_fmt(row.get('peak_reserved_mib'))} | "
                    f"{_fmt(row.get('tflops'))} | {_fmt(row.get('pct_matmul'))} | {_fmt(row.get('joules_per_image'))} | "
                    f"{_fmt(row.get('psnr_vs_ref'))} |")
                if row.get("error"):
                    lines.append(f"| {r['preset']} | {r['image']} | {row['variant']} error | {row['error'][:150]} |"
                                 + " |" * 9)
        lines.append("")
    for k, v in s.items():
        if k.startswith("tests") or k == "errors":
            lines += [f"## {k}", "", "```", json.dumps(v, indent=1, default=str)[:4000], "```", ""]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# sections
# ------------------------------------------------------------------------------------------------
def environment(meter: EnergyMeter) -> dict:
    import triton

    props = torch.cuda.get_device_properties(0)
    return {"card": torch.cuda.get_device_name(0), "sms": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2**30, 1), "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "python": platform.python_version(),
            **meter.card_info()}


def ceilings() -> dict:
    n = 1 << 30  # 1 GiB each way
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    copy_ms = statistics.median(cuda_times_ms(lambda: b.copy_(a), reps=20))
    del a, b
    m = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    mm_ms = statistics.median(cuda_times_ms(lambda: m @ m, reps=20))
    return {"copy_gbs": 2 * n / copy_ms / 1e6, "matmul_tflops": 2 * 8192**3 / mm_ms / 1e9,
            "copy_ms": copy_ms, "matmul_ms": mm_ms}


def gn_formula(x, w, b, s, sh):
    """The formula group_norm_modulate_silu fuses, written as eager torch (fp32 statistics)."""
    h = F.group_norm(x.float(), 32, w, b, 1e-5)
    return F.silu(h * (1 + s[:, :, None, None]) + sh[:, :, None, None]).to(x.dtype)


def bench_group_norm(shape, copy_gbs) -> dict:
    from resflow_fast.kernels import group_norm_modulate_silu

    N, C, H, W = shape
    x = torch.randn(shape, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(C, device="cuda"), torch.randn(C, device="cuda")
    s, sh = torch.randn(N, C, device="cuda") * 0.1, torch.randn(N, C, device="cuda") * 0.1
    compiled = torch.compile(gn_formula)
    ours = lambda: group_norm_modulate_silu(x, 32, w, b, s, sh)  # noqa: E731
    ref = gn_formula(x, w, b, s, sh).float()
    got = ours().float()
    err = ((got - ref).abs().max().item(), ((got - ref).norm() / ref.norm()).item())
    bytes_moved = 2 * x.numel() * x.element_size()  # the floor: one read, one write
    rows = []
    for name, fn in (("eager", lambda: gn_formula(x, w, b, s, sh)), ("torch.compile", lambda: compiled(x, w, b, s, sh)),
                     ("resflow_fast", ours)):
        med, p90 = kernel_time_ms(fn)
        rows.append({"variant": name, "median_ms": med, "p90_ms": p90, "gbs": bytes_moved / med / 1e6,
                     "pct_copy": 100 * bytes_moved / med / 1e6 / copy_gbs})
    for r in rows:
        r["speedup_vs_eager"] = rows[0]["median_ms"] / r["median_ms"]
    # H and W change: the kernels must not recompile
    from resflow_fast.kernels._runtime import compiled_variants
    from resflow_fast.kernels import group_norm_modulate_silu as gn
    import resflow_fast.kernels.group_norm_modulate_silu as gn_mod

    kernels = [getattr(gn_mod, k) for k in dir(gn_mod) if k.startswith("_gn_") and k.endswith("_kernel")]
    before = [compiled_variants(k) for k in kernels]
    for hw in ((H // 2 + 3, W // 2 + 5), (H // 4 + 1, W // 3 + 7)):
        xx = torch.randn(N, C, *hw, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        gn(xx, 32, w, b, s, sh)
    after = [compiled_variants(k) for k in kernels]
    return {"op": "group_norm_modulate_silu", "shape": f"{N}x{C}x{H}x{W} bf16 channels-last", "rows": rows,
            "max_abs_err_vs_formula": err[0], "rel_err_vs_formula": err[1],
            "compiled_variants_before_after_new_sizes": [before, after],
            "speedup_vs_compile": rows[1]["median_ms"] / rows[2]["median_ms"]}


def bench_euler(shape, copy_gbs) -> dict:
    from resflow_fast.kernels import euler_step

    N, C2, H, W = shape
    C = C2 // 2
    x = torch.randn(N, C, H, W, device="cuda")
    y = torch.randn_like(x)
    v = torch.randn(N, C2, H, W, device="cuda")
    dt = 0.25

    def eager():
        return x - dt * v[:, :C], y - dt * v[:, C:]

    ours = lambda: euler_step(x, y, v, dt)  # noqa: E731
    ex, ey = eager()
    gx, gy = ours()
    exact = torch.equal(ex, gx) and torch.equal(ey, gy)
    bytes_moved = (x.numel() * 2 * 4) * 2 + v.numel() * 4  # read x, y, v; write x, y (fp32)
    rows = []
    for name, fn in (("eager", eager), ("resflow_fast", ours)):
        med, p90 = kernel_time_ms(fn)
        rows.append({"variant": name, "median_ms": med, "p90_ms": p90, "gbs": bytes_moved / med / 1e6,
                     "pct_copy": 100 * bytes_moved / med / 1e6 / copy_gbs})
    for r in rows:
        r["speedup_vs_eager"] = rows[0]["median_ms"] / r["median_ms"]
    # the sampler's variant: bf16 v, in place, also writing the next bf16 channels-last input
    vb = v.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    nxt = torch.empty(N, C2, H, W, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    med, p90 = kernel_time_ms(lambda: euler_step(x, y, vb, dt, inplace=True, next_input=nxt))
    b2 = x.numel() * 4 * 4 + vb.numel() * 2 + nxt.numel() * 2
    rows.append({"variant": "resflow_fast in-place + next bf16 input", "median_ms": med, "p90_ms": p90,
                 "gbs": b2 / med / 1e6, "pct_copy": 100 * b2 / med / 1e6 / copy_gbs})
    return {"op": "euler_step", "shape": f"{N}x{C2}x{H}x{W} fp32", "rows": rows, "bitwise_equal_to_eager": exact}


def make_model(preset: str):
    """A reference U-Net of ``preset`` whose zero-initialised output convs get small random weights,
    so the velocity field (and any precision error in it) is not trivially zero."""
    from resflow_fast.reference.unet import build_unet

    torch.manual_seed(0)
    model = build_unet(preset)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d) and not m.weight.any():
                m.reset_parameters()
                m.weight.mul_(0.2)
    return model.cuda().eval()


def degraded_image(size: int) -> torch.Tensor:
    import numpy as np

    from resflow_fast.reference.data import to_model_range
    from resflow_fast.reference.degradations import dead_leaves, gaussian_noise

    rng = np.random.default_rng(0)
    img = gaussian_noise(dead_leaves(size, size, rng), rng, 25 / 255)
    return to_model_range(img)[None].cuda()


def forward_flops(model, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    z = torch.randn(1, model.config.in_channels, size, size, device="cuda")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(z, torch.tensor([0.5], device="cuda"))
    return float(counter.get_total_flops())


def bench_restore(preset: str, size: int, ceil: dict, meter: EnergyMeter, reps: int, variants: list[str]) -> dict:
    from resflow_fast.reference.metrics import psnr
    from resflow_fast.reference.sampler import euler_sample
    from resflow_fast.sampler import ResFlowSampler

    model = make_model(preset)
    lq = degraded_image(size)
    flops = 4 * forward_flops(model, size)
    result = {"preset": preset, "image": f"{size}x{size}", "tflop_per_restore": flops / 1e12, "rows": []}
    reference_out = None

    def run_variant(name, fn):
        nonlocal reference_out
        row = {"variant": name}
        try:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            out = fn()
            torch.cuda.synchronize()
            row["first_call_s"] = time.perf_counter() - t0
            if reference_out is None:
                reference_out = out.float()
            row["psnr_vs_ref"] = psnr(out.float(), reference_out)
            row.update(summarize(cuda_times_ms(fn, reps=reps, warmup=2)))
            row["peak_alloc_mib"] = torch.cuda.max_memory_allocated() / MiB
            row["peak_reserved_mib"] = torch.cuda.max_memory_reserved() / MiB
            row["images_per_s"] = 1000.0 / row["median_ms"]
            row["tflops"] = flops / row["median_ms"] / 1e9
            row["pct_matmul"] = 100 * row["tflops"] / ceil["matmul_tflops"]
            row["joules_per_image"] = energy_per_call_j(meter, fn)
        except Exception as e:  # recorded in the report; the other variants still run
            row["error"] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        result["rows"].append(row)
        return row

    run_variant("eager fp32 reference", lambda: euler_sample(model, lq, steps=4, seed=0))
    cl_model = None
    if "eager_bf16" in variants or "compile" in variants:
        import copy

        cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    lq_cl = lq.contiguous(memory_format=torch.channels_last)

    def autocast_sample(m):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return euler_sample(m, lq_cl, steps=4, seed=0)

    if "eager_bf16" in variants:
        run_variant("eager bf16 autocast, channels-last", lambda: autocast_sample(cl_model))
    if "compile" in variants:
        compiled = torch.compile(cl_model)
        run_variant("torch.compile default, bf16 channels-last", lambda: autocast_sample(compiled))
    fast = ResFlowSampler(model, steps=4)
    run_variant("resflow_fast", lambda: fast(lq, seed=0))
    graphed = ResFlowSampler(model, steps=4, cuda_graphs=True)
    row = run_variant("resflow_fast + CUDA graph", lambda: graphed(lq, seed=0))
    row["graph_pool_mib"] = sum(graphed.graph_memory_bytes().values()) / MiB
    rows = {r["variant"]: r for r in result["rows"] if "median_ms" in r}
    comp = rows.get("torch.compile default, bf16 channels-last")
    for key in ("resflow_fast", "resflow_fast + CUDA graph"):
        if comp and key in rows:
            rows[key]["ratio_to_compile"] = rows[key]["median_ms"] / comp["median_ms"]
    del model, cl_model, fast, graphed
    torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu-check"))
    parser.add_argument("--quick", action="store_true", help="fewer reps, 19.1M preset only")
    parser.add_argument("--budget-s", type=float, default=480.0, help="skip sections that would start after this")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("gpu_check: refusing to time under TRITON_INTERPRET=1")
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: needs a CUDA GPU")
    start = time.monotonic()
    report = Report(Path(args.out), argv)
    meter = EnergyMeter()
    report.put("environment", environment(meter))
    ceil = ceilings()
    report.put("ceilings", ceil)

    for shape in ((1, 128, 512, 512), (1, 64, 2048, 2048), (4, 256, 256, 256)):
        key = f"kernel:gn:{'x'.join(map(str, shape))}"
        try:
            report.put(key, bench_group_norm(shape, ceil["copy_gbs"]))
        except Exception as e:
            traceback.print_exc()
            report.put(key, {"op": "group_norm_modulate_silu", "shape": str(shape), "error": f"{type(e).__name__}: {e}"})
    try:
        report.put("kernel:euler:1x6x2048x2048", bench_euler((1, 6, 2048, 2048), ceil["copy_gbs"]))
    except Exception as e:
        traceback.print_exc()
        report.put("kernel:euler:1x6x2048x2048", {"op": "euler_step", "shape": "1x6x2048x2048", "error": str(e)})

    plan = [("bench19m", 1024), ("paper", 1024)] if not args.quick else [("bench19m", 1024)]
    reps = 5 if args.quick else 10
    for preset, size in plan:
        if time.monotonic() - start > args.budget_s:
            report.put(f"restore:{preset}:{size}", {"preset": preset, "image": f"{size}x{size}",
                                                    "rows": [{"variant": "skipped", "error": "time budget spent"}]})
            continue
        report.put(f"restore:{preset}:{size}",
                   bench_restore(preset, size, ceil, meter, reps, ["eager_bf16", "compile"]))
    report.put("elapsed_s", time.monotonic() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
