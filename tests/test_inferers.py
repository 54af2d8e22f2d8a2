"""DiffusionInferer: parity with MONAI core's inferer on the same tiny UNet (2D and 3D), and error paths.

nbs/14_diffusion_inferer.ipynb holds these checks next to the code, plus the exact-model likelihood checks.
"""
import math

import pytest
import torch

import monai.networks.schedulers as M
from monai.inferers import DiffusionInferer as MonaiDiffusionInferer
from monai.networks.nets import DiffusionModelUNet
from medgen.inferers import DiffusionInferer, _discretized_gaussian_log_likelihood
from medgen.schedulers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, PNDMScheduler, RFlowScheduler

TOL = 1e-5
SHAPES = {2: (2, 1, 8, 8), 3: (2, 1, 8, 8, 8)}


pytestmark = pytest.mark.usefixtures("one_thread")


def unet(spatial_dims, in_channels=1, out_channels=1, conditioning_dim=None, seed=0):
    torch.manual_seed(seed)
    return DiffusionModelUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                              channels=(8, 8), attention_levels=(False, True), num_res_blocks=1, norm_num_groups=4,
                              num_head_channels=8, with_conditioning=conditioning_dim is not None,
                              cross_attention_dim=conditioning_dim).eval()


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def maxdiff(a, b) -> float:
    d = (a.double() - b.double()).abs().max()
    return math.inf if d.isnan() else d.item()


@pytest.mark.parametrize("sd", [2, 3])
def test_training_call_equals_monai(sd):
    shape = SHAPES[sd]
    x, n, t = rand(*shape, seed=1), rand(*shape, seed=2), torch.tensor([3, 950])
    ours, ref = DiffusionInferer(DDPMScheduler(1000, "cosine")), MonaiDiffusionInferer(M.DDPMScheduler(1000, "cosine"))
    m = unet(sd, conditioning_dim=4)
    ctx = rand(2, 3, 4, seed=3)
    assert maxdiff(ours(x, m, n, t, condition=ctx), ref(x, m, n, t, condition=ctx)) <= TOL
    m = unet(sd, in_channels=2)
    c = rand(*shape, seed=4)
    assert maxdiff(ours(x, m, n, t, condition=c, mode="concat"), ref(x, m, n, t, condition=c, mode="concat")) <= TOL


def _pair(kind, T=40, n=8, **kw):
    ours, ref = {"ddpm": (DDPMScheduler, M.DDPMScheduler), "ddim": (DDIMScheduler, M.DDIMScheduler),
                 "pndm": (PNDMScheduler, M.PNDMScheduler), "rflow": (RFlowScheduler, M.RFlowScheduler)}[kind]
    ours, ref = ours(T, **kw), ref(T, **kw)
    ours.set_timesteps(n), ref.set_timesteps(n)
    return ours, ref


@pytest.mark.parametrize("sd", [2, 3])
@pytest.mark.parametrize("case", ["ddpm", "ddim-cfg", "ddim-concat-cfg", "pndm", "rflow"])
def test_sample_equals_monai(sd, case):
    shape = SHAPES[sd]
    x_T = rand(*shape, seed=5)
    if case == "ddpm": (o, r), m, kw = _pair("ddpm", T=16, n=16), unet(sd), {}
    elif case == "ddim-cfg": (o, r), m, kw = _pair("ddim"), unet(sd, conditioning_dim=4), dict(conditioning=rand(2, 3, 4, seed=6), cfg=3.0)
    elif case == "ddim-concat-cfg":
        (o, r), m = _pair("ddim", prediction_type="v_prediction"), unet(sd, in_channels=2)
        kw = dict(conditioning=rand(*shape, seed=7), mode="concat", cfg=2.0, cfg_fill_value=0.0)
    elif case == "pndm": (o, r), m, kw = _pair("pndm", skip_prk_steps=True), unet(sd), {}
    else: (o, r), m, kw = _pair("rflow", T=1000, n=6), unet(sd), {}
    torch.manual_seed(0); a = DiffusionInferer(o).sample(x_T, m, verbose=False, **kw)
    torch.manual_seed(0); b = MonaiDiffusionInferer(r).sample(x_T, m, verbose=False, **kw)
    assert maxdiff(a, b) <= TOL


def test_sample_intermediates_and_generator():
    o, r = _pair("ddim", T=40, n=8)
    m, x_T = unet(2), rand(*SHAPES[2], seed=8)
    a, ia = DiffusionInferer(o).sample(x_T, m, save_intermediates=True, intermediate_steps=5, verbose=False)
    b, ib = MonaiDiffusionInferer(r).sample(x_T, m, save_intermediates=True, intermediate_steps=5, verbose=False)
    assert len(ia) == len(ib) > 0 and maxdiff(torch.stack(ia), torch.stack(ib)) <= TOL
    d = DDPMScheduler(10)
    s = lambda seed: DiffusionInferer(d).sample(x_T, m, verbose=False, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(s(1), s(1)) and not torch.equal(s(1), s(2))
    dpm = DPMSolverMultistepScheduler(40)
    dpm.set_timesteps(5)
    assert DiffusionInferer(dpm).sample(x_T, m, verbose=False).isfinite().all()


@pytest.mark.parametrize("sd", [2, 3])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_likelihood_equals_monai(sd, prediction_type):
    shape = SHAPES[sd]
    x = ((rand(*shape, seed=9).clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1
    m, ctx = unet(sd, conditioning_dim=4), rand(2, 3, 4, seed=10)
    kw = dict(conditioning=ctx, original_input_range=(0, 255), scaled_input_range=(-1, 1), verbose=False, save_intermediates=True)
    torch.manual_seed(3); a, ma = DiffusionInferer(DDPMScheduler(20, prediction_type=prediction_type)).get_likelihood(x, m, **kw)
    torch.manual_seed(3); b, mb = MonaiDiffusionInferer(M.DDPMScheduler(20, prediction_type=prediction_type)).get_likelihood(x, m, **kw)
    assert a.shape == (2,) and maxdiff(a, b) <= TOL and maxdiff(torch.stack(ma), torch.stack(mb)) <= TOL


def test_likelihood_learned_variance_and_concat():
    x = ((rand(*SHAPES[2], seed=11).clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1
    lik = DiffusionInferer(DDPMScheduler(20, variance_type="learned_range")).get_likelihood(
        x, unet(2, out_channels=2), verbose=False, scaled_input_range=(-1, 1))
    assert lik.isfinite().all()
    lik = DiffusionInferer(DDPMScheduler(20)).get_likelihood(x, unet(2, in_channels=2), conditioning=x, mode="concat", verbose=False)
    assert lik.isfinite().all()


def test_decoder_bins_sum_to_one():
    grid = torch.linspace(0, 1, 256).view(1, 1, 256)
    logp = _discretized_gaussian_log_likelihood(grid, torch.full_like(grid, 0.4), torch.full_like(grid, math.log(0.1)), (0, 255), (0, 1))
    assert abs(logp.exp().sum().item() - 1) < 2e-3


def test_errors():
    inf, m, x = DiffusionInferer(DDIMScheduler(20)), unet(2), rand(*SHAPES[2])
    with pytest.raises(NotImplementedError, match="mode must be"): inf(x, m, x, torch.tensor([1, 2]), mode="sum")
    with pytest.raises(ValueError, match="conditioning is required"): inf.sample(x, m, mode="concat", verbose=False)
    with pytest.raises(ValueError, match="noise must have the shape"): inf(x, m, x[:1], torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="takes no `seg` argument"): inf.sample(x, m, seg=x, verbose=False)
    with pytest.raises(NotImplementedError, match="need a DDPMScheduler"): inf.get_likelihood(x, m, verbose=False)
    with pytest.raises(ValueError, match="call set_timesteps"): DiffusionInferer(DPMSolverMultistepScheduler(20)).sample(x, m, verbose=False)


def test_gm_likelihood_helpers_kept():
    "GM-era code calls the inferer's _approx_standard_normal_cdf and _get_decoder_log_likelihood: same numbers as MONAI."
    from monai.inferers import DiffusionInferer as CoreInferer
    from medgen.inferers import DiffusionInferer
    from medgen.schedulers import DDPMScheduler
    core, ours = CoreInferer(DDPMScheduler(10)), DiffusionInferer(DDPMScheduler(10))
    g = torch.Generator().manual_seed(0)
    x = torch.linspace(-5, 5, 201)
    assert (ours._approx_standard_normal_cdf(x) - core._approx_standard_normal_cdf(x)).abs().max() <= 1e-6
    assert abs(ours._approx_standard_normal_cdf(torch.zeros(1)).item() - 0.5) < 1e-7
    img = torch.randint(0, 256, (2, 1, 5, 5), generator=g).float() / 255
    mu, ls = img + 0.01 * torch.randn(2, 1, 5, 5, generator=g), torch.full((2, 1, 5, 5), -3.0)
    ref = core._get_decoder_log_likelihood(img, mu, ls, (0, 255), (0, 1))
    assert (ours._get_decoder_log_likelihood(img, mu, ls, (0, 255), (0, 1)) - ref).abs().max() <= 1e-5
