"""Tests of reference/train.py: learning, exact resume, DDP under torchrun, bad input."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image

from resflow_fast.reference.checkpoint import CheckpointError, latest_checkpoint, load_model
from resflow_fast.reference.data import DataError, build_dataset, validation_set
from resflow_fast.reference.metrics import psnr
from resflow_fast.reference.sampler import euler_sample
from resflow_fast.reference import train as train_module
from resflow_fast.reference.losses import velocity_matching_loss
from resflow_fast.reference.train import TrainConfig, Trainer, train


def _tiny(tmp_path, **kw):
    base = dict(preset="test", crop=16, batch_size=2, steps=6, lr=1e-3, out_dir=str(tmp_path / "run"),
                checkpoint_every=1000, val_every=1000, val_images=1, degradation="noise:25", dropout=0.1)
    base.update(kw)
    return TrainConfig(**base)


def test_learning_works_on_procedural_noise(tmp_path):
    """A test-sized model, a few hundred steps on dead-leaves crops with sigma 25/255 noise,
    restores held-out images (another seed, another size) at least 3 dB above the noisy input.
    (16-px crops keep this, the suite's longest test, to about a minute of CPU; 3.4 dB measured.)
    In fp32 on every machine: the threshold comes from fp32 runs (3.0-3.4 dB over seeds 0-2), and
    this short, small-crop run gains less under bf16 autocast (2.4-2.7 dB), which a CPU with AMX
    would otherwise use; bf16 training of the real model is compared in docs/MODEL_CARD.md."""
    config = TrainConfig(preset="test", crop=16, batch_size=8, steps=600, lr=2e-3, warmup_steps=20,
                         degradation="noise:25", out_dir=str(tmp_path / "run"), checkpoint_every=10**6,
                         val_every=10**6, seed=0, amp=False)
    result = train(config, progress=False)
    model, schedule, _ = load_model(result["checkpoint"])  # the EMA weights, as restore would use them
    held_out = build_dataset("procedural", "noise:25", 64, seed=12345)
    hq, lq = validation_set(held_out, 4, seed=12345)
    restored = euler_sample(model, lq, steps=4, seed=0, schedule=schedule)
    gain = psnr(restored, hq) - psnr(lq, hq)
    assert gain >= 3.0, f"restoration gained only {gain:.2f} dB over the noisy input"


def _weights(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_resume_is_bitwise_exact(tmp_path):
    straight = Trainer(_tiny(tmp_path / "a", steps=6), progress=False)
    straight.fit()

    first = Trainer(_tiny(tmp_path / "b", steps=3), progress=False)
    first.fit()  # saves step 3 on the way out
    assert latest_checkpoint(tmp_path / "b" / "run").name == "step-00000003"
    torch.manual_seed(999)  # whatever the process did in between must not matter
    second = Trainer(_tiny(tmp_path / "b", steps=6), resume=True, progress=False)
    assert second.step == 3
    second.fit()

    for name in ("model", "ema"):
        a, b = _weights(getattr(straight, name)), _weights(getattr(second, name))
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} weights differ after resume"
    sa, sb = straight.optimizer.state_dict()["state"], second.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)


def test_checkpoint_records_config_and_provenance(tmp_path):
    result = train(_tiny(tmp_path, steps=2), progress=False)
    _, _, record = load_model(result["checkpoint"])
    assert record["step"] == 2 and record["preset"] == "test" and record["seed"] == 0
    assert record["schedule"]["name"] == "entropy_preserving"
    assert record["data"]["kind"] and record["train"]["degradation"] == "noise:25"
    assert json.loads((tmp_path / "run" / "history.json").read_text())[-1]["step"] == 2


def test_max_minutes_stops_and_checkpoints(tmp_path):
    # the clock is read every 10 steps (under DDP that read is an all-reduce)
    result = train(_tiny(tmp_path, steps=10**6, max_minutes=1e-9), progress=False)
    assert result["step"] == 10 and latest_checkpoint(tmp_path / "run").name == "step-00000010"


def test_sigterm_ends_the_run_after_the_step_with_its_checkpoint(tmp_path):
    steps_begun = []

    def loss_then_sigterm(net, hq, lq, t, eps, schedule):
        steps_begun.append(len(steps_begun) + 1)
        if len(steps_begun) == 3:  # arrives in the middle of step 3: the step is finished, not lost
            os.kill(os.getpid(), signal.SIGTERM)
        return velocity_matching_loss(net, hq, lq, t, eps, schedule)

    before = signal.getsignal(signal.SIGTERM)
    result = train(_tiny(tmp_path, steps=20), progress=False, loss_fn=loss_then_sigterm)
    assert result["step"] == 3 and latest_checkpoint(tmp_path / "run").name == "step-00000003"
    assert json.loads((tmp_path / "run" / "history.json").read_text())[-1]["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is before  # the process's own handling is back


@pytest.mark.parametrize("amp, native, inner", [(True, True, torch.bfloat16), (True, False, torch.float32),
                                                (False, True, torch.float32)])
def test_bf16_autocast_where_the_device_has_bf16_arithmetic_with_fp32_ends(tmp_path, monkeypatch, amp, native, inner):
    monkeypatch.setattr(train_module, "native_bf16", lambda device: native)
    trainer = Trainer(_tiny(tmp_path, amp=amp), progress=False)
    assert trainer.autocast is (amp and native)
    seen = {}
    for name in ("input_conv", "down.0.res.conv1", "out_conv"):
        trainer.model.get_submodule(name).register_forward_hook(
            lambda module, args, output, name=name: seen.update({name: output.dtype}))  # None: output unchanged
    loss = trainer.train_step()
    assert seen == {"input_conv": torch.float32, "down.0.res.conv1": inner, "out_conv": torch.float32}
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # weights and Adam stay fp32
    assert trainer.record()["autocast"] == ("bf16" if inner == torch.bfloat16 else None)  # what really ran


def test_compile_trains_through_the_compiled_network_and_checkpoints_plain_weights(tmp_path, monkeypatch):
    compiled = []
    real_compile = torch.compile

    def eager_compile(module, **kwargs):  # the trainer's wiring, without minutes of C++ compilation
        compiled.append((module, kwargs))
        return real_compile(module, backend="eager", **kwargs)

    monkeypatch.setattr(torch, "compile", eager_compile)
    trainer = Trainer(_tiny(tmp_path, steps=2, compile=True), progress=False)
    assert compiled == [(trainer.model, {"dynamic": False})] and trainer.net is not trainer.model
    result = trainer.fit()
    model, _, record = load_model(result["checkpoint"])  # the UNet's own keys, no compile wrapper's
    assert record["train"]["compile"] is True and result["step"] == 2
    weights = {k: v for k, v in trainer.ema.state_dict().items()}
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_compile_on_a_cpu_without_a_cpp_compiler_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(train_module.shutil, "which", lambda name: None)
    with pytest.raises(ValueError, match="needs a C\\+\\+ compiler"):
        Trainer(_tiny(tmp_path, compile=True, device="cpu"), progress=False)
    Trainer(_tiny(tmp_path, device="cpu"), progress=False)  # uncompiled training needs none


def test_resume_refuses_another_model(tmp_path):
    train(_tiny(tmp_path, steps=1), progress=False)
    with pytest.raises(CheckpointError, match="trained with preset='test', this run asks for preset='default'"):
        Trainer(_tiny(tmp_path, preset="default", steps=2), resume=True, progress=False)
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        Trainer(_tiny(tmp_path / "empty", steps=2), resume=True, progress=False)


def test_loss_weight_floor_grey_flat_and_weighting_reach_the_run(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (24, 20), (200, 30, 90)).save(photos / "a.png")
    config = _tiny(tmp_path, steps=1, loss_weight_floor=0.2, data=str(photos), grey_fraction=0.5,
                   file_weighting="area", flat_fraction=0.1, flat_grey_share=0.5)
    trainer = Trainer(config, progress=False)
    assert trainer.schedule.weight_floor == 0.2
    assert trainer.dataset.grey_fraction == 0.5 and trainer.dataset.file_weighting == "area"
    assert trainer.dataset.flat_fraction == 0.1 and trainer.dataset.flat_grey_share == 0.5
    trainer.fit()
    with pytest.raises(CheckpointError, match="loss_weight_floor=0.2, this run asks for loss_weight_floor=0.0"):
        Trainer(_tiny(tmp_path, steps=2, data=str(photos), grey_fraction=0.5, file_weighting="area"),
                resume=True, progress=False)
    with pytest.raises(ValueError, match="weight_floor must be in"):
        _tiny(tmp_path, loss_weight_floor=2.0)


def _times_drawn(trainer, steps):
    """The t of every sample of the trainer's next ``steps`` steps, and the eps of the first."""
    seen = []

    def spy(net, hq, lq, t, eps, schedule):
        seen.append((t.clone(), eps.clone()))
        return velocity_matching_loss(net, hq, lq, t, eps, schedule)

    trainer.loss_fn = spy
    for _ in range(steps):
        trainer.train_step()
    return torch.cat([t for t, _ in seen]), seen[0][1]


@pytest.mark.parametrize("fraction", [0.5, 1.0])
def test_endpoint_fraction_trains_that_share_at_t_1_and_keeps_the_rest_of_the_stream(tmp_path, fraction):
    paper_t, paper_eps = _times_drawn(Trainer(_tiny(tmp_path / "paper", batch_size=8), progress=False), 8)
    t, eps = _times_drawn(Trainer(_tiny(tmp_path / "end", batch_size=8, endpoint_fraction=fraction),
                                  progress=False), 8)
    at_one = t == 1.0
    assert not (paper_t == 1.0).any()
    if fraction == 1.0:
        assert at_one.all()
    else:  # 64 draws: a share far from one half would mean the mask is not a fair coin
        assert 16 <= int(at_one.sum()) <= 48
    # the other samples keep the t and eps the paper's sampling draws for them
    torch.testing.assert_close(t[~at_one], paper_t[~at_one], rtol=0, atol=0)
    torch.testing.assert_close(eps, paper_eps, rtol=0, atol=0)


def test_endpoint_fraction_is_recorded_and_checked(tmp_path):
    trainer = Trainer(_tiny(tmp_path, steps=1, endpoint_fraction=0.25), progress=False)
    trainer.fit()
    record = json.loads((latest_checkpoint(tmp_path / "run") / "record.json").read_text())
    assert record["train"]["endpoint_fraction"] == 0.25
    with pytest.warns(UserWarning, match=r"endpoint_fraction: 0.25 -> 0.0"):
        Trainer(_tiny(tmp_path, steps=2), resume=True, progress=False)
    for bad in (-0.1, 1.5, float("nan"), True, "half"):
        with pytest.raises(ValueError, match=r"endpoint_fraction must be a number in \[0, 1\]"):
            _tiny(tmp_path, endpoint_fraction=bad)


def test_bad_configs_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown U-Net preset 'huge'"):
        _tiny(tmp_path, preset="huge")
    with pytest.raises(ValueError, match="unknown schedule 'cosine'"):
        _tiny(tmp_path, schedule="cosine")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        _tiny(tmp_path, batch_size=0)


def test_empty_data_folder_is_a_clear_error(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(DataError, match="photos"):
        Trainer(_tiny(tmp_path, data=str(tmp_path / "photos")), progress=False)
    assert not (tmp_path / "run").exists(), "nothing may be written for a run that cannot start"


def test_paired_data_of_different_sizes_is_a_clear_error(tmp_path):
    for sub, size in (("hq", (20, 20)), ("lq", (24, 20))):
        (tmp_path / "pairs" / sub).mkdir(parents=True)
        Image.new("RGB", size).save(tmp_path / "pairs" / sub / "a.png")
    trainer = Trainer(_tiny(tmp_path, data=str(tmp_path / "pairs"), degradation=None), progress=False)
    with pytest.raises(DataError, match="a.png"):
        trainer.train_step()


def test_x_only_and_ablation_schedules_train(tmp_path):
    for name in ("x_only", "linear", "constant"):
        result = train(_tiny(tmp_path / name, schedule=name, steps=1), progress=False)
        model, schedule, _ = load_model(result["checkpoint"])
        assert schedule.name == name
        assert model.config.in_channels == (3 if name == "x_only" else 6)


DDP_SCRIPT = textwrap.dedent("""
    import hashlib, os, sys, torch
    from resflow_fast.reference.train import TrainConfig, Trainer
    out = sys.argv[1]
    cfg = TrainConfig(preset="test", crop=16, batch_size=2, steps=3, lr=1e-3, out_dir=out + "/run",
                      checkpoint_every=3, val_every=1000, val_images=1, degradation="noise:25", device="cpu")
    trainer = Trainer(cfg, progress=False)
    trainer.fit()
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in trainer.model.state_dict().values())).hexdigest()
    with open(f"{out}/rank{trainer.rank}.txt", "w") as f:
        f.write(f"{trainer.world_size} {trainer.step} {digest}")
    trainer.close()
""")


def test_torchrun_two_processes_end_with_identical_weights(tmp_path):
    """Also the last step is a checkpoint step: every rank must agree not to save twice."""
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [(tmp_path / f"rank{r}.txt").read_text().split() for r in (0, 1)]
    assert ranks[0][:2] == ["2", "3"] and ranks[1][:2] == ["2", "3"]
    assert ranks[0][2] == ranks[1][2], "ranks ended with different weights"
    assert latest_checkpoint(tmp_path / "run").name == "step-00000003"


def test_resume_history_is_complete(tmp_path):
    train(_tiny(tmp_path, steps=3, val_every=1), progress=False)
    result = train(_tiny(tmp_path, steps=5, val_every=1), resume=True, progress=False)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5] and result["step"] == 5


def test_resume_with_another_data_stream_warns(tmp_path):
    train(_tiny(tmp_path, steps=1), progress=False)
    with pytest.warns(UserWarning, match="different data stream.*seed: 0 -> 1"):
        Trainer(_tiny(tmp_path, steps=2, seed=1), resume=True, progress=False)


@pytest.mark.parametrize("device, match", [("gpu", "unknown device 'gpu'"), ("cuda:0", "CUDA is not available")])
def test_bad_devices_are_clear_errors(tmp_path, device, match):
    if torch.cuda.is_available() and device == "cuda:0":
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match=match):
        Trainer(_tiny(tmp_path, device=device), progress=False)


def test_init_from_fine_tunes_from_weights_with_another_objective(tmp_path):
    source = train(_tiny(tmp_path / "source", steps=2), progress=False)["checkpoint"]
    expected, _, _ = load_model(source)  # the EMA weights
    # another loss weight and another degradation are allowed: that is what fine-tuning is for
    tuned = Trainer(_tiny(tmp_path / "tuned", steps=2, gamma=0.0, degradation="jpeg:20", init_from=str(source)),
                    progress=False)
    assert tuned.step == 0
    for module in (tuned.model, tuned.ema):
        got = module.state_dict()
        assert all(torch.equal(got[k], v) for k, v in expected.state_dict().items())
    result = tuned.fit()
    _, _, record = load_model(result["checkpoint"])
    assert record["train"]["init_from"] == str(source) and record["step"] == 2


def test_init_from_refuses_other_architectures_and_schedules(tmp_path):
    source = str(train(_tiny(tmp_path / "source", steps=1), progress=False)["checkpoint"])
    with pytest.raises(CheckpointError, match="expected"):
        Trainer(_tiny(tmp_path / "a", preset="default", init_from=source), progress=False)
    with pytest.raises(CheckpointError, match="schedule 'entropy_preserving'"):
        Trainer(_tiny(tmp_path / "b", schedule="linear", init_from=source), progress=False)
    with pytest.raises(CheckpointError):
        Trainer(_tiny(tmp_path / "c", init_from=str(tmp_path / "missing")), progress=False)


def test_resuming_an_older_checkpoint_among_newer_ones_is_refused(tmp_path):
    """Pruning keeps the newest steps, so the abandoned later checkpoints would survive and this
    run's would be deleted; the trainer refuses instead, and deletes nothing."""
    train(_tiny(tmp_path, steps=4, checkpoint_every=2, keep_last=5), progress=False)
    run = tmp_path / "run"
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(CheckpointError, match="already holds later checkpoints .step-00000004"):
        Trainer(_tiny(tmp_path, steps=6, keep_last=5), resume=str(run / "step-00000002"), progress=False)
    assert sorted(p.name for p in run.iterdir()) == before
    # into a fresh folder it continues from step 2
    other = Trainer(_tiny(tmp_path, steps=6, out_dir=str(tmp_path / "branch")), resume=str(run / "step-00000002"),
                    progress=False)
    assert other.step == 2


@pytest.mark.parametrize("init", [False, True])
def test_a_new_run_into_a_folder_with_checkpoints_is_refused(tmp_path, init):
    """Fresh and fine-tuning runs would overwrite the old run's steps and prune their own."""
    source = train(_tiny(tmp_path, steps=2), progress=False)["checkpoint"]
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    with pytest.raises(CheckpointError, match="already holds checkpoints of another run .step-00000002"):
        Trainer(_tiny(tmp_path, steps=4, init_from=str(source) if init else None), progress=False)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before


def test_data_workers_give_the_same_run_as_the_loop(tmp_path):
    looped = train(_tiny(tmp_path / "loop", steps=3, dropout=0.0), progress=False)
    workers = train(_tiny(tmp_path / "workers", steps=3, dropout=0.0, data_workers=2), progress=False)
    a, _, _ = load_model(looped["checkpoint"])
    b, _, _ = load_model(workers["checkpoint"])
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert workers["samples_per_second"] > 0
    with pytest.raises(ValueError, match="data_workers"):
        _tiny(tmp_path, data_workers=-1)
