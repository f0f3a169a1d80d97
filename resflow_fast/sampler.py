"""``ResFlowSampler``: the ResFlow sampler over the fast U-Net and the fused Euler step.

Same algorithm, arguments and results (up to the activation dtype) as the reference
:func:`resflow_fast.reference.sampler.euler_sample`, and the same loop: the reference
:func:`~resflow_fast.reference.sampler.sample_euler` over the same grid and steps, with a step of
its own. On a GPU each step is one fast U-Net forward (bf16, channels-last, fused norms) whose
output goes through the fused Euler update, which moves the fp32 state x, y in place and writes the
next bf16 network input in the same pass (:meth:`FastUNet.step`; with fused convs on, the output
conv takes that step in its epilogue, :func:`fused_conv3x3_euler`). Optionally the whole restore
is captured as one CUDA graph per input shape, replayed without launching its kernels one by one.

On the CPU it falls back to the reference sampler (the same results, in fp32), so it is a
drop-in for validation inside any training loop.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .conv_dispatch import ConvDispatch
from .fast_unet import FastUNet
from .reference.sampler import Y_MODES, EulerStep, State, auxiliary_noise, euler_sample, sample_euler, start_state
from .reference.schedule import Schedule, time_grid
from .reference.unet import UNet, crop_to, pad_to_multiple


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that have it, else fp16 on CUDA, fp32 on the CPU."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


@dataclass
class _Graph:
    graph: "torch.cuda.CUDAGraph"
    lq: torch.Tensor
    eps: torch.Tensor | None
    out: torch.Tensor
    memory_bytes: int
    parameter_addresses: tuple[int, ...]


class ResFlowSampler:
    """Fast ResFlow sampler over a reference :class:`UNet` (its parameters are used in place).

    Args:
        model: the reference U-Net; a model in training may be passed, its current weights are used
            (the fast path's cast weights are kept between calls and made again for parameters
            that changed; see :meth:`clear_weight_cache`).
        schedule: the schedule it was trained with (default: entropy-preserving).
        steps: Euler steps (4 in the paper).
        dtype: activation dtype of the fast path; None picks :func:`default_dtype`.
        y_mode: "joint" (y moved by the network) or "exact" (y moved along the schedule).
        cuda_graphs: capture the whole restore as one CUDA graph per input shape (GPU only).
        fast: None = the fast path on CUDA tensors, the reference elsewhere; True forces the fast
            path (on the CPU it runs the kernels' twins, or the Triton interpreter when enabled).
        fused_conv: the fast path's fused-conv policy, "off", "on" or "auto"
            (:mod:`resflow_fast.conv_dispatch`), or a ``ConvDispatch``; None: ``$RESFLOW_FUSED_CONV``,
            else "off". One dispatcher serves all calls of this sampler, so "auto" measures a shape once.
        time_power: the time grid ``t_k = (1 - k/N) ** time_power`` (1: the paper's uniform grid).
    """

    def __init__(self, model: UNet, schedule: Schedule | None = None, steps: int = 4, dtype: torch.dtype | None = None,
                 y_mode: str = "joint", cuda_graphs: bool = False, fast: bool | None = None,
                 fused_conv: str | ConvDispatch | None = None, time_power: float = 1.0):
        if not isinstance(model, UNet):
            raise TypeError(f"ResFlowSampler needs a reference UNet, got {type(model).__name__}")
        if y_mode not in Y_MODES:
            raise ValueError(f"unknown y_mode {y_mode!r}; choose one of {', '.join(Y_MODES)}")
        self.model = model
        self.schedule = schedule or Schedule()
        self.grid = time_grid(steps, time_power)
        self.steps = steps
        self.time_power = time_power
        self.dtype = dtype
        self.y_mode = y_mode
        self.cuda_graphs = cuda_graphs
        self.fast = fast
        # one dispatcher for every call: "auto" measures a shape once, and a bad policy fails here
        self.conv_dispatch = (fused_conv if isinstance(fused_conv, ConvDispatch)
                              else ConvDispatch(fused_conv))
        self._graphs: dict[tuple, _Graph] = {}
        self._time_tensors: dict[str, torch.Tensor] = {}
        # one fast U-Net per activation dtype, kept across calls: its cast weights are reused
        # while the model's parameters are unchanged and recast when they change
        self._nets: dict[torch.dtype, FastUNet] = {}

    # -- public ----------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, lq: torch.Tensor, seed: int = 0, eps: torch.Tensor | None = None, clamp: bool = True) -> torch.Tensor:
        """Restore ``lq`` (B, C, H, W) in [-1, 1]; returns fp32 x at t = 0 on lq's device."""
        if lq.ndim != 4:
            raise ValueError(f"lq must be (B, C, H, W), got shape {tuple(lq.shape)}")
        expected = self.model.config.in_channels // (2 if self.schedule.has_auxiliary else 1)
        if lq.shape[1] != expected:
            raise ValueError(f"lq has {lq.shape[1]} channels, the model restores {expected}-channel images")
        use_fast = self.fast if self.fast is not None else lq.is_cuda
        if not use_fast:
            return euler_sample(self.model, lq, steps=self.steps, seed=seed, schedule=self.schedule,
                                y_mode=self.y_mode, eps=eps, clamp=clamp, time_power=self.time_power)
        if self.schedule.has_auxiliary:
            eps = auxiliary_noise(tuple(lq.shape), seed) if eps is None else eps
            if eps.shape != lq.shape:
                raise ValueError(f"eps has shape {tuple(eps.shape)}, expected {tuple(lq.shape)}")
            eps = eps.to(lq.device, torch.float32)
        if self.cuda_graphs and lq.is_cuda:
            with torch.cuda.device(lq.device):
                return self._replay(lq, eps, clamp)
        return self._restore(lq.float(), eps, clamp)

    def graph_memory_bytes(self) -> dict[tuple, int]:
        """GPU memory held by each captured graph's pool, keyed by (shape, dtype, clamp)."""
        return {k: g.memory_bytes for k, g in self._graphs.items()}

    def clear_graphs(self) -> None:
        self._graphs.clear()

    def clear_weight_cache(self) -> None:
        """Make the next call cast every conv weight again. In-place updates (an optimizer step,
        ``load_state_dict``) are seen without it; writes through ``.data``, which bypass the
        parameters' version counters, are not."""
        for net in self._nets.values():
            net.clear_weight_cache()

    # -- the fast path ---------------------------------------------------------------------------
    def _times(self, device: torch.device) -> torch.Tensor:
        """The step times t_0..t_{N-1} on ``device``, made once (never inside a graph capture)."""
        key = str(device)
        if key not in self._time_tensors:
            self._time_tensors[key] = torch.tensor(self.grid[:-1], dtype=torch.float32, device=device)
        return self._time_tensors[key]

    def _restore(self, lq: torch.Tensor, eps: torch.Tensor | None, clamp: bool) -> torch.Tensor:
        dtype = self.dtype or default_dtype(lq.device)
        net = self._nets.get(dtype)
        if net is None:
            net = self._nets[dtype] = FastUNet(self.model, dtype, fused_conv=self.conv_dispatch)
        # The fp32 state is kept channels-last like v and the network input: the fused Euler step
        # then streams all of them in one index order (a state in another layout than the
        # network's tensors would make one side's accesses strided). It is updated in place, so x
        # is a copy (lq.float() may be the caller's own tensor).
        cl = torch.channels_last
        x, y = start_state(lq, eps, self.schedule, self.grid[0])
        x, size = pad_to_multiple(x, net.multiple)
        x = x.clone(memory_format=cl)
        y = pad_to_multiple(y, net.multiple)[0].contiguous(memory_format=cl) if y is not None else None
        conditioning = net.prepare(self._times(lq.device), lq.shape[0])
        # the network input, rewritten by every Euler step: a tensor of its own, never the state
        z_in = (torch.cat([x, y], dim=1) if y is not None else x.clone()).to(dtype=dtype, memory_format=cl)

        def fused_step(state: State, s: EulerStep) -> State:
            # v = U-Net(z_in), then x, y move in place and z_in becomes the next input (the output
            # conv and this update are one kernel where the fused-conv dispatch says so)
            net.step(z_in, conditioning[s.index], *state, s.dt, s.y_scale)
            return state

        x, _ = sample_euler(None, (x, y), self.grid, schedule=self.schedule, y_mode=self.y_mode, step=fused_step)
        x = crop_to(x, size)
        return (x.clamp(-1.0, 1.0) if clamp else x).contiguous()

    def _parameter_addresses(self) -> tuple[int, ...]:
        return tuple(p.data_ptr() for p in self.model.parameters())

    def _replay(self, lq: torch.Tensor, eps: torch.Tensor | None, clamp: bool) -> torch.Tensor:
        key = (tuple(lq.shape), str(lq.device), clamp, self.dtype)
        g = self._graphs.get(key)
        # A graph reads the parameters at the addresses they had at capture: in-place optimizer
        # updates are seen, but a model moved or reloaded elsewhere needs a new capture.
        if g is not None and g.parameter_addresses != self._parameter_addresses():
            g = None
        if g is None:
            g = self._capture(lq, eps, clamp)
            self._graphs[key] = g
        g.lq.copy_(lq)
        if eps is not None:
            g.eps.copy_(eps)
        g.graph.replay()
        return g.out.clone()

    def _capture(self, lq: torch.Tensor, eps: torch.Tensor | None, clamp: bool) -> _Graph:
        static_lq = lq.detach().float().clone()
        static_eps = eps.detach().clone() if eps is not None else None
        # Warm up on a side stream (autotuning, cuDNN plan selection, allocator) before capture.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._restore(static_lq, static_eps, clamp)
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        before = torch.cuda.memory_reserved(lq.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self._restore(static_lq, static_eps, clamp)
        torch.cuda.synchronize()
        return _Graph(graph, static_lq, static_eps, out, torch.cuda.memory_reserved(lq.device) - before,
                      self._parameter_addresses())
