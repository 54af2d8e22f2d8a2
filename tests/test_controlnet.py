"medgen.controlnet against MONAI core on the same weights (float32, max abs diff <= 1e-5), invariants, errors."
from functools import partial
import contextlib
import io

import pytest
import torch
from torch import nn

import medgen

import monai.inferers as MI
import monai.networks.schedulers as MS
from monai.networks.nets import AutoencoderKL as CoreAutoencoderKL
from monai.networks.nets import ControlNet as CoreControlNet
from monai.networks.nets import DiffusionModelUNet as CoreUNet
from monai.networks.nets.controlnet import ControlNetConditioningEmbedding as CoreEmbedding

from medgen.autoencoderkl import AutoencoderKL
from medgen.controlnet import (ControlNet, ControlNetConditioningEmbedding, ControlNetDiffusionInferer,
                               ControlNetLatentDiffusionInferer, ControlNetStep, controlnet_from_unet,
                               copy_encoder_weights)
from medgen.hub import from_pretrained, save_pretrained
from medgen.inferers import DiffusionInferer
from medgen.schedulers import DDIMScheduler, DDPMScheduler
from medgen.training import DiffusionStep, StepContext, Trainer, TrainConfig
from medgen.unet import DiffusionModelUNet
from helpers import to_gm
from helpers import randomize as _randomize

randomize = partial(_randomize, std=0.1)

TOL = 1e-5
SMALL = dict(num_channels=(16, 32, 32), attention_levels=(False, True, True), num_res_blocks=1, norm_num_groups=8,
             num_head_channels=8)
CONFIGS = {
    "self-attention": SMALL,
    "cross-attention+classes": dict(SMALL, with_conditioning=True, cross_attention_dim=12, num_class_embeds=4),
    "resblock-updown": dict(SMALL, resblock_updown=True, num_res_blocks=(2, 1, 2)),
    "fused-qkv-no-fc": dict(SMALL, use_combined_linear=True, include_fc=False),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def core_names(kw: dict) -> dict:
    kw = dict(kw)
    kw["channels"] = kw.pop("num_channels")
    return kw


def rel_diff(a, b) -> float:
    "Max abs difference, relative to the reference's magnitude where it exceeds 1."
    if isinstance(a, (tuple, list)): return max(rel_diff(u, v) for u, v in zip(a, b))
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1)).item()


def cn_inputs(sd: int, kw: dict, halvings: int, size: int = 8, batch: int = 2, cond_channels: int = 2):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 1, *[size] * sd, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    c = torch.randn(batch, cond_channels, *[size * 2 ** halvings] * sd, generator=g)
    extra = {}
    if kw.get("with_conditioning"): extra["context"] = torch.randn(batch, 3, kw["cross_attention_dim"], generator=g)
    if kw.get("num_class_embeds"): extra["class_labels"] = torch.randint(0, kw["num_class_embeds"], (batch,), generator=g)
    return x, t, c, extra


# ---------------------------------------------------------------- the network

@pytest.mark.parametrize("sd", [2, 3])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_controlnet_parity(sd, name):
    emb = (8, 16) if name == "self-attention" else (8,)
    kw = dict(CONFIGS[name], spatial_dims=sd, in_channels=1, conditioning_embedding_in_channels=2,
              conditioning_embedding_num_channels=emb)
    core = randomize(CoreControlNet(**core_names(kw)))
    ours = ControlNet(**kw).eval()
    ours.load_state_dict(core.state_dict())
    x, t, c, extra = cn_inputs(sd, kw, len(emb) - 1)
    with torch.no_grad():
        (da, ma), (db, mb) = ours(x, t, c, 0.7, **extra), core(x, t, c, conditioning_scale=0.7, **extra)
    assert len(da) == len(db) and rel_diff([*da, ma], [*db, mb]) <= TOL
    assert all(a.shape == b.shape for a, b in zip(da, db))


@pytest.mark.parametrize("sd", [2, 3])
def test_conditioning_embedding_parity(sd):
    core = randomize(CoreEmbedding(sd, 2, 8, channels=(4, 8, 8)))
    ours = ControlNetConditioningEmbedding(sd, 2, 8, num_channels=(4, 8, 8))
    ours.load_state_dict(core.state_dict())
    c = torch.randn(2, 2, *[16] * sd, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(): out = ours(c)
    assert out.shape == (2, 8, *[4] * sd) and rel_diff(out, core(c)) <= TOL
    fresh = ControlNetConditioningEmbedding(sd, 2, 8, channels=(4,))  # MONAI core's name; a fresh E(c) is zero
    assert fresh(c).shape == (2, 8, *[16] * sd) and fresh(c).abs().max() == 0


def test_gm_state_dict_and_load_old_state_dict():
    kw = dict(CONFIGS["cross-attention+classes"], spatial_dims=2, in_channels=1, conditioning_embedding_num_channels=(8,))
    core = randomize(CoreControlNet(**core_names(kw)))
    gm = to_gm(core.state_dict())
    assert gm.keys() != core.state_dict().keys()
    check = CoreControlNet(**core_names(kw))  # MONAI core's converter takes this GM key set ...
    with contextlib.redirect_stdout(io.StringIO()): check.load_old_state_dict(dict(gm))
    assert all(torch.equal(v, core.state_dict()[k]) for k, v in check.state_dict().items())
    for load in ("load_state_dict", "load_old_state_dict"):  # ... and so do both of medgen's loaders
        ours = ControlNet(**kw).eval()
        getattr(ours, load)(dict(gm))
        assert all(torch.equal(v, core.state_dict()[k]) for k, v in ours.state_dict().items())


def test_residual_shapes_and_conditioning_scale_is_linear():
    kw = dict(SMALL, spatial_dims=2, in_channels=1, conditioning_embedding_num_channels=(8,))
    net = randomize(ControlNet(**kw))
    x, t, c, _ = cn_inputs(2, kw, 0, size=16, cond_channels=1)
    with torch.no_grad():
        (d1, m1), (d3, m3), (d0, m0) = net(x, t, c), net(x, t, c, 3.0), net(x, t, c, 0.0)
    assert [tuple(r.shape[1:]) for r in d1] == [(16, 16, 16), (16, 16, 16), (16, 8, 8), (32, 8, 8), (32, 4, 4), (32, 4, 4)]
    assert m1.shape == (2, 32, 4, 4)
    assert rel_diff([*d3, m3], [3 * r for r in [*d1, m1]]) <= TOL
    assert all(r.abs().max() == 0 for r in [*d0, m0])


@pytest.mark.parametrize("sd", [2, 3])
def test_fresh_controlnet_leaves_the_unet_unchanged(sd):
    kw = dict(CONFIGS["cross-attention+classes"], spatial_dims=sd, in_channels=1)
    unet = randomize(DiffusionModelUNet(**kw, out_channels=1))
    cn = controlnet_from_unet(unet, conditioning_embedding_in_channels=2, conditioning_embedding_num_channels=(4, 8))
    x, t, c, extra = cn_inputs(sd, kw, 1)
    with torch.no_grad():
        down, mid = cn(x, t, c, 2.5, **extra)
        plain = unet(x, t, **extra)
        controlled = unet(x, t, **extra, down_block_additional_residuals=down, mid_block_additional_residual=mid)
    assert all(r.abs().max() == 0 for r in [*down, mid]) and torch.equal(plain, controlled)


def test_controlnet_from_unet_copies_what_the_tutorials_copy():
    kw = dict(CONFIGS["cross-attention+classes"], spatial_dims=2, in_channels=1)
    core_unet = randomize(CoreUNet(**core_names(kw), out_channels=1))
    tutorial = CoreControlNet(**core_names(kw), conditioning_embedding_num_channels=(8,))
    tutorial.load_state_dict(core_unet.state_dict(), strict=False)  # GM's / MONAI's tutorials
    ours = ControlNet(**kw, conditioning_embedding_num_channels=(8,))
    copied = copy_encoder_weights(ours, core_unet.state_dict())
    assert sorted(copied) == sorted(k for k in tutorial.state_dict() if k in core_unet.state_dict())
    assert "class_embedding.weight" in copied and not any(k.startswith("controlnet_") for k in copied)
    assert all(torch.equal(ours.state_dict()[k], tutorial.state_dict()[k]) for k in copied)
    unet = DiffusionModelUNet(**kw, out_channels=1)
    unet.load_state_dict(core_unet.state_dict())
    built = controlnet_from_unet(unet, conditioning_embedding_num_channels=(8,))
    assert built.config == ControlNet(**kw).config and built.num_class_embeds == 4
    assert all(torch.equal(built.state_dict()[k], ours.state_dict()[k]) for k in copied)
    with pytest.raises(ValueError, match="lacks the ControlNet weights"): copy_encoder_weights(ours, {})
    with pytest.raises(RuntimeError, match="size mismatch"):  # a UNet of another width
        copy_encoder_weights(ours, DiffusionModelUNet(**dict(kw, num_channels=(8, 32, 32)), out_channels=1))


def test_errors():
    kw = dict(SMALL, spatial_dims=2, in_channels=1, conditioning_embedding_num_channels=(8, 8))
    net = ControlNet(**kw)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    for bad in (torch.randn(2, 1, 8, 8), torch.randn(2, 1, 32, 32), torch.randn(2, 3, 16, 16), torch.randn(3, 1, 16, 16),
                torch.randn(2, 1, 16, 16, 16)):
        for err in (ValueError, RuntimeError):  # ours names the argument; GM's/MONAI's raise RuntimeError
            with pytest.raises(err, match="controlnet_cond"): net(x, t, bad)
    assert net(x, t, torch.randn(1, 1, 16, 16))[1].shape == (2, 32, 2, 2)  # one control image broadcasts
    with pytest.raises(TypeError, match="conditioning_embedding_num_channels"):
        ControlNet(**dict(kw, conditioning_embedding_num_channels=None))
    with pytest.raises(ValueError, match="conditioning_embedding_num_channels"):
        ControlNet(**dict(kw, conditioning_embedding_num_channels=()))
    with pytest.raises(ValueError, match="multiple of norm_num_groups"): ControlNet(**dict(kw, norm_num_groups=5))
    with pytest.raises(ValueError, match="attention_levels"): ControlNet(**dict(kw, attention_levels=(True,)))
    with pytest.raises(ValueError, match="cross_attention_dim"): ControlNet(**kw, with_conditioning=True)
    with pytest.raises(ValueError, match="with_conditioning=True"): ControlNet(**kw, cross_attention_dim=4)
    with pytest.raises(ValueError, match="num_res_blocks"): ControlNet(**dict(kw, num_res_blocks=(1, 1)))
    with pytest.raises(ValueError, match="give one of them"): ControlNet(**kw, channels=(8, 8, 8))
    with pytest.raises(ValueError, match="with_conditioning"): net(x, t, torch.randn(2, 1, 16, 16), context=torch.randn(2, 1, 4))
    with pytest.raises(ValueError, match="class_labels"): ControlNet(**kw, num_class_embeds=3)(x, t, torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match="divisible"): net(torch.randn(2, 1, 6, 6), t, torch.randn(2, 1, 12, 12))
    with pytest.raises(ValueError, match="x: got shape"): net(torch.randn(2, 2, 8, 8), t, torch.randn(2, 1, 16, 16))
    core = dict(core_names(SMALL), spatial_dims=2, in_channels=1, conditioning_embedding_num_channels=(8, 8))
    with pytest.raises(RuntimeError): CoreControlNet(**core)(x, t, torch.randn(2, 1, 32, 32))  # GM/MONAI: RuntimeError


def test_hub_round_trip(tmp_path):
    kw = dict(CONFIGS["cross-attention+classes"], spatial_dims=2, in_channels=1, conditioning_embedding_num_channels=(8,))
    net = randomize(ControlNet(**kw))
    save_pretrained(net, tmp_path)
    back = from_pretrained(tmp_path)
    assert type(back) is ControlNet and back.config == net.config
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in net.state_dict().items())


# ---------------------------------------------------------------- the inferers

def models(sd: int, context_dim: int | None = None, in_channels: int = 1, cond=(8,)):
    kw = dict(spatial_dims=sd, in_channels=in_channels, channels=(8, 8), attention_levels=(False, True),
              num_res_blocks=1, norm_num_groups=4, num_head_channels=8, with_conditioning=context_dim is not None,
              cross_attention_dim=context_dim)
    unet = randomize(CoreUNet(**kw, out_channels=1), seed=1)
    core = randomize(CoreControlNet(**kw, conditioning_embedding_num_channels=cond), seed=2)
    ours = ControlNet(**kw, conditioning_embedding_num_channels=cond).eval()
    ours.load_state_dict(core.state_dict())
    return unet, core, ours


def pair(kind: str, T: int = 20, n: int = 20, latent: bool = False, **kw):
    o, r = {"ddpm": (DDPMScheduler, MS.DDPMScheduler), "ddim": (DDIMScheduler, MS.DDIMScheduler)}[kind]
    o, r = o(T, clip_sample=False), r(T, clip_sample=False)
    o.set_timesteps(n), r.set_timesteps(n)
    if latent: return ControlNetLatentDiffusionInferer(o, **kw), MI.ControlNetLatentDiffusionInferer(r, **kw)
    return ControlNetDiffusionInferer(o), MI.ControlNetDiffusionInferer(r)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def seeded(fn, *args, seed=0, **kw):
    torch.manual_seed(seed)
    return fn(*args, **kw)


@pytest.mark.parametrize("sd", [2, 3])
def test_training_call_equals_monai(sd):
    unet, core, ours = models(sd, context_dim=4)
    x0, c, noise, ctx = rand(2, 1, *[8] * sd), rand(2, 1, *[8] * sd, seed=1), rand(2, 1, *[8] * sd, seed=2), rand(2, 3, 4, seed=3)
    o, r = pair("ddpm")
    t = torch.tensor([3, 17])
    with torch.no_grad():
        assert rel_diff(o(x0, unet, ours, noise, t, c, condition=ctx), r(x0, unet, core, noise, t, c, condition=ctx)) <= TOL
        unet2, core2, ours2 = models(sd, in_channels=2)  # concat: the ControlNet sees [x_t, condition] too
        cat = rand(2, 1, *[8] * sd, seed=4)
        assert rel_diff(o(x0, unet2, ours2, noise, t, c, condition=cat, mode="concat"),
                        r(x0, unet2, core2, noise, t, c, condition=cat, mode="concat")) <= TOL


@pytest.mark.parametrize("sd", [2, 3])
def test_sample_equals_monai(sd):
    unet, core, ours = models(sd, context_dim=4)
    x_T, c, ctx = rand(2, 1, *[8] * sd), rand(2, 1, *[8] * sd, seed=1), rand(2, 3, 4, seed=3)
    o, r = pair("ddim", T=50, n=10)
    assert rel_diff(o.sample(x_T, unet, ours, c, conditioning=ctx, verbose=False),
                    r.sample(x_T, unet, core, c, conditioning=ctx, verbose=False)) <= TOL
    assert rel_diff(o.sample(x_T, unet, ours, c, conditioning=ctx, cfg=3.0, verbose=False),
                    r.sample(x_T, unet, core, c, conditioning=ctx, cfg=3.0, verbose=False)) <= TOL
    o, r = pair("ddpm")  # stochastic steps from the global seed, with intermediates
    a, ia = seeded(o.sample, x_T, unet, ours, c, conditioning=ctx, save_intermediates=True, intermediate_steps=5, verbose=False)
    b, ib = seeded(r.sample, x_T, unet, core, c, conditioning=ctx, save_intermediates=True, intermediate_steps=5, verbose=False)
    assert len(ia) == len(ib) == 4 and rel_diff([a, *ia], [b, *ib]) <= TOL


@pytest.mark.parametrize("sd", [2, 3])
def test_likelihood_equals_monai(sd):
    unet, core, ours = models(sd, context_dim=4)
    x, c, ctx = rand(2, 1, *[8] * sd).sigmoid() * 0.98 + 0.01, rand(2, 1, *[8] * sd, seed=1), rand(2, 3, 4, seed=3)
    o, r = pair("ddpm")
    a, ma = seeded(o.get_likelihood, x, unet, ours, c, conditioning=ctx, save_intermediates=True, verbose=False)
    b, mb = seeded(r.get_likelihood, x, unet, core, c, conditioning=ctx, save_intermediates=True, verbose=False)
    assert a.shape == (2,) and len(ma) == len(mb) == 20 and rel_diff([a, *ma], [b, *mb]) <= TOL


def test_inferers_are_the_base_inferers_with_a_wrapped_call():
    "A fresh ControlNet: sampling and likelihood equal DiffusionInferer's on the UNet alone, bit for bit."
    unet = randomize(DiffusionModelUNet(2, 1, 1, num_channels=(8, 8), attention_levels=(False, True), num_res_blocks=1,
                                        norm_num_groups=4))
    cn = controlnet_from_unet(unet, conditioning_embedding_num_channels=(4,))
    x_T, c = rand(2, 1, 8, 8), rand(2, 1, 8, 8, seed=1)
    sched = DDPMScheduler(20)
    g = lambda: torch.Generator().manual_seed(7)
    assert torch.equal(ControlNetDiffusionInferer(sched).sample(x_T, unet, cn, c, verbose=False, generator=g()),
                       DiffusionInferer(sched).sample(x_T, unet, verbose=False, generator=g()))
    x = x_T.sigmoid()
    assert torch.equal(ControlNetDiffusionInferer(sched).get_likelihood(x, unet, cn, c, verbose=False, generator=g()),
                       DiffusionInferer(sched).get_likelihood(x, unet, verbose=False, generator=g()))
    with pytest.raises(NotImplementedError): ControlNetDiffusionInferer(sched).sample(x_T, unet, cn, c, mode="bad")
    with pytest.raises(ValueError, match="seg"): ControlNetDiffusionInferer(sched).sample(x_T, unet, cn, c, seg=x, verbose=False)


class _InRange(nn.Module):
    "Latents in (0, 1): there MONAI's fixed decoder bin edges and medgen's range-based ones agree."
    def __init__(self, ae): super().__init__(); self.ae = ae
    def encode_stage_2_inputs(self, x): return torch.sigmoid(self.ae.encode_stage_2_inputs(x)) * 0.98 + 0.01
    def decode_stage_2_outputs(self, z): return self.ae.decode_stage_2_outputs(z)


def autoencoders(sd: int):
    kw = dict(spatial_dims=sd, in_channels=1, out_channels=1, latent_channels=1, num_res_blocks=1, norm_num_groups=2,
              attention_levels=(False, False), with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)
    core = randomize(CoreAutoencoderKL(**kw, channels=(4, 4)), seed=5)
    ours = AutoencoderKL(**kw, num_channels=(4, 4)).eval()
    ours.load_state_dict(core.state_dict())
    return core, ours


@pytest.mark.parametrize("sd", [2, 3])
def test_latent_inferer_equals_monai(sd):
    core_ae, our_ae = autoencoders(sd)
    unet, core, ours = models(sd)
    img, c = rand(2, 1, *[16] * sd), rand(2, 1, *[16] * sd, seed=1)  # c at the image size: resized to the latents'
    noise, t = rand(2, 1, *[8] * sd, seed=2), torch.tensor([3, 17])
    o, r = pair("ddpm", latent=True, scale_factor=0.8)
    with torch.no_grad():
        assert rel_diff(seeded(o, img, our_ae, unet, ours, noise, t, c), seeded(r, img, core_ae, unet, core, noise, t, c)) <= TOL
    o, r = pair("ddim", T=50, n=10, latent=True, scale_factor=0.8)
    a, ia = o.sample(noise, our_ae, unet, ours, c, save_intermediates=True, intermediate_steps=10, verbose=False)
    b, ib = r.sample(noise, core_ae, unet, core, c, save_intermediates=True, intermediate_steps=10, verbose=False)
    assert a.shape == img.shape and len(ia) == len(ib) >= 1 and rel_diff([a, *ia], [b, *ib]) <= TOL
    o, r = pair("ddpm", latent=True, scale_factor=0.8)
    a, ma = seeded(o.get_likelihood, img, _InRange(our_ae), unet, ours, c, save_intermediates=True, verbose=False)
    b, mb = seeded(r.get_likelihood, img, _InRange(core_ae), unet, core, c, save_intermediates=True, verbose=False)
    assert len(ma) == 20 and rel_diff([a, *ma], [b, *mb]) <= TOL


def test_latent_control_image_is_resized_for_the_embedding():
    "With L halvings in E, c is resized to 2^L times the latent grid (MONAI: the latent grid, equal for L = 0)."
    _, ae = autoencoders(2)
    unet, _, _ = models(2)
    ours = ControlNet(2, 1, channels=(8, 8), attention_levels=(False, True), num_res_blocks=1, norm_num_groups=4,
                      conditioning_embedding_num_channels=(4, 4))
    copy_encoder_weights(ours, unet)
    randomize(ours.controlnet_cond_embedding, seed=3)
    img, c = rand(2, 1, 16, 16), rand(2, 1, 32, 32, seed=1)
    o = pair("ddim", T=50, n=5, latent=True)[0]
    out = o.sample(rand(2, 1, 8, 8, seed=2), ae, unet, ours, c, verbose=False)
    same = o.sample(rand(2, 1, 8, 8, seed=2), ae, unet, ours, torch.nn.functional.interpolate(c, (16, 16)), verbose=False)
    assert out.shape == img.shape and torch.equal(out, same)


# ---------------------------------------------------------------- training

def test_step_is_diffusion_step_when_fresh_and_trains_only_the_controlnet(tmp_path):
    unet = randomize(DiffusionModelUNet(2, 1, 1, num_channels=(8, 8), attention_levels=(False, False), num_res_blocks=1,
                                        norm_num_groups=4))
    cn = controlnet_from_unet(unet, conditioning_embedding_num_channels=(4,))
    batch = {"image": rand(4, 1, 8, 8), "cond": rand(4, 1, 8, 8, seed=1)}
    ctx = lambda: StepContext(torch.Generator().manual_seed(0), 0, torch.device("cpu"))
    (phase, terms), = list(ControlNetStep(DDPMScheduler(100), model="unet")({"unet": unet, "controlnet": cn}, batch, ctx()))
    (_, base), = list(DiffusionStep(DDPMScheduler(100), model="unet")({"unet": unet}, batch, ctx()))
    assert phase == "controlnet" and torch.equal(terms["mse"], base["mse"])
    frozen = {k: v.clone() for k, v in unet.state_dict().items()}
    data = [{"image": rand(1, 8, 8, seed=i), "cond": rand(1, 8, 8, seed=100 + i)} for i in range(8)]
    Trainer(ControlNetStep(DDPMScheduler(100), model="unet"), {"unet": unet.requires_grad_(False), "controlnet": cn},
            {"controlnet": torch.optim.Adam(cn.parameters(), lr=1e-3)}, data, tmp_path,
            TrainConfig(max_steps=3, batch_size=4, progress=False, tensorboard=False)).fit()
    assert all(torch.equal(v, frozen[k]) for k, v in unet.state_dict().items())
    assert any(z.weight.abs().max() > 0 for z in [cn.controlnet_down_blocks[0], cn.controlnet_mid_block.conv])
    with pytest.raises(ValueError, match="mode"): ControlNetStep(DDPMScheduler(100), mode="add")


def _saved_activation_bytes(fn):
    "fn()'s result and the bytes autograd saved for the backward pass while it ran."
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total[0]


@pytest.mark.parametrize("name", ["ControlNet", "DiffusionModelUNet"])
def test_gradient_checkpointing_in_3d(name):
    """use_checkpointing (GM and MONAI have it for the autoencoders only): identical outputs and gradients, and the
    activations kept for the backward pass shrink to a fraction (recomputed block by block)."""
    kw = dict(spatial_dims=3, in_channels=1, num_channels=(8, 16), attention_levels=(False, True), num_res_blocks=1,
              num_head_channels=8, norm_num_groups=4)
    kw.update(conditioning_embedding_num_channels=(8,)) if name == "ControlNet" else kw.update(out_channels=1)
    g = torch.Generator().manual_seed(0)
    x, t, c = torch.randn(2, 1, 8, 8, 8, generator=g), torch.tensor([3, 500]), torch.randn(2, 1, 8, 8, 8, generator=g)
    runs = []
    for ck in (False, True):
        net = randomize(getattr(medgen, name)(**kw, use_checkpointing=ck), 1).train()
        out, saved = _saved_activation_bytes(lambda: net(x, t, c) if name == "ControlNet" else net(x, t))
        outs = [*out[0], out[1]] if name == "ControlNet" else [out]
        sum(o.square().mean() for o in outs).backward()
        runs.append((outs, saved, [p.grad for p in net.parameters()]))
    (o0, s0, g0), (o1, s1, g1) = runs
    assert all(torch.equal(a, b) for a, b in zip(o0, o1)) and all(torch.equal(a, b) for a, b in zip(g0, g1))
    assert s1 < 0.5 * s0, (s0, s1)
