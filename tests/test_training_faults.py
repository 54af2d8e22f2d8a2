"""Fault tests of medgen.training (chapter 60): kill, corruption, NaN, full disk.

- SIGKILL a training subprocess mid-run, resume it: every logged loss equals the uninterrupted run's exactly (CPU).
- A truncated or bit-flipped checkpoint raises a clear CheckpointError; the previous one loads and a resume uses it.
- A NaN in a batch stops the run with NonFiniteLossError naming the step, phase and term; the last checkpoint loads.
- ENOSPC while writing a checkpoint (write or fsync) raises CheckpointError; the previous checkpoint is intact.
"""
import errno
import multiprocessing
import os
import signal
import time
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import medgen.training as training
from medgen.training import (AutoencoderStep, CheckpointError, NonFiniteLossError, Trainer, TrainConfig, checkpoint_path,
                             latest_checkpoint, list_checkpoints, load_checkpoint)

# ----------------------------------------------------------------------------------- SIGKILL and resume
def _train_process(out: str, resume: bool, delay: float) -> None:
    "A whole training run, as a separate process would do it (the target of a forked child)."
    import random
    import numpy as np
    torch.set_num_threads(1)
    random.seed(0); np.random.seed(0)
    g = torch.Generator().manual_seed(0)
    data = [{"image": torch.rand(1, 8, 8, generator=g)} for _ in range(24)]

    def step(models, batch, ctx):
        x = batch["image"]
        noise = torch.randn(x.shape, generator=ctx.generator)            # the run's generator
        drop = F.dropout(torch.ones_like(x), 0.2)                         # torch's global generator
        yield "model", {"mse": F.mse_loss(models["model"](x + 0.3 * noise * drop), noise)}

    torch.manual_seed(123 if resume else 0)                               # a resume must not depend on the init
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.SiLU(), nn.Dropout(0.1), nn.Conv2d(8, 1, 3, padding=1))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    cfg = TrainConfig(max_steps=40, batch_size=4, warmup_steps=5, lr_schedule="cosine", clip_grad_norm=1.0,
                      ema_decay=0.9, checkpoint_every=5, keep_last=2, progress=False, tensorboard=False)
    Trainer(step, {"model": model}, {"model": opt}, data, out, cfg,
            callbacks=[lambda tr, terms: time.sleep(delay)]).fit(resume=resume)


def _run(out, resume: bool, delay: float = 0.0):
    # fork: a real, separate process (killable with SIGKILL) that inherits the imported torch/monai/medgen instead
    # of importing them again (seconds each); it uses one intra-op thread and no data-loader workers.
    p = multiprocessing.get_context("fork").Process(target=_train_process, args=(str(out), resume, delay))
    p.start()
    return p


def _losses(out):
    import csv
    with open(out / "metrics.csv", newline="") as f:
        return [(int(r["step"]), r["mse"], r["lr"]) for r in csv.DictReader(f)]


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    ref_dir, victim_dir = tmp_path / "reference", tmp_path / "victim"
    ref = _run(ref_dir, resume=False)
    victim = _run(victim_dir, resume=False, delay=0.03)
    deadline = time.time() + 60
    while not checkpoint_path(victim_dir / "checkpoints", 15).exists():   # let it pass a few checkpoints
        assert victim.is_alive() and time.time() < deadline, f"victim exit code {victim.exitcode}"
        time.sleep(0.005)
    time.sleep(0.04)
    os.kill(victim.pid, signal.SIGKILL)
    victim.join()
    assert victim.exitcode == -signal.SIGKILL
    killed_at = len(_losses(victim_dir))
    assert 15 <= killed_at < 40, killed_at                                 # it really died mid-run
    ref.join()
    assert ref.exitcode == 0
    resumed = _run(victim_dir, resume=True)
    resumed.join()
    assert resumed.exitcode == 0
    reference, after = _losses(ref_dir), _losses(victim_dir)
    assert [s for s, *_ in after] == list(range(1, 41))                   # no duplicated or missing steps
    assert after == reference                                              # loss and lr strings: bit-identical
    w_ref = load_checkpoint(checkpoint_path(ref_dir / "checkpoints", 40))
    w_res = load_checkpoint(checkpoint_path(victim_dir / "checkpoints", 40))
    for part in ("models", "ema"):
        for a, b in zip(torch.utils._pytree.tree_leaves(w_ref[part]), torch.utils._pytree.tree_leaves(w_res[part])):
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
    assert not list((victim_dir / "checkpoints").glob(".*.tmp"))           # a temp file of the kill is cleaned up
    assert len(list_checkpoints(victim_dir / "checkpoints")) == 2          # keep_last


# ----------------------------------------------------------------------------------- in-process runs
def _data(n=16):
    g = torch.Generator().manual_seed(1)
    return [{"image": torch.rand(1, 8, 8, generator=g)} for _ in range(n)]


def _step(models, batch, ctx):
    x = batch["image"]
    noise = torch.randn(x.shape, generator=ctx.generator)
    yield "model", {"mse": F.mse_loss(models["model"](x + 0.3 * noise), noise)}


def _trainer(out, data=None, max_steps=6, **cfg):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.SiLU(), nn.Conv2d(4, 1, 3, padding=1))
    cfg = TrainConfig(**{"max_steps": max_steps, "batch_size": 4, "checkpoint_every": 2, "progress": False,
                         "tensorboard": False, **cfg})
    return Trainer(_step, {"model": m}, {"model": torch.optim.Adam(m.parameters(), 1e-2)}, data or _data(), out, cfg)


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_corrupted_checkpoint_error_and_previous_loads(tmp_path, damage):
    history = _trainer(tmp_path).fit()
    ckdir = tmp_path / "checkpoints"
    newest = checkpoint_path(ckdir, 6)
    raw = bytearray(newest.read_bytes())
    if damage == "truncate": newest.write_bytes(bytes(raw[: len(raw) // 3]))
    elif damage == "flip": raw[len(raw) // 2] ^= 0x01; newest.write_bytes(bytes(raw))
    else: newest.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"ckpt_00000006\.pt is corrupted"):
        load_checkpoint(newest)
    with pytest.warns(UserWarning, match="skipping ckpt_00000006.pt"):
        path, state = latest_checkpoint(ckdir)
    assert path == checkpoint_path(ckdir, 4) and state["step"] == 4
    resumed = _trainer(tmp_path)
    with pytest.warns(UserWarning, match="skipping ckpt_00000006.pt"):
        again = resumed.fit(resume=True)
    assert resumed.last_checkpoint == newest and [r["mse"] for r in again] == [r["mse"] for r in history[4:]]
    load_checkpoint(newest)                                                 # rewritten, valid again


def test_explicit_bad_resume_path_raises(tmp_path):
    _trainer(tmp_path).fit()
    bad = checkpoint_path(tmp_path / "checkpoints", 6)
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupted"):
        _trainer(tmp_path).fit(resume=bad)


def test_nan_in_a_batch_stops_the_run_naming_the_step(tmp_path):
    data = _data()
    order = list(training.ResumableSampler(data, seed=0))
    bad = order[2 * 4 + 1]                                                  # in the third batch: step 3
    data[bad] = {"image": torch.full((1, 8, 8), float("nan"))}
    trainer = _trainer(tmp_path, data)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 3: term 'mse' of phase 'model' is nan") as e:
        trainer.fit()
    assert isinstance(e.value, RuntimeError) and e.value.step == 3
    assert e.value.checkpoint == checkpoint_path(tmp_path / "checkpoints", 2)
    good = load_checkpoint(e.value.checkpoint)
    assert all(torch.isfinite(v).all() for v in good["models"]["model"].values())
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["ckpt_00000002.pt"]  # nothing after
    assert all(torch.isfinite(p).all() for p in trainer.models["model"].parameters())    # weights not touched


def test_nan_in_the_discriminator_phase_names_it(tmp_path):
    class AE(nn.Module):
        def __init__(self): super().__init__(); self.c = nn.Conv2d(1, 1, 3, padding=1)
        def forward(self, x): y = self.c(x); return y, y.mean() * 0
    def nan_on_fake(logits, target_is_real, for_discriminator=False):
        loss = (logits - float(target_is_real)).pow(2).mean()
        return loss * float("nan") if for_discriminator and not target_is_real else loss
    torch.manual_seed(0)
    g, d = AE(), nn.Conv2d(1, 1, 3)
    trainer = Trainer(AutoencoderStep("g", discriminator="d", adv_loss=nan_on_fake, adv_start=2),
                      {"g": g, "d": d}, {"g": torch.optim.SGD(g.parameters(), 0.1), "d": torch.optim.SGD(d.parameters(), 0.1)},
                      _data(), tmp_path, TrainConfig(max_steps=5, batch_size=4, progress=False, tensorboard=False))
    with pytest.raises(NonFiniteLossError, match="at step 3: term 'disc' of phase 'd' is nan"):
        trainer.fit()


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch, where):
    trainer = _trainer(tmp_path)
    calls = {"n": 0}

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    def arm(tr, terms):                                # the checkpoint of step 2 succeeds, the one of step 4 fails
        if tr.step == 4:
            calls["n"] += 1
            if where == "write": monkeypatch.setattr(training._HashingWriter, "write", full_disk)
            else: monkeypatch.setattr(os, "fsync", full_disk)
    trainer.callbacks.append(arm)
    ckdir = tmp_path / "checkpoints"
    with pytest.raises(CheckpointError, match="could not write checkpoint .*ckpt_00000004.pt.*No space left") as e:
        trainer.fit()
    assert isinstance(e.value.__cause__, OSError) and e.value.__cause__.errno == errno.ENOSPC
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(ckdir)] == ["ckpt_00000002.pt"]
    assert not [p for p in ckdir.iterdir() if p.name.endswith(".tmp")]    # no half-written file left
    assert load_checkpoint(checkpoint_path(ckdir, 2))["step"] == 2           # intact (its SHA-256 verifies)
    assert _trainer(tmp_path).fit(resume=True)[-1]["step"] == 6             # and the run can go on from it


def test_resume_with_changed_config_warns(tmp_path):
    _trainer(tmp_path, max_steps=4).fit()
    with pytest.warns(UserWarning, match=r"resuming with a different \['batch_size'\]"):
        t = _trainer(tmp_path, max_steps=6, batch_size=2)
        t.fit(resume=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                   # max_steps may change freely
        _trainer(tmp_path / "b", max_steps=2).fit()
        _trainer(tmp_path / "b", max_steps=4).fit(resume=True)


def test_tensorboard_receives_the_metrics_when_installed(tmp_path, monkeypatch):
    "Without the tensorboard package here, a stand-in SummaryWriter checks what the trainer sends."
    import sys
    import types
    scalars, closed = [], []

    class SummaryWriter:
        def __init__(self, log_dir): self.log_dir = log_dir
        def add_scalar(self, tag, value, step): scalars.append((tag, value, step))
        def close(self): closed.append(self.log_dir)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter))
    history = _trainer(tmp_path, max_steps=3, tensorboard=None).fit()
    assert closed == [str(tmp_path / "tensorboard")]
    assert [(t, s) for t, _, s in scalars if t == "mse"] == [("mse", 1), ("mse", 2), ("mse", 3)]
    assert [v for t, v, _ in scalars if t == "mse"] == [r["mse"] for r in history]
    assert {t for t, _, _ in scalars} == {"epoch", "mse", "lr", "samples_per_s"}
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)     # not installed
    with pytest.raises(ImportError, match="tensorboard=True needs the tensorboard package"):
        _trainer(tmp_path / "b", max_steps=1, tensorboard=True).fit()
    _trainer(tmp_path / "c", max_steps=1, tensorboard=None).fit()         # auto: silently off


def _steps_with_keys():
    "Every Trainer step of the book with the batch keys it reads (built lazily: the chapters' modules)."
    from medgen.controlnet import ControlNetStep
    from medgen.schedulers import DDPMScheduler
    from medgen.super_resolution import UpscalerStep
    from medgen.training import DiffusionStep, TransformerStep
    s = DDPMScheduler(10)
    return [(DiffusionStep(s), "image_key", "image"), (DiffusionStep(s, image_key="t1"), "image_key", "t1"),
            (DiffusionStep(s, condition_key="report"), "condition_key", "report"),
            (DiffusionStep(s, class_key="label"), "class_key", "label"),
            (AutoencoderStep(), "image_key", "image"), (TransformerStep(4), "image_key", "image"),
            (ControlNetStep(s), "image_key", "image"), (ControlNetStep(s, cond_key="flair"), "cond_key", "flair"),
            (UpscalerStep(s, DDPMScheduler(10), max_noise_level=5), "low_res_key", "low_res")]


@pytest.mark.parametrize("i", range(9))
def test_a_batch_without_the_step_key_names_the_key_and_the_keys_present(i):
    "A batch without the key a step reads: a KeyError naming the key, the argument that chose it and the keys it has."
    step, arg, key = _steps_with_keys()[i]
    x = torch.rand(2, 1, 8, 8)
    batch = {k: x for k in ("image", "report", "label", "cond", "flair", "low_res", "t1") if k != key}
    batch["img"] = x
    ctx = training.StepContext(torch.Generator().manual_seed(0), 0, torch.device("cpu"))
    models = {k: nn.Identity() for k in ("model", "autoencoder", "transformer", "vqvae", "controlnet", "unet")}
    with pytest.raises(KeyError) as err:
        next(iter(step(models, batch, ctx)))
    msg = str(err.value)
    assert f"the batch has no {key!r} ({arg}={key!r}); its keys are {sorted(batch)}" in msg, msg
    with pytest.raises(KeyError, match="it is a tuple, not a dict"):
        next(iter(step(models, (x, x), ctx)))
