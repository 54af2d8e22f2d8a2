"""LatentDiffusionInferer: parity with MONAI core's inferer (same autoencoder, UNet, noise and seed; 2D and 3D),
the pad/crop helpers against MONAI's transforms, option routing (quantized, seg, scale_factor) and error paths.

nbs/24_latent_diffusion.ipynb holds these checks next to the code, plus a trained end-to-end example.
"""
import math

import pytest
import torch
from torch import nn

import monai.networks.schedulers as M
from monai.inferers import LatentDiffusionInferer as MonaiLatentDiffusionInferer
from monai.networks.nets import VQVAE, AutoencoderKL, DiffusionModelUNet
from monai.transforms import CenterSpatialCrop, SpatialPad
from medgen.inferers import DiffusionInferer
from medgen.latent_diffusion import LatentDiffusionInferer, _center_crop, _pad_to
from medgen.schedulers import DDIMScheduler, DDPMScheduler

TOL = 1e-5
# images, their latents (one downsampling), the LDM's padded latent shape (odd -> even in 2D: MONAI's crop quirk)
CASES = {2: ((2, 1, 10, 10), (5, 5), (6, 6)), 3: ((2, 1, 8, 8, 8), (4, 4, 4), (6, 6, 4))}
PLAIN = {2: (2, 1, 12, 12), 3: (2, 1, 8, 8, 8)}  # images whose latents fit the UNet without padding


pytestmark = pytest.mark.usefixtures("one_thread")


def autoencoder(sd, seed=0):
    torch.manual_seed(seed)
    return AutoencoderKL(spatial_dims=sd, in_channels=1, out_channels=1, channels=(4, 4), latent_channels=2,
                         num_res_blocks=1, norm_num_groups=2, attention_levels=(False, False),
                         with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False).eval()


def vqvae(sd, seed=0):
    torch.manual_seed(seed)
    return VQVAE(spatial_dims=sd, in_channels=1, out_channels=1, channels=(4, 4), num_res_layers=1,
                 num_res_channels=(4, 4), downsample_parameters=((2, 4, 1, 1), (1, 3, 1, 1)),
                 upsample_parameters=((1, 3, 1, 1, 0), (2, 4, 1, 1, 0)), num_embeddings=8, embedding_dim=2).eval()


def unet(sd, in_channels=2, conditioning_dim=None, seed=0):
    torch.manual_seed(seed)
    return DiffusionModelUNet(spatial_dims=sd, in_channels=in_channels, out_channels=2, channels=(8, 8),
                              attention_levels=(False, True), num_res_blocks=1, norm_num_groups=4, num_head_channels=8,
                              with_conditioning=conditioning_dim is not None, cross_attention_dim=conditioning_dim).eval()


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def maxdiff(a, b) -> float:
    d = (torch.as_tensor(a).double() - torch.as_tensor(b).double()).abs().max()
    return math.inf if d.isnan() else d.item()


def inferers(kind, scale=0.7, shapes=(None, None), T=20, n=20, **kw):
    "medgen's and MONAI's inferer over the same scheduler (DDPM: n == T, where both sample the same chain)."
    o, r = {"ddpm": (DDPMScheduler, M.DDPMScheduler), "ddim": (DDIMScheduler, M.DDIMScheduler)}[kind]
    o, r = o(T, clip_sample=False, **kw), r(T, clip_sample=False, **kw)
    o.set_timesteps(n), r.set_timesteps(n)
    return LatentDiffusionInferer(o, scale, *shapes), MonaiLatentDiffusionInferer(r, scale, *shapes)


def both(method, pair, *args, seed=0, **kw):
    torch.manual_seed(seed); a = getattr(pair[0], method)(*args, **kw)
    torch.manual_seed(seed); b = getattr(pair[1], method)(*args, **kw)
    return a, b


class InRange(nn.Module):
    "Latents in (0, 1): there MONAI's hard-coded +-0.999 decoder edges and medgen's range-based ones agree."
    def __init__(self, ae): super().__init__(); self.ae = ae
    def encode_stage_2_inputs(self, x): return torch.sigmoid(self.ae.encode_stage_2_inputs(x)) * 0.98 + 0.01
    def decode_stage_2_outputs(self, z): return self.ae.decode_stage_2_outputs(z)


def likelihood_diff(a, b, all_terms=True) -> float:
    (la, ma), (lb, mb) = a, b
    if not all_terms:  # drop L_0 (the last map): medgen's decoder edges follow scaled_input_range, MONAI's are fixed
        la, lb, ma, mb = la - ma[-1].flatten(1).mean(1), lb - mb[-1].flatten(1).mean(1), ma[:-1], mb[:-1]
    return max(maxdiff(la, lb), maxdiff(torch.stack(ma), torch.stack(mb)))


@pytest.mark.parametrize("shape", [(5, 6), (4, 4), (3, 7), (6, 5, 4), (7, 7, 2)])
def test_pad_crop_equal_monai(shape):
    for target in [(8, 8), (7, 9), (4, 3), (8, 0), (6, 6, 6), (9, 8, 5), (3, -1, 7)]:
        if len(target) != len(shape): continue
        x = rand(2, 3, *shape)
        assert torch.equal(_pad_to(x, target), torch.stack([SpatialPad(spatial_size=target)(i) for i in x]).as_tensor())
        assert torch.equal(_center_crop(x, target), torch.stack([CenterSpatialCrop(roi_size=target)(i) for i in x]).as_tensor())
        if all(t >= n for t, n in zip(target, shape)):  # crop(pad(x)) == x unless an odd side is padded to an even one
            exact = all(not (t % 2 == 0 and n % 2 == 1) for t, n in zip(target, shape))
            assert torch.equal(_center_crop(_pad_to(x, target), shape), x) == exact


def test_pad_values():
    z = torch.arange(1, 31.).view(1, 1, 5, 6)
    p = _pad_to(z, (8, 8))
    assert p.shape == (1, 1, 8, 8) and p.sum() == z.sum()
    assert torch.equal(p[0, 0, 1:6, 1:7], z[0, 0])          # rows 5 -> 8: 1 before, 2 after; cols 6 -> 8: 1 and 1
    assert torch.equal(_center_crop(p, (5, 6))[0, 0, :4], z[0, 0, 1:])  # MONAI's crop starts one row late


@pytest.mark.parametrize("sd", [2, 3])
def test_training_call_equals_monai(sd):
    img, lat, pad = CASES[sd]
    ae, x, t = autoencoder(sd), rand(*img, seed=1).sigmoid(), torch.tensor([3, 17])
    z_T, ctx, c_img = rand(2, 2, *pad, seed=2), rand(2, 3, 4, seed=3), rand(2, 2, *pad, seed=4)
    pair = inferers("ddpm", shapes=(list(pad), list(lat)))
    assert maxdiff(*both("__call__", pair, x, ae, unet(sd, conditioning_dim=4), z_T, t, condition=ctx)) <= TOL
    assert maxdiff(*both("__call__", pair, x, ae, unet(sd, in_channels=4), z_T, t, condition=c_img, mode="concat")) <= TOL
    xp = rand(*PLAIN[sd], seed=5).sigmoid()
    zp = rand(2, 2, *(n // 2 for n in PLAIN[sd][2:]), seed=6)
    pair = inferers("ddpm", scale=1.7, schedule="cosine")
    assert maxdiff(*both("__call__", pair, xp, ae, unet(sd), zp, t)) <= TOL


def test_training_call_is_base_call_on_scaled_latents():
    ae, x, t, s = autoencoder(2), rand(*PLAIN[2], seed=7).sigmoid(), torch.tensor([1, 19]), 0.37
    noise, m, sched = rand(2, 2, 6, 6, seed=8), unet(2), DDPMScheduler(20)
    torch.manual_seed(0); a = LatentDiffusionInferer(sched, scale_factor=s)(x, ae, m, noise, t)
    torch.manual_seed(0); z = ae.encode_stage_2_inputs(x) * s
    assert torch.equal(a, DiffusionInferer(sched)(z, m, noise, t))
    out = LatentDiffusionInferer(sched, s)(x.requires_grad_(), ae, m, noise, t)
    out.sum().backward()
    assert x.grad is None and all(p.grad is None for p in ae.parameters())  # the autoencoder is frozen
    assert any(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize("sd", [2, 3])
def test_sample_equals_monai(sd):
    img, lat, pad = CASES[sd]
    ae, m, m_ca = autoencoder(sd), unet(sd), unet(sd, conditioning_dim=4)
    z_T, ctx = rand(2, 2, *pad, seed=9), rand(2, 3, 4, seed=10)
    pair = inferers("ddpm", shapes=(list(pad), list(lat)))  # stochastic steps, global seed, pad/crop, intermediates
    (a, ia), (b, ib) = both("sample", pair, z_T, ae, m, save_intermediates=True, intermediate_steps=5, verbose=False)
    assert a.shape == img and len(ia) == len(ib) == 4 and all(i.shape == img for i in ia)
    assert maxdiff(torch.stack([a, *ia]), torch.stack([b, *ib])) <= TOL
    pair = inferers("ddim", T=50, n=10, shapes=(list(pad), list(lat)))
    assert maxdiff(*both("sample", pair, z_T, ae, m_ca, conditioning=ctx, cfg=3.0, verbose=False)) <= TOL
    assert maxdiff(*both("sample", pair, z_T, ae, m_ca, conditioning=ctx, cfg=2.0, cfg_fill_value=0.0, verbose=False)) <= TOL
    zp = rand(2, 2, *(n // 2 for n in PLAIN[sd][2:]), seed=11)
    pair = inferers("ddim", scale=1.3, T=50, n=10, prediction_type="v_prediction")
    (a, ia), (b, ib) = both("sample", pair, zp, ae, m, save_intermediates=True, intermediate_steps=10, verbose=False)
    assert len(ia) == len(ib) >= 1 and maxdiff(torch.stack([a, *ia]), torch.stack([b, *ib])) <= TOL
    c_img = rand(2, 2, *(n // 2 for n in PLAIN[sd][2:]), seed=12)
    pair = inferers("ddim", T=50, n=5)
    assert maxdiff(*both("sample", pair, zp, ae, unet(sd, in_channels=4), conditioning=c_img, mode="concat", cfg=2.0,
                         verbose=False)) <= TOL


def test_sample_decodes_base_latents():
    "The sample is D(crop(z_0) / s) of the base class's sample; intermediates are the decoded base intermediates."
    ae, m, s = autoencoder(2), unet(2), 0.25
    sched = DDIMScheduler(50, clip_sample=False); sched.set_timesteps(5)
    z_T = rand(2, 2, 6, 6, seed=13)
    x, xs = LatentDiffusionInferer(sched, s, [6, 6], [5, 5]).sample(z_T, ae, m, save_intermediates=True,
                                                                    intermediate_steps=1, verbose=False)
    z, zs = DiffusionInferer(sched).sample(z_T, m, save_intermediates=True, intermediate_steps=1, verbose=False)
    dec = lambda v: ae.decode_stage_2_outputs(v[:, :, 1:6, 1:6] / s)  # crop (6 -> 5) starts at 6 // 2 - 5 // 2 = 1
    with torch.no_grad():
        assert torch.equal(x, dec(z)) and len(xs) == len(zs) == 5
        assert all(torch.equal(a, dec(b)) for a, b in zip(xs, zs))
    d = DDPMScheduler(20)
    gen = lambda seed: LatentDiffusionInferer(d, s).sample(z_T, ae, m, verbose=False, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(gen(1), gen(1)) and not torch.equal(gen(1), gen(2))


@pytest.mark.parametrize("sd", [2, 3])
def test_likelihood_equals_monai(sd):
    ae, m = autoencoder(sd), unet(sd)
    x, lat = rand(*PLAIN[sd], seed=14).sigmoid(), tuple(n // 2 for n in PLAIN[sd][2:])
    pair = inferers("ddpm")
    for resample, mode in ((False, "nearest"), (True, "nearest"), (True, "bilinear" if sd == 2 else "trilinear")):
        a, b = both("get_likelihood", pair, x, InRange(ae), m, save_intermediates=True, verbose=False,
                    resample_latent_likelihoods=resample, resample_interpolation_mode=mode)
        assert a[0].shape == (2,) and len(a[1]) == 20
        assert a[1][0].shape[2:] == (PLAIN[sd][2:] if resample else lat)
        assert likelihood_diff(a, b) <= TOL
    a, b = both("get_likelihood", pair, x, ae, m, save_intermediates=True, verbose=False)  # raw KL latents
    assert likelihood_diff(a, b, all_terms=False) <= TOL
    a, b = both("get_likelihood", pair, x, InRange(ae), m, verbose=False)  # totals only, the default return
    assert maxdiff(a, b) <= TOL
    img, lat, pad = CASES[sd]
    pair = inferers("ddpm", shapes=(list(pad), list(lat)))
    a, b = both("get_likelihood", pair, rand(*img, seed=15).sigmoid(), vqvae(sd), m, save_intermediates=True, verbose=False)
    assert a[1][0].shape[2:] == pad and likelihood_diff(a, b, all_terms=False) <= TOL


def test_likelihood_is_base_likelihood_on_scaled_latents():
    ae, m, x, s = autoencoder(2), unet(2), rand(*PLAIN[2], seed=16).sigmoid(), 0.5
    kw = dict(original_input_range=(0, 15), scaled_input_range=(-2, 2), verbose=False)
    torch.manual_seed(0); a = LatentDiffusionInferer(DDPMScheduler(20), s).get_likelihood(x, ae, m, **kw)
    torch.manual_seed(0); z = ae.encode_stage_2_inputs(x) * s
    assert torch.equal(a, DiffusionInferer(DDPMScheduler(20)).get_likelihood(z, m, **kw))  # ranges reach L_0


class QuantizedOptional(nn.Module):
    "GM's VQVAE interface: encode_stage_2_inputs(x, quantized=True)."
    def __init__(self, vq): super().__init__(); self.vq = vq
    def encode_stage_2_inputs(self, x, quantized=True):
        z = self.vq.encode(x)
        return self.vq.quantize(z)[0] if quantized else z
    def decode_stage_2_outputs(self, z): return self.vq.decode_stage_2_outputs(z)


def test_quantized_reaches_a_gm_vqvae():
    vq = vqvae(2)
    ae, m, x = QuantizedOptional(vq), unet(2), rand(*PLAIN[2], seed=17).sigmoid()
    noise, t, sched = rand(2, 2, 6, 6, seed=18), torch.tensor([2, 9]), DDPMScheduler(20)
    inf = LatentDiffusionInferer(sched)
    with torch.no_grad():
        assert torch.equal(inf(x, ae, m, noise, t), DiffusionInferer(sched)(vq.encode_stage_2_inputs(x), m, noise, t))
        assert torch.equal(inf(x, ae, m, noise, t, quantized=False), DiffusionInferer(sched)(vq.encode(x), m, noise, t))
    torch.manual_seed(0); a = inf.get_likelihood(x, ae, m, quantized=False, verbose=False)
    torch.manual_seed(0); b = DiffusionInferer(sched).get_likelihood(vq.encode(x), m, verbose=False)
    assert torch.equal(a, b)


class SpadeDecoder(nn.Module):
    "An autoencoder whose decoder takes `seg` (SPADE): records what it got."
    label_nc = 3
    def __init__(self, ae): super().__init__(); self.ae, self.seen = ae, []
    def encode_stage_2_inputs(self, x): return self.ae.encode_stage_2_inputs(x)
    def decode_stage_2_outputs(self, z, seg): self.seen.append(seg); return self.ae.decode_stage_2_outputs(z) + seg.mean()


def test_seg_goes_to_the_stage_that_takes_it():
    ae, m = SpadeDecoder(autoencoder(2)), unet(2)
    sched = DDIMScheduler(50); sched.set_timesteps(3)
    seg, z_T = torch.ones(2, 3, 12, 12), rand(2, 2, 6, 6, seed=19)
    x, xs = LatentDiffusionInferer(sched).sample(z_T, ae, m, seg=seg, save_intermediates=True, intermediate_steps=1,
                                                 verbose=False)
    assert len(ae.seen) == 1 + len(xs) and all(s is seg for s in ae.seen)  # the plain UNet did not get it
    ae.decoder = nn.Module(); ae.decoder.label_nc = 3
    m.label_nc = 4
    with pytest.raises(ValueError, match="number of semantic labels"):
        LatentDiffusionInferer(sched).sample(z_T, ae, m, seg=seg, verbose=False)


def test_scale_factor_accepts_a_tensor():
    inf = LatentDiffusionInferer(DDPMScheduler(20), scale_factor=1 / torch.tensor(4.0))
    assert inf.scale_factor == 0.25 and isinstance(inf.scale_factor, float)


def test_errors():
    s = DDIMScheduler(20); s.set_timesteps(4)
    ae, m, x = autoencoder(2), unet(2), rand(*PLAIN[2]).sigmoid()
    z, t = rand(2, 2, 6, 6), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="autoencoder_latent_shape must be None"): LatentDiffusionInferer(s, ldm_latent_shape=[8, 8])
    with pytest.raises(ValueError, match="vice versa"): LatentDiffusionInferer(s, autoencoder_latent_shape=[6, 6])
    with pytest.raises(ValueError, match="same number of spatial dims"): LatentDiffusionInferer(s, 1.0, [8, 8, 8], [6, 6])
    with pytest.raises(TypeError, match="ldm_latent_shape must be a sequence of ints"): LatentDiffusionInferer(s, 1.0, [8, 8.5], [6, 6])
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scale_factor must be a finite number > 0"): LatentDiffusionInferer(s, bad)
    inf = LatentDiffusionInferer(s)
    with pytest.raises(NotImplementedError, match="mode must be"): inf(x, ae, m, z, t, mode="sum")
    with pytest.raises(NotImplementedError, match="mode must be"): inf.sample(z, ae, m, mode="sum", verbose=False)
    with pytest.raises(ValueError, match="conditioning is required"): inf.sample(z, ae, m, mode="concat", verbose=False)
    with pytest.raises(ValueError, match="noise must have the shape"): inf(x, ae, m, z[..., :4, :4], t)
    with pytest.raises(ValueError, match="neither diffusion_model nor"): inf.sample(z, ae, m, seg=x, verbose=False)
    with pytest.raises(ValueError, match="takes no `seg` argument"): inf(x, ae, m, z, t, seg=x)
    with pytest.raises(NotImplementedError, match="need a DDPMScheduler"): inf.get_likelihood(x, ae, m, verbose=False)
    with pytest.raises(ValueError, match="resample_interpolation mode"):
        LatentDiffusionInferer(DDPMScheduler(20)).get_likelihood(x, ae, m, resample_latent_likelihoods=True,
                                                                 resample_interpolation_mode="area", verbose=False)
    padded = LatentDiffusionInferer(s, 1.0, [8, 8], [6, 6])
    with pytest.raises(ValueError, match="spatial shape ldm_latent_shape"): padded.sample(z, ae, m, verbose=False)
    with pytest.raises(ValueError, match="has 2 sizes but the latents"): _pad_to(rand(1, 1, 4, 4, 4), (8, 8))


def test_spade_models_equal_monai():
    "SPADE autoencoder (seg to the decoder) with a plain UNet, and with a SPADE UNet (seg to both), as MONAI routes it."
    from monai.networks.nets import SPADEAutoencoderKL, SPADEDiffusionModelUNet
    torch.manual_seed(0)
    ae = SPADEAutoencoderKL(spatial_dims=2, label_nc=3, channels=(4, 4), latent_channels=2, num_res_blocks=1,
                            norm_num_groups=2, attention_levels=(False, False), with_encoder_nonlocal_attn=False,
                            with_decoder_nonlocal_attn=False, spade_intermediate_channels=4).eval()
    spade_unet = SPADEDiffusionModelUNet(spatial_dims=2, in_channels=2, out_channels=2, label_nc=3, channels=(8, 8),
                                         attention_levels=(False, True), num_res_blocks=1, norm_num_groups=4,
                                         num_head_channels=8, spade_intermediate_channels=4).eval()
    seg = (rand(2, 3, 12, 12, seed=20) > 0).float()
    z_T, x = rand(2, 2, 6, 6, seed=21), rand(*PLAIN[2], seed=22).sigmoid()
    pair = inferers("ddim", T=50, n=5)
    for m in (unet(2), spade_unet):
        (a, ia), (b, ib) = both("sample", pair, z_T, ae, m, seg=seg, save_intermediates=True, intermediate_steps=1,
                                verbose=False)
        assert len(ia) == len(ib) == 5 and maxdiff(torch.stack([a, *ia]), torch.stack([b, *ib])) <= TOL
    pair = inferers("ddpm")
    assert maxdiff(*both("__call__", pair, x, ae, spade_unet, z_T, torch.tensor([3, 7]), seg=seg[..., :6, :6])) <= TOL
    a, b = both("get_likelihood", pair, x, InRange(ae), spade_unet, seg=seg[..., :6, :6], save_intermediates=True,
                verbose=False)
    assert likelihood_diff(a, b) <= TOL


@pytest.mark.parametrize("kw", [dict(multiplier=0.5, out_channels=2, bias=True), dict(size=(4, 5)), dict(n_stages=0),
                                dict(spatial_dims=3, method="trilinear", multiplier=2.0)])
def test_spatial_rescaler_scripts_and_matches_interpolate(kw):
    "GM's SpatialRescaler: optional 1x1 map then interpolate; TorchScript gives the eager output."
    import warnings
    import torch.nn.functional as F
    from medgen import SpatialRescaler
    kw = {"spatial_dims": 2, "in_channels": 1, **kw}
    net = SpatialRescaler(**kw)
    x = torch.randn(2, 1, *(8,) * kw["spatial_dims"], generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(net)
    with torch.no_grad():
        out = net(x)
        assert torch.equal(scripted(x), out)
        mapped = net.channel_mapper(x)
        ref = mapped if kw.get("n_stages", 1) == 0 else F.interpolate(
            mapped, size=kw.get("size"), scale_factor=kw.get("multiplier"), mode=kw.get("method", "bilinear"))
    assert torch.equal(out, ref)
    assert ("out_channels" in kw) == any(k.startswith("channel_mapper.conv") for k in net.state_dict())
