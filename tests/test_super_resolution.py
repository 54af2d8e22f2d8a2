"medgen.super_resolution: tiled inference against MONAI core (max abs diff <= 1e-5), closed forms, invariants, errors."
import pytest
import torch
from torch import nn
import torch.nn.functional as F

from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers import SlidingWindowInferer, sliding_window_inference
from monai.inferers.utils import _get_scan_interval

from medgen.schedulers import DDIMScheduler, DDPMScheduler
from medgen.autoencoderkl import AutoencoderKL
from medgen.super_resolution import (PatchPairs, UpscalerStep, back_project, blend_weights, cascaded_sample, downsample,
                                     resize_linear, sliding_window_sample, tile_starts, upscale, upscaler_condition)
from medgen.training import StepContext
from medgen.unet import DiffusionModelUNet

TOL = 1e-5
AUG = DDPMScheduler(1000, schedule="linear_beta", beta_start=0.0015, beta_end=0.0195)


def nearest(x, m=2):
    for ax in range(2, x.ndim): x = x.repeat_interleave(m, ax)
    return x


def nonlinear(x):  # depends on the whole window, so the blending is visible
    return torch.sin(5 * x) * x.amax(tuple(range(2, x.ndim)), keepdim=True) + x.mean()


@pytest.mark.parametrize("sd", [2, 3])
@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
@pytest.mark.parametrize("zoom", [1, 2])
def test_sliding_window_matches_monai(one_thread, sd, mode, overlap, zoom):
    x = torch.rand(2, 2, *[13, 9, 11][:sd], generator=torch.Generator().manual_seed(sd))
    roi = [5, 4, 6][:sd]
    fn = (lambda w: nearest(nonlinear(w), zoom)) if zoom > 1 else nonlinear
    ours = sliding_window_sample(x, roi, fn, overlap, mode, sigma_scale=0.2, sw_batch_size=3)
    core = sliding_window_inference(x, roi, 3, fn, overlap=overlap, mode=mode, sigma_scale=0.2)
    assert ours.shape == core.shape == (2, 2, *[s * zoom for s in x.shape[2:]])
    assert (ours - core).abs().max() <= TOL
    inferer = SlidingWindowInferer(roi, 1, overlap, mode, sigma_scale=0.2)
    assert (sliding_window_sample(x, roi, fn, overlap, mode, 0.2) - inferer(x, fn)).abs().max() <= TOL


@pytest.mark.parametrize("roi", [(7,), (8, 5), (6, 6, 3)])
def test_blend_weights_match_monai(roi):
    for mode, sigma in (("gaussian", 0.125), ("gaussian", 0.5), ("constant", 0.125)):
        assert (blend_weights(roi, mode, sigma) - compute_importance_map(roi, mode, sigma)).abs().max() <= TOL


@pytest.mark.parametrize("size,roi,overlap", [(16, 8, 0.5), (80, 16, 0.25), (10, 3, 0.0), (9, 9, 0.5), (7, 2, 0.9)])
def test_tile_starts_match_monai(size, roi, overlap):
    interval = _get_scan_interval((size,), (roi,), 1, (overlap,))
    assert tile_starts(size, roi, overlap) == [s[0].start for s in dense_patch_slices((size,), (roi,), interval)]


@pytest.mark.parametrize("sd", [1, 2, 3])
def test_tiling_identity_and_linear_exact(one_thread, sd):
    x = torch.rand(1, 1, *[12, 10, 9][:sd], generator=torch.Generator().manual_seed(0))
    for mode in ("gaussian", "constant"):
        assert (sliding_window_sample(x, [4] * sd, lambda w: w, 0.5, mode) - x).abs().max() <= 1e-6
        lin = sliding_window_sample(x, [4] * sd, lambda w: 3 * nearest(w) + 1, 0.3, mode, sw_batch_size=5)
        assert (lin - (3 * nearest(x) + 1)).abs().max() <= 1e-5


def test_constant_weights_count_windows():
    # starts 0, 2, 4 of a 4-window on 8 voxels: a constant sampler returns the constant, and the plain sum of
    # the windows' weights is the number of windows over each voxel
    out = sliding_window_sample(torch.zeros(1, 1, 8), (4,), lambda w: torch.full_like(w, 2.5), 0.5, "constant")
    assert torch.equal(out, torch.full((1, 1, 8), 2.5))
    counts = sliding_window_sample(torch.zeros(1, 1, 8), (4,), lambda w: torch.ones_like(w), 0.5, "constant")
    assert torch.equal(counts, torch.ones(1, 1, 8))
    total = torch.zeros(8)
    for s in tile_starts(8, 4, 0.5): total[s:s + 4] += blend_weights((4,), "constant")
    assert total.tolist() == [1, 1, 2, 2, 2, 2, 1, 1]


def test_windows_in_order_batch_major():
    seen = []
    x = torch.arange(2 * 6.).view(2, 1, 6)
    sliding_window_sample(x, (3,), lambda w: seen.append(w[:, 0, 0].tolist()) or w, 0.0, sw_batch_size=3)
    assert seen == [[0.0, 3.0, 6.0], [9.0]]


def test_sliding_window_errors():
    x = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match="one entry per spatial axis"): sliding_window_sample(x, (4,), lambda w: w)
    with pytest.raises(ValueError, match="roi_size 9 must be between 1"): sliding_window_sample(x, (9, 4), lambda w: w)
    with pytest.raises(ValueError, match="overlap must be in"): sliding_window_sample(x, (4, 4), lambda w: w, 1.0)
    with pytest.raises(ValueError, match="integer multiple"): sliding_window_sample(x, (4, 4), lambda w: w[..., :3])
    with pytest.raises(ValueError, match="mode must be"): sliding_window_sample(x, (4, 4), lambda w: w, mode="tri")


def test_downsample_and_resize():
    for sd in (1, 2, 3):
        v = torch.rand(2, 1, *[4] * sd, generator=torch.Generator().manual_seed(sd))
        assert (downsample(nearest(v)) - v).abs().max() <= 1e-6
        assert (resize_linear(torch.full_like(v, 0.3), [8] * sd) - 0.3).abs().max() <= 1e-6
    core = F.avg_pool3d(torch.arange(64.).view(1, 1, 4, 4, 4), 2)
    assert torch.equal(downsample(torch.arange(64.).view(1, 1, 4, 4, 4)), core)
    with pytest.raises(ValueError, match="divisible"): downsample(torch.zeros(1, 1, 3, 4))


def test_condition_closed_form_and_statistics():
    lr = torch.rand(3, 2, 5, 4, 3, generator=torch.Generator().manual_seed(0))
    eta = torch.randn(lr.shape, generator=torch.Generator().manual_seed(1))
    k = torch.tensor([0, 1, 349])
    a = AUG.alphas_cumprod[k].view(-1, 1, 1, 1, 1)
    assert (upscaler_condition(lr, (5, 4, 3), k, AUG, eta) - (a.sqrt() * lr + (1 - a).sqrt() * eta)).abs().max() <= 1e-6
    up = upscaler_condition(lr, (10, 8, 6), k, AUG, eta)
    assert (up - resize_linear(a.sqrt() * lr + (1 - a).sqrt() * eta, (10, 8, 6))).abs().max() <= 1e-6
    assert abs((1 - AUG.alphas_cumprod[1]).sqrt().item() - 0.0548) < 1e-3  # the paper's sampling level, sigma_1
    with pytest.raises(TypeError, match="integer tensor of shape"): upscaler_condition(lr, (5, 4, 3), k[:2], AUG)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1000\)"): upscaler_condition(lr, (5, 4, 3), k + 700, AUG)


class _Encoder(nn.Module):
    "A fixed 'autoencoder' with compression 2: encode = 2 * block mean, decode = nearest upsampling / 2."
    def encode_stage_2_inputs(self, x): return 2 * downsample(x)
    def decode_stage_2_outputs(self, z): return nearest(z) / 2


class _Copy(nn.Module):
    "Predicts the last `c` input channels (the condition); checks the class labels."
    def __init__(self, c=1, level=None):
        super().__init__(); self.out_channels, self.num_class_embeds, self.level, self.inputs = c, 8, level, []
    def forward(self, x, timesteps, context=None, class_labels=None):
        self.inputs.append((x, timesteps, class_labels))
        if self.level is not None: assert (class_labels == self.level).all()
        return x[:, -self.out_channels:]


def test_upscaler_step_latent_replays_generator():
    sched = DDPMScheduler(50, prediction_type="sample")
    hr = torch.rand(2, 1, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    batch, model = {"image": hr, "low_res": downsample(hr)}, _Copy()
    step = UpscalerStep(sched, AUG, 8, autoencoder="ae", scale_factor=0.5)
    (phase, terms), = list(step({"unet": model, "ae": _Encoder()}, batch, StepContext(torch.Generator().manual_seed(9), 0, torch.device("cpu"))))
    g = torch.Generator().manual_seed(9)
    z = 2 * downsample(hr) * 0.5
    noise = torch.randn(z.shape, generator=g)
    t, k = torch.randint(0, 50, (2,), generator=g), torch.randint(0, 8, (2,), generator=g)
    c = upscaler_condition(batch["low_res"], z.shape[2:], k, AUG, torch.randn(batch["low_res"].shape, generator=g))
    x_in, t_in, k_in = model.inputs[0]
    assert phase == "unet" and step.phases == ("unet",)
    assert torch.equal(t_in, t) and torch.equal(k_in, k)
    assert (x_in - torch.cat([sched.add_noise(z, noise, t), c], 1)).abs().max() <= 1e-6
    assert abs(terms["mse"].item() - F.mse_loss(c, z).item()) <= 1e-6  # the copying model predicts c; the target is z


def test_upscale_latent_decodes_condition():
    ddim = DDIMScheduler(100, prediction_type="sample", clip_sample=False)
    ddim.set_timesteps(4)
    lr = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    out = upscale(lr, _Copy(level=1), ddim, AUG, 1, _Encoder(), scale_factor=0.5, generator=torch.Generator().manual_seed(4))
    eta = torch.randn(lr.shape, generator=torch.Generator().manual_seed(4))
    c = upscaler_condition(lr, (4, 4), torch.tensor([1, 1]), AUG, eta)
    assert out.shape == (2, 1, 8, 8) and (out - nearest(c / 0.5) / 2).abs().max() <= 1e-5
    with pytest.raises(ValueError, match=r"noise_level must be an int in \[0, 8\)"): upscale(lr, _Copy(), ddim, AUG, 8)


def test_upscale_with_a_unet_is_seeded_and_tiles(one_thread):
    torch.manual_seed(0)
    unet = DiffusionModelUNet(2, 2, 1, num_channels=(8, 8), attention_levels=(False, False), num_res_blocks=1,
                              norm_num_groups=4, num_class_embeds=4).eval()
    ddim = DDIMScheduler(100, clip_sample=False)
    ddim.set_timesteps(3)
    lr = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    run = lambda: sliding_window_sample(lr, (4, 4), lambda w: upscale(w, unet, ddim, AUG, 1, scale=2,
                                        generator=torch.Generator().manual_seed(1)), 0.5)
    a, b = run(), run()
    assert a.shape == (1, 1, 16, 16) and torch.equal(a, b) and torch.isfinite(a).all()


def test_patch_pairs_aligned_2d():
    imgs = [{"image": torch.rand(1, 12, 8, generator=torch.Generator().manual_seed(k))} for k in range(2)]
    pp = PatchPairs(imgs, (4, 4), num_samples=16, seed=3)
    for i in range(16):
        item = pp[i]
        s = item["start"].tolist()
        whole = next(d["image"] for d in imgs if torch.equal(d["image"][:, s[0]:s[0] + 4, s[1]:s[1] + 4], item["image"]))
        assert torch.equal(item["low_res"], downsample(whole[None])[0][:, s[0] // 2:s[0] // 2 + 2, s[1] // 2:s[1] // 2 + 2])
    with pytest.raises(IndexError): pp[16]


def test_cascaded_sample_batches():
    calls = []
    first = lambda n: calls.append(n) or torch.ones(n, 1, 2, 2) * len(calls)
    low, high = cascaded_sample(first, nearest, 5, batch_size=2)
    assert calls == [2, 2, 1] and torch.equal(high, nearest(low)) and low[:, 0, 0, 0].tolist() == [1, 1, 2, 2, 3]
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"): cascaded_sample(first, nearest, 2, 0)


@pytest.mark.parametrize("sd", [2, 3])
def test_back_projection_converges_to_consistency(sd):
    "Each pass shrinks the block-mean residual; many passes reach the input to float precision; D(U(y)) fixed points kept."
    g = torch.Generator().manual_seed(sd)
    y, x = torch.rand(2, 1, *[4] * sd, generator=g), torch.rand(2, 1, *[8] * sd, generator=g)
    res = [(downsample(back_project(x, y, n)) - y).abs().max().item() for n in (0, 1, 5, 40)]
    assert res[0] > res[1] > res[2] > res[3] and res[3] < 1e-4, res
    assert torch.equal(back_project(x, y, 0), x)
    assert (back_project(nearest(y), y) - nearest(y)).abs().max() <= 1e-6
    with pytest.raises(ValueError, match="upscaled by one integer factor"): back_project(x, y[:1])
    with pytest.raises(ValueError, match="iterations must be an int >= 0"): back_project(x, y, 1.5)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_upscale_latent_consistency_3d(one_thread, kind):
    "A latent 3D upscaler (random networks) sampled with consistency: its output's block means are the input's."
    torch.manual_seed(0)
    ae = AutoencoderKL(3, 1, 1, num_channels=(4, 4), latent_channels=2, num_res_blocks=1, norm_num_groups=2,
                       attention_levels=(False, False), with_encoder_nonlocal_attn=False,
                       with_decoder_nonlocal_attn=False).eval()
    unet = DiffusionModelUNet(3, 3, 2, num_channels=(8, 8), attention_levels=(False, False), num_res_blocks=1,
                              norm_num_groups=4, num_class_embeds=4).eval()
    ddim = DDIMScheduler(100, clip_sample=False, prediction_type=kind)
    ddim.set_timesteps(4)
    lr = torch.rand(1, 1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    run = lambda n: upscale(lr, unet, ddim, AUG, 1, ae, 0.5, generator=torch.Generator().manual_seed(2), consistency=n)
    plain, held = run(0), run(10)
    psnr = lambda x: (10 * torch.log10(1 / (downsample(x) - lr).pow(2).mean())).item()
    assert held.shape == (1, 1, 8, 8, 8) and torch.isfinite(held).all() and torch.equal(held, run(10))
    assert psnr(held) > 40 and psnr(held) > psnr(plain) + 20, (psnr(plain), psnr(held))
    with pytest.raises(ValueError, match="consistency must be an int >= 0"): run(-1)
