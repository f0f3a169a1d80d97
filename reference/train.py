"""The ResFlow trainer: velocity matching with Adam, EMA, gradient clipping and bf16 autocast where
the device computes bf16 in hardware (a GPU from Ampere on, or a CPU with AMX or AVX-512 BF16).

One process, or several under ``torchrun`` (DistributedDataParallel: nccl on GPUs, gloo on CPUs).

Every random draw of a step is a pure function of ``(seed, step, rank)``: the training pairs come
from stateless-indexed datasets (``reference.data``) and t, eps from a generator seeded per step.
Together with the saved optimizer, EMA and global RNG states this makes ``resume`` continue
exactly as if the run had never stopped (bitwise on CPU).
"""
from __future__ import annotations

import copy
import importlib.metadata
import json
import math
import os
import platform
import shutil
import signal
import threading
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .checkpoint import (CheckpointError, latest_checkpoint, list_checkpoints, load_model,
                         load_state_strict, load_training_checkpoint, save_training_checkpoint)
from .data import _check_fraction, build_dataset, validation_set
from .losses import velocity_matching_loss
from .metrics import psnr
from .sampler import euler_sample
from .schedule import Schedule
from .system import atomic_write_bytes, native_bf16, pick_device
from .unet import UNet, count_parameters, preset_config

RECORD_VERSION = 1


@dataclass
class TrainConfig:
    """Everything that defines a training run (recorded in every checkpoint)."""

    preset: str = "test"
    schedule: str = "entropy_preserving"
    beta: float = 10.0
    gamma: float = 1.75
    loss_weight_floor: float = 0.0     # max(lambda(t), floor); 0 is the paper's weight (Schedule.weight_floor)
    endpoint_fraction: float = 0.0     # share of samples trained at t = 1 instead of t ~ U(0, 1); 0 is the paper's
    image_channels: int = 3
    dropout: float = 0.0
    data: str | list[str] = "procedural"  # "procedural", a folder of clean images, a folder with lq/ and hq/,
                                          # or a list of these (interleaved sample by sample)
    degradation: str | None = "noise"  # see reference.degradations.parse_degradation; None for paired data
    crop: int = 64
    grey_fraction: float = 0.0         # share of samples made grey before degrading (reference.data)
    flat_fraction: float = 0.0         # share of clean crops replaced by their mean colour (reference.data)
    flat_grey_share: float = 0.0       # share of those flat crops given a uniform grey level instead
    file_weighting: str = "uniform"    # how image-folder files are picked: "uniform" or "area"
    batch_size: int = 8                # per process
    data_workers: int = 0              # processes preparing batches ahead of the step (0: in the loop)
    steps: int = 1000
    lr: float = 2e-4
    warmup_steps: int = 0
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    out_dir: str = "runs/resflow"
    checkpoint_every: int = 500
    keep_last: int = 3
    val_every: int = 500
    val_images: int = 4
    val_steps: int = 4
    max_minutes: float | None = None   # stop (and checkpoint) after this much wall time
    device: str = "auto"
    amp: bool = True                   # bf16 autocast where the device has bf16 arithmetic (system.native_bf16)
    compile: bool = False              # torch.compile the training forward and backward (see Trainer)
    init_from: str | None = None       # start a new run from these weights (fine-tuning); see Trainer

    def __post_init__(self) -> None:
        positive = ("image_channels", "crop", "batch_size", "steps", "checkpoint_every", "keep_last",
                    "val_every", "val_images", "val_steps")
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {v!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"TrainConfig.lr must be positive, got {self.lr!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"TrainConfig.ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"TrainConfig.grad_clip must be positive (or None), got {self.grad_clip!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"TrainConfig.warmup_steps must not be negative, got {self.warmup_steps!r}")
        if not isinstance(self.data_workers, int) or isinstance(self.data_workers, bool) or self.data_workers < 0:
            raise ValueError(f"TrainConfig.data_workers must be an integer >= 0, got {self.data_workers!r}")
        self.endpoint_fraction = _check_fraction("TrainConfig.endpoint_fraction", self.endpoint_fraction)
        if self.max_minutes is not None and not (self.max_minutes > 0 and math.isfinite(self.max_minutes)):
            raise ValueError(f"TrainConfig.max_minutes must be positive (or None: no time limit), got {self.max_minutes!r}")
        # validates the schedule name and constants
        Schedule(self.schedule, self.beta, self.gamma, self.loss_weight_floor)
        preset_config(self.preset, self.image_channels, dropout=self.dropout)  # validates the preset

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# ----------------------------------------------------------------------------------------------
# distributed helpers: plain torch.distributed, started by torchrun
# ----------------------------------------------------------------------------------------------
def _world() -> tuple[int, int, int]:
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))


def _package_version() -> str:
    try:
        return importlib.metadata.version("resflow-fast")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """A CPU generator whose stream depends only on (seed, step, rank)."""
    state = np.random.SeedSequence([seed, step, rank]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device="cpu").manual_seed(int(state))


class Trainer:
    """Trains a reference U-Net on ResFlow's velocity-matching objective.

    ``trainer.fit()`` runs to ``config.steps``; ``Trainer(config, resume=True)`` continues the
    latest checkpoint in ``config.out_dir`` (or ``resume=path`` a given one).
    """

    def __init__(self, config: TrainConfig, resume: bool | str | os.PathLike = False, progress: bool = True,
                 loss_fn: Callable = velocity_matching_loss, sample_fn: Callable = euler_sample):
        self.config = config
        # Injected so the fast package can train with its fused loss and validate with its fast
        # sampler without the reference importing upward; both keep the reference signatures.
        self.loss_fn, self.sample_fn = loss_fn, sample_fn
        self.rank, self.world_size, local_rank = _world()
        self.device = pick_device(config.device, local_rank)
        # fp32 weights, optimizer state and loss; the forward and backward in bf16 where that is fast
        self.autocast = config.amp and native_bf16(self.device)
        if config.compile and self.device.type == "cpu" and not any(
                name and shutil.which(name) for name in (os.environ.get("CXX"), "g++", "clang++", "c++")):
            # refused now, rather than as a compiler error from inside torch at the first step
            raise ValueError("TrainConfig.compile on the CPU needs a C++ compiler for torch.compile's generated "
                             "code (g++ or clang++ on PATH, or $CXX); install one, or train without --compile")
        if self.device.type == "cuda":
            # Triton launches on the current device, whatever device its tensors are on
            torch.cuda.set_device(self.device)
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
        self.progress = progress and self.rank == 0
        self.schedule = Schedule(config.schedule, config.beta, config.gamma, config.loss_weight_floor)
        self.unet_config = preset_config(config.preset, config.image_channels, self.schedule.has_auxiliary,
                                         dropout=config.dropout)

        torch.manual_seed(config.seed)  # identical initial weights on every rank
        self.model = UNet(self.unet_config).to(self.device)
        self.model.fp32_ends = self.autocast  # the image in and the velocity out in fp32 (UNet.forward)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.dataset = build_dataset(config.data, config.degradation, config.crop, config.seed,
                                     channels=config.image_channels, grey_fraction=config.grey_fraction,
                                     file_weighting=config.file_weighting, flat_fraction=config.flat_fraction,
                                     flat_grey_share=config.flat_grey_share)
        self.step = 0
        self.history: list[dict] = []
        self.net = (DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
                    if self.world_size > 1 else self.model)
        if config.compile:
            # Only the training network: self.model keeps its plain state_dict keys for checkpoints,
            # and validation runs the EMA copy eagerly. The batches have one shape, so this compiles
            # once (minutes on a small CPU) and then fuses the norms, activations and casts that the
            # eager model runs one by one (docs/MODEL_CARD.md has the measured speed-up).
            self.net = torch.compile(self.net, dynamic=False)
        self._val: tuple[torch.Tensor, torch.Tensor] | None = None
        if resume:
            path = latest_checkpoint(config.out_dir) if resume is True else Path(resume)
            if path is None:
                raise CheckpointError(f"--resume: no checkpoint found in {config.out_dir}")
            self.load(path)
            self._refuse_newer_checkpoints(path)
        else:
            self._refuse_existing_checkpoints()
            if config.init_from is not None:
                self.initialise_from(config.init_from)

    def _refuse_existing_checkpoints(self) -> None:
        """A new run (from scratch or ``init_from``) into a folder holding another run's checkpoints
        would overwrite its steps and let pruning delete this run's newest ones; refuse instead."""
        existing = list_checkpoints(self.config.out_dir)
        if existing:
            raise CheckpointError(
                f"{self.config.out_dir} already holds checkpoints of another run ({existing[-1].name} the latest); "
                f"pass --resume to continue it, or start this run in another --out-dir")

    def _refuse_newer_checkpoints(self, resumed: Path) -> None:
        """Resuming an older checkpoint into a run folder that holds newer ones would mix two
        histories: pruning keeps the newest steps (the abandoned ones) and deletes this run's, and a
        later ``--resume`` would pick the abandoned latest. Nothing is deleted; the user chooses."""
        newer = [p for p in list_checkpoints(self.config.out_dir) if int(p.name.split("-")[1]) > self.step]
        if newer:
            raise CheckpointError(
                f"--resume {resumed}: {self.config.out_dir} already holds later checkpoints "
                f"({', '.join(p.name for p in newer[:3])}{', ...' if len(newer) > 3 else ''}) that this run would "
                f"mix with its own; continue in another --out-dir, or move those folders away")

    def initialise_from(self, path: str | os.PathLike) -> None:
        """Fine-tuning: step 0, a fresh optimizer, model and EMA both set to ``path``'s (EMA) weights.

        Unlike resume, the objective may change (loss weight ``gamma``, data, degradations); the
        architecture and the schedule family may not, since the weights would not fit or would
        have learnt another path. A resumed run keeps its own weights and ignores this.
        """
        unet, schedule, _ = load_model(path, expected=self.unet_config)
        if (schedule.name, schedule.beta) != (self.schedule.name, self.schedule.beta):
            raise CheckpointError(f"{path}: weights were trained on schedule {schedule.name!r} with beta "
                                  f"{schedule.beta}, this run asks for {self.schedule.name!r} with beta {self.schedule.beta}")
        state = {k: v.to(self.device) for k, v in unet.state_dict().items()}
        self.model.load_state_dict(state)
        self.ema.load_state_dict(state)

    # -- one step -------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        if self.config.warmup_steps and step < self.config.warmup_steps:
            return self.config.lr * (step + 1) / self.config.warmup_steps
        return self.config.lr

    def batch_indices(self, step: int) -> list[int]:
        """Dataset indices of this rank's batch for ``step``: disjoint across steps and ranks."""
        B = self.config.batch_size
        first = (step * self.world_size + self.rank) * B
        return list(range(first, first + B))

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(hq, lq) of this rank for ``step``."""
        pairs = [self.dataset.sample(i) for i in self.batch_indices(step)]
        hq = torch.stack([p[0] for p in pairs]).to(self.device, non_blocking=True)
        lq = torch.stack([p[1] for p in pairs]).to(self.device, non_blocking=True)
        return hq, lq

    def _prefetched_batches(self):
        """Batches for steps ``self.step``, ``self.step + 1``, ... made by ``data_workers`` processes.

        Each worker builds whole batches from the same indices :meth:`batch` uses, so the data
        stream, and with it resume, is exactly that of the single-process loop; only the time
        spent decoding, cropping and degrading overlaps the step.
        """
        trainer = self

        class StepBatches(torch.utils.data.Sampler):
            def __iter__(self):
                for step in range(trainer.step, trainer.config.steps):
                    yield trainer.batch_indices(step)

            def __len__(self):
                return max(0, trainer.config.steps - trainer.step)

        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=StepBatches(), num_workers=self.config.data_workers,
            collate_fn=lambda pairs: (torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])),
            pin_memory=self.device.type == "cuda", persistent_workers=False, prefetch_factor=4)
        for hq, lq in loader:
            yield hq.to(self.device, non_blocking=True), lq.to(self.device, non_blocking=True)

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """One optimizer step (on ``batch``, or this step's batch made here); returns the loss,
        detached and left on the device (no sync)."""
        cfg = self.config
        hq, lq = batch if batch is not None else self.batch(self.step)
        gen = _step_generator(cfg.seed, self.step, self.rank)
        t = torch.rand(hq.shape[0], generator=gen).to(self.device)
        eps = torch.randn(hq.shape, generator=gen).to(self.device) if self.schedule.has_auxiliary else None
        if cfg.endpoint_fraction:
            # Drawn after eps, so t and eps of the other samples stay those of the paper's stream.
            at_endpoint = torch.rand(hq.shape[0], generator=gen) < cfg.endpoint_fraction
            t = torch.where(at_endpoint.to(self.device), torch.ones_like(t), t)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)

        self.model.train()
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            loss = self.loss_fn(self.net, hq, lq, t, eps, self.schedule)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.update_ema()
        self.step += 1
        return loss.detach()

    @torch.no_grad()
    def update_ema(self) -> None:
        # Warm-up of the decay ((1 + n) / (10 + n)) keeps short runs from averaging in the random init.
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        for e, p in zip(self.ema.parameters(), self.model.parameters()):
            e.lerp_(p, 1.0 - decay)
        for e, b in zip(self.ema.buffers(), self.model.buffers()):
            e.copy_(b)

    # -- validation -----------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict:
        """PSNR of the EMA model's restoration (through the sampler) and of the degraded input."""
        if self._val is None:
            hq, lq = validation_set(self.dataset, self.config.val_images, self.config.seed)
            self._val = (hq.to(self.device), lq.to(self.device))
        hq, lq = self._val
        restored = self.sample_fn(self.ema, lq, steps=self.config.val_steps, seed=self.config.seed, schedule=self.schedule)
        return {"step": self.step, "psnr_restored": psnr(restored, hq), "psnr_input": psnr(lq, hq)}

    # -- checkpoints ----------------------------------------------------------------------------
    def record(self) -> dict:
        return {
            "record_version": RECORD_VERSION,
            "package": "resflow-fast",
            "package_version": _package_version(),
            "torch_version": torch.__version__,
            "python": platform.python_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "step": self.step,
            "preset": self.config.preset,
            "unet": self.unet_config.to_dict(),
            "schedule": self.schedule.to_dict(),
            "train": asdict(self.config),
            "data": self.dataset.describe(),
            "seed": self.config.seed,
            "world_size": self.world_size,
            "autocast": "bf16" if self.autocast else None,  # what ran, which config.amp alone does not say
            "parameters": count_parameters(self.model),
            "history": self.history[-20:],  # the full history is in train_state.pt and history.json
        }

    def train_state(self) -> dict:
        state = {"step": self.step, "optimizer": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                 "history": self.history}
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def save(self) -> Path | None:
        """Rank 0 writes the checkpoint; the others wait for it."""
        path = None
        if self.rank == 0:
            path = save_training_checkpoint(self.config.out_dir, self.step, self.model.state_dict(),
                                            self.ema.state_dict(), self.train_state(), self.record(),
                                            keep_last=self.config.keep_last)
        if self.world_size > 1:
            dist.barrier()
        return path

    def load(self, path: str | os.PathLike) -> None:
        ckpt = load_training_checkpoint(path)
        record = ckpt["record"]
        saved = TrainConfig.from_dict(record.get("train", {}))
        # Only settings that change the model or its objective must match; the step budget,
        # logging and output settings may change on resume.
        for name in ("preset", "schedule", "beta", "gamma", "loss_weight_floor", "image_channels", "dropout"):
            if getattr(saved, name) != getattr(self.config, name):
                raise CheckpointError(f"{path}: checkpoint was trained with {name}={getattr(saved, name)!r}, "
                                      f"this run asks for {name}={getattr(self.config, name)!r}")
        load_state_strict(self.model, ckpt["model"], str(path))
        load_state_strict(self.ema, ckpt["ema"], str(path))
        state = ckpt["train_state"]
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step = int(state["step"])
        self.history = list(state.get("history", record.get("history", [])))
        self._warn_if_stream_changes(saved, record, path)

    def _warn_if_stream_changes(self, saved: "TrainConfig", record: dict, path) -> None:
        """Resume continues exactly only with the same data stream; changing it is allowed (to
        fine-tune on other data, say) but said out loud."""
        changed = [f"{n}: {getattr(saved, n)!r} -> {getattr(self.config, n)!r}"
                   for n in ("seed", "batch_size", "crop", "data", "degradation", "grey_fraction", "flat_fraction",
                             "flat_grey_share", "file_weighting", "endpoint_fraction") if getattr(saved, n) != getattr(self.config, n)]
        if record.get("world_size", self.world_size) != self.world_size:
            changed.append(f"world_size: {record.get('world_size')} -> {self.world_size}")
        if changed and self.rank == 0:
            warnings.warn(f"resuming {path} with a different data stream ({'; '.join(changed)}): "
                          f"training continues, but not as the original run would have", stacklevel=3)

    # -- the loop -------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to ``config.steps`` (or ``max_minutes``, or a SIGTERM); checkpoint and validate on schedule.

        Returns the final step, checkpoint and validation, and the run's throughput in samples per
        second (all ranks; validation and checkpoint time included)."""
        cfg = self.config
        start = time.monotonic()
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, unit="step", dynamic_ncols=True,
                       desc="train (bf16 autocast)" if self.autocast else "train (fp32)")
        last_path, saved_step, loss = None, None, torch.tensor(float("nan"))
        batches = self._prefetched_batches() if cfg.data_workers > 0 else None
        first_step = self.step
        self.stop_requested = False
        restore_handler = self._stop_on_sigterm()
        try:
            while self.step < cfg.steps:
                loss = self.train_step(next(batches) if batches is not None else None)
                out_of_time = self.stop_requested and self.world_size == 1
                if self.step % 10 == 0 and (cfg.max_minutes is not None or self.world_size > 1):
                    out_of_time = self.stop_requested or (
                        cfg.max_minutes is not None and time.monotonic() - start > 60 * cfg.max_minutes)
                    if self.world_size > 1:
                        # every rank must stop at the same step, or DDP hangs in the next all-reduce
                        flag = torch.tensor([float(out_of_time)], device=self.device)
                        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                        out_of_time = bool(flag.item())
                if bar is not None:
                    bar.update(1)
                    if self.step % 10 == 0:  # reading the loss syncs with the GPU: not every step
                        bar.set_postfix(loss=f"{float(loss):.4f}")
                if self.step % cfg.val_every == 0 and self.rank == 0:
                    self.history.append(dict(self.validate(), loss=float(loss)))
                    if bar is not None:
                        h = self.history[-1]
                        bar.write(f"step {h['step']}: val PSNR {h['psnr_restored']:.2f} dB (input {h['psnr_input']:.2f} dB)")
                if self.step % cfg.checkpoint_every == 0:
                    last_path, saved_step = self.save(), self.step
                if out_of_time:
                    break
        except BaseException:
            restore_handler()
            raise
        finally:
            if batches is not None:
                batches.close()  # stops the workers
            if bar is not None:
                bar.close()
        elapsed = time.monotonic() - start
        try:  # a second SIGTERM during the last validation and save changes nothing: they finish
            if self.rank == 0 and (not self.history or self.history[-1]["step"] != self.step):
                self.history.append(dict(self.validate(), loss=float(loss)))
            # the same decision on every rank: save() holds a barrier all of them must reach
            if saved_step != self.step:
                last_path, saved_step = self.save(), self.step
        finally:
            restore_handler()
        samples = (self.step - first_step) * cfg.batch_size * self.world_size
        return {"step": self.step, "checkpoint": str(last_path) if last_path else None,
                "samples_per_second": samples / elapsed if elapsed > 0 else None,
                "validation": self.history[-1] if self.history else None}

    def _stop_on_sigterm(self) -> Callable[[], None]:
        """Make SIGTERM (``kill PID``, a scheduler's stop) end the run as ``max_minutes`` does: after
        the current step (under torchrun, at the next multiple of 10 steps, where the ranks agree on
        it), with a validation and a checkpoint of that step, so nothing trained is lost.
        Returns the function that puts the previous handler back. Only the main thread may set
        signal handlers; elsewhere (a notebook's worker thread) SIGTERM keeps its usual meaning."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def request_stop(signum, frame):
            self.stop_requested = True

        previous = signal.signal(signal.SIGTERM, request_stop)
        if previous is None:  # a handler set outside Python: the closest Python can put back
            previous = signal.SIG_DFL
        return lambda: signal.signal(signal.SIGTERM, previous)

    def close(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def train(config: TrainConfig, resume: bool | str = False, progress: bool = True, **hooks) -> dict:
    """Train (or resume) a model; returns the final step, checkpoint path and validation.
    ``hooks`` are passed to :class:`Trainer` (``loss_fn``, ``sample_fn``)."""
    trainer = Trainer(config, resume=resume, progress=progress, **hooks)
    try:
        result = trainer.fit()
    finally:
        trainer.close()
    if trainer.rank == 0:
        atomic_write_bytes(Path(config.out_dir) / "history.json", (json.dumps(trainer.history, indent=2) + "\n").encode())
    return result
