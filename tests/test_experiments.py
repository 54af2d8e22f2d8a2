"Part VII's recipe layer (medgen.experiments): resumable stages, metrics files, meta-device plans, AUC, sampling."
import json

import pytest
import torch
from scipy.stats import mannwhitneyu

from medgen.experiments import (AugmentedImages, ConditionDropout, build_network, collect_metrics, fit_stage,
                                meta_plan, read_metrics, roc_auc, roc_curve, sample_ldm, write_metrics)
from medgen.schedulers import DDIMScheduler, DDPMScheduler
from medgen.training import DiffusionStep, StepContext, TrainConfig

UNET = {"class": "DiffusionModelUNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 1, "num_channels": (8, 8),
        "attention_levels": (False, False), "num_res_blocks": 1, "norm_num_groups": 4}
AE = {"class": "AutoencoderKL", "spatial_dims": 2, "in_channels": 1, "out_channels": 1, "num_channels": (8, 8),
      "latent_channels": 1, "num_res_blocks": 1, "norm_num_groups": 4, "attention_levels": (False, False),
      "with_encoder_nonlocal_attn": False, "with_decoder_nonlocal_attn": False}
METRICS = dict(experiment="II", profile="smoke", device="cpu", seconds=1.0, data="x", table=[{"fid": 1.0}], paper=[],
               full_plan={})


def _data(n=8):
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(1, 8, 8, generator=g)} for _ in range(n)]


def test_fit_stage_resumes_a_finished_stage_without_training(tmp_path, one_thread):
    torch.manual_seed(0)
    unet, sched = build_network(UNET), DDPMScheduler(100)
    cfg = TrainConfig(max_steps=3, batch_size=4, progress=False, tensorboard=False)
    first = fit_stage(DiffusionStep(sched, "unet"), {"unet": unet}, {"unet": 1e-3}, _data(), tmp_path, cfg)
    assert first.step == 3 and len(first.history) == 3
    weights = {k: v.clone() for k, v in unet.state_dict().items()}
    again = fit_stage(DiffusionStep(sched, "unet"), {"unet": unet}, {"unet": 1e-3}, _data(), tmp_path, cfg)
    assert again.step == 3 and again.history == []          # nothing trained: the checkpoint was complete
    assert all(torch.equal(weights[k], v) for k, v in unet.state_dict().items())


def test_fit_stage_errors(tmp_path):
    unet = build_network(UNET)
    cfg = TrainConfig(max_steps=1, batch_size=2, progress=False, tensorboard=False)
    with pytest.raises(ValueError, match="lrs must map trained network names to learning rates > 0"):
        fit_stage(DiffusionStep(DDPMScheduler(10), "unet"), {"unet": unet}, {"unet": 0}, _data(), tmp_path, cfg)
    with pytest.raises(ValueError, match=r"lrs names \['vae'\], not in models \['unet'\]"):
        fit_stage(DiffusionStep(DDPMScheduler(10), "unet"), {"unet": unet}, {"vae": 1e-3}, _data(), tmp_path, cfg)


def test_metrics_files(tmp_path):
    path = write_metrics(tmp_path / "b", **METRICS)
    assert json.loads(path.read_text())["experiment"] == "II"
    assert not list((tmp_path / "b").glob("*.tmp"))        # atomic: no temporary file left behind
    write_metrics(tmp_path / "a", **{**METRICS, "experiment": "I"})
    assert [m["experiment"] for m in collect_metrics(tmp_path)] == ["I", "II"]
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "metrics.json").write_text(json.dumps({"experiment": "I"}))
    with pytest.raises(ValueError, match="missing keys"):
        read_metrics(tmp_path / "c" / "metrics.json")
    with pytest.raises(TypeError, match="table must be a list of row dicts"):
        write_metrics(tmp_path, **{**METRICS, "table": {"fid": 1}})
    with pytest.raises(ValueError, match="profile must be one of"):
        write_metrics(tmp_path, **{**METRICS, "profile": "medium"})


def test_meta_plan_counts_a_linear_layer_exactly():
    cfg = {"class": "DecoderOnlyTransformer", "num_tokens": 9, "max_seq_len": 4, "attn_layers_dim": 8,
           "attn_layers_depth": 1, "attn_layers_heads": 2}
    plan = meta_plan(cfg, lambda: (torch.randint(0, 9, (2, 4)),), steps=10)
    assert plan["output_shape"] == [2, 4, 9] and plan["params"] == sum(
        p.numel() for p in build_network(cfg).parameters())
    frozen = meta_plan(cfg, lambda: (torch.randint(0, 9, (2, 4)),), trainable=False)
    # backward of matmuls costs twice the forward: a training step is 3x the forward FLOPs
    assert plan["flops_per_step"] == 3 * frozen["flops_per_step"]
    assert plan["gpu_hours"] == pytest.approx(10 * plan["flops_per_step"] / (0.4 * 989e12) / 3600)
    with pytest.raises(ValueError, match="utilisation must be in"):
        meta_plan(cfg, lambda: (), utilisation=0)


def test_roc_auc_is_the_mann_whitney_statistic():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(40, generator=g), torch.randn(30, generator=g).add(0.7).round(decimals=1)
    u = mannwhitneyu(b.numpy(), a.numpy()).statistic
    assert roc_auc(a, b) == pytest.approx(u / (40 * 30), abs=1e-12)
    fpr, tpr = roc_curve(a, b)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert torch.trapezoid(tpr, fpr).item() == pytest.approx(roc_auc(a, b), abs=1e-12)
    with pytest.raises(ValueError, match="must be finite"):
        roc_auc(torch.tensor([float("nan")]), b)


def test_condition_dropout_follows_the_generator():
    class Echo:
        phases = ("m",)
        def __call__(self, models, batch, ctx): yield "m", batch["context"]
    c = torch.arange(64.0).view(64, 1, 1)
    run = lambda seed: next(ConditionDropout(Echo(), 0.5)(None, {"context": c},
                                                         StepContext(torch.Generator().manual_seed(seed), 0, "cpu")))[1]
    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))
    assert 10 < (run(1) == -1).sum() < 54


def test_sample_ldm_is_seeded_and_batch_independent(one_thread):
    torch.manual_seed(0)
    unet, ae = build_network({**UNET, "in_channels": 1}).eval(), build_network(AE).eval()
    s = DDIMScheduler(100)
    s.set_timesteps(5)
    run = lambda bs: sample_ldm(unet, ae, s, 4, (1, 4, 4), 1.0, torch.Generator().manual_seed(3), batch_size=bs)
    x = run(4)
    assert x.shape == (4, 1, 8, 8) and 0 <= x.min() and x.max() <= 1
    assert torch.equal(x, run(4))
    torch.testing.assert_close(x, run(2), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="num_samples must be an int >= 1, got 0"):
        sample_ldm(unet, ae, s, 0, (1, 4, 4))


def test_augmented_images_splits_differ_and_repeat():
    img = torch.rand(1, 24, 24, generator=torch.Generator().manual_seed(0))
    tr, te = AugmentedImages([img], (12, 12), 3, "train"), AugmentedImages([img], (12, 12), 3, "test")
    assert torch.equal(tr[1]["image"], AugmentedImages([img], (12, 12), 3, "train")[1]["image"])
    assert not torch.equal(tr[0]["image"], te[0]["image"])
    with pytest.raises(IndexError):
        tr[3]


def test_saving_models_leaves_the_global_rng_alone(tmp_path):
    "save_models rebuilds each network from its config to save it; the run's later random draws must not change."
    import torch
    from medgen.experiments import build_network, save_models
    cfg = {"class": "PatchDiscriminator", "spatial_dims": 2, "in_channels": 1, "num_layers_d": 1, "channels": 8}
    net = build_network(cfg)
    torch.manual_seed(3); expected = torch.rand(4)
    torch.manual_seed(3); save_models({"d": net}, {"d": cfg}, tmp_path); got = torch.rand(4)
    assert torch.equal(got, expected)
