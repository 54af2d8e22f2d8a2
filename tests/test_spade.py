"Tests of medgen.spade: SPADE, SPADEAutoencoderKL, SPADEDiffusionModelUNet, SPADENet (parity with MONAI core 1.6.1)."
from functools import partial
import contextlib
import inspect
import io

import pytest
import torch
import torch.nn.functional as F
from monai.inferers import LatentDiffusionInferer as CoreLDMInferer
from monai.networks.blocks.spade_norm import SPADE as CoreSPADE
from monai.networks.nets import SPADEAutoencoderKL as CoreAE
from monai.networks.nets import SPADEDiffusionModelUNet as CoreUNet
from monai.networks.nets import SPADENet as CoreNet
from monai.networks.schedulers import DDPMScheduler as CoreDDPM

from medgen.autoencoderkl import AEKLResBlock, AutoencoderKL
from medgen.hub import from_pretrained, save_pretrained
from medgen.latent_diffusion import LatentDiffusionInferer
from medgen.schedulers import DDPMScheduler
from medgen.spade import SPADE, SPADEAutoencoderKL, SPADEDiffusionModelUNet, SPADENet, _spade_norm
from medgen.unet import DiffusionModelUNet, DiffusionUNetResnetBlock
from helpers import gm_reference, to_gm
from helpers import randomize as _randomize

randomize = partial(_randomize, std=0.1)

TOL = 1e-5


def diff(a, b) -> float:
    a, b = (a,) if isinstance(a, torch.Tensor) else a, (b,) if isinstance(b, torch.Tensor) else b
    assert len(a) == len(b)
    return max((u - v).abs().max().item() for u, v in zip(a, b))


def labels(b: int, k: int, shape: tuple, seed: int = 0) -> torch.Tensor:
    "One-hot blobs (b, k, *shape)."
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(b, k, *[max(2, s // 4) for s in shape], generator=g)
    noise = F.interpolate(noise, size=shape, mode="bilinear" if len(shape) == 2 else "trilinear")
    return F.one_hot(noise.argmax(1), k).movedim(-1, 1).float()


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------- SPADE
@pytest.mark.parametrize("sd", [2, 3])
@pytest.mark.parametrize("kw", [dict(), dict(norm="GROUP", norm_params={"num_groups": 4, "affine": False, "eps": 1e-6}),
                                dict(norm=("GROUP", {"num_groups": 2, "affine": True})), dict(norm="BATCH"),
                                dict(kernel_size=5, hidden_channels=7), dict(kernel_size=1)])
def test_spade_parity(sd, kw):
    core = randomize(CoreSPADE(3, 8, spatial_dims=sd, **kw))
    ours = SPADE(3, 8, spatial_dims=sd, **kw)
    ours.load_state_dict(core.state_dict())
    ours.eval()
    assert list(ours.state_dict()) == list(core.state_dict())
    for grid in [(8,) * sd, (16,) * sd, (5,) * sd]:  # same grid, finer, coarser: seg is resized to x
        x, s = rand(2, 8, *[8] * sd, seed=1), labels(2, 3, grid, seed=2)
        with torch.no_grad(): assert diff(core(x, s), ours(x, s)) <= TOL


@pytest.mark.parametrize("kw", [dict(norm="GROUP", norm_params={"num_groups": 4, "affine": True}), dict(norm="BATCH")])
def test_spade_gm_keys(kw):
    "GM wraps the base norm in an ADN: `param_free_norm.N.weight` (and BatchNorm's buffers) load as MONAI core's."
    core = randomize(CoreSPADE(3, 8, **kw))
    with torch.no_grad():
        core.param_free_norm.weight.add_(1.0)
        if kw["norm"] == "BATCH": core.param_free_norm.running_mean.add_(0.3)
    gm = {k.replace("param_free_norm.", "param_free_norm.N."): v for k, v in core.state_dict().items()}
    assert sum(".N." in k for k in gm) >= 2
    ours = SPADE(3, 8, **kw)
    ours.load_state_dict(gm)
    x, s = rand(2, 8, 8, 8, seed=1), labels(2, 3, (8, 8))
    with torch.no_grad(): assert diff(core(x, s), ours.eval()(x, s)) <= TOL


def test_spade_formula():
    "x_hat = norm(x) (1 + IN(W_g a)) + IN(W_b a), a = LeakyReLU_0.01(W_s resize(seg)); zero W_g, W_b: the plain norm."
    m = randomize(SPADE(4, 6, hidden_channels=5))
    x, s = rand(2, 6, 8, 8, seed=3), labels(2, 4, (16, 16), seed=4)
    s8 = s[..., ::2, ::2]  # nearest-neighbour 16 -> 8 picks the even pixels
    w = dict(m.named_parameters())
    a = F.leaky_relu(F.conv2d(s8, w["mlp_shared.conv.weight"], w["mlp_shared.conv.bias"], padding=1), 0.01)
    gamma = F.instance_norm(F.conv2d(a, w["mlp_gamma.conv.weight"], w["mlp_gamma.conv.bias"], padding=1))
    beta = F.instance_norm(F.conv2d(a, w["mlp_beta.conv.weight"], w["mlp_beta.conv.bias"], padding=1))
    with torch.no_grad():
        assert diff(m(x, s), F.instance_norm(x) * (1 + gamma) + beta) <= 1e-5
        assert diff(m(x, s), m(x, s8)) <= 1e-6
        for p in (*m.mlp_gamma.parameters(), *m.mlp_beta.parameters()): p.zero_()
        assert diff(m(x, s), F.instance_norm(x)) <= 1e-6


def test_spade_errors():
    m = SPADE(3, 8)
    x = torch.randn(2, 8, 8, 8)
    with pytest.raises(ValueError, match="label_nc=3"): m(x, torch.randn(2, 2, 8, 8))
    with pytest.raises(ValueError, match="seg: got shape"): m(x, torch.randn(2, 3, 8, 8, 8))
    with pytest.raises(ValueError, match="seg: got shape"): m(x, torch.randn(3, 3, 8, 8))
    s = labels(1, 3, (8, 8))  # one map for the whole batch broadcasts, as in MONAI
    with torch.no_grad(): assert diff(m(x, s), m(x, s.expand(2, -1, -1, -1))) <= TOL
    with pytest.raises(TypeError, match="seg"): m(x, None)
    with pytest.raises(ValueError, match="norm"): SPADE(3, 8, norm="NOPE")


# -------------------------------------------------------------------------------------------------- the two hooks
def test_hooks_keep_plain_blocks():
    "norm=None is GroupNorm with the same keys and outputs; a SPADE factory swaps only the norms."
    torch.manual_seed(0)
    plain = AEKLResBlock(2, 8, 4, 1e-6, 16)
    assert isinstance(plain.norm1, torch.nn.GroupNorm) and plain.norm1.eps == 1e-6
    sp = AEKLResBlock(2, 8, 4, 1e-6, 16, norm=_spade_norm(2, 3, 5, 4, 1e-6, affine=False))
    assert isinstance(sp.norm1, SPADE) and sp.norm2.param_free_norm.affine is False
    assert {k for k in sp.state_dict() if "norm" not in k} == {k for k in plain.state_dict() if "norm" not in k}
    x, s, e = torch.randn(2, 8, 8, 8), labels(2, 3, (8, 8)), torch.randn(2, 12)
    assert sp(x, s).shape == plain(x).shape == (2, 16, 8, 8)
    u = DiffusionUNetResnetBlock(2, 8, 12, 16, norm_num_groups=4, norm=_spade_norm(2, 3, 5, 4, 1e-6, affine=True))
    assert u.norm1.param_free_norm.affine and u(x, e, s).shape == (2, 16, 8, 8)
    with pytest.raises(TypeError): sp(x)  # a SPADE block needs seg


# --------------------------------------------------------------------------------------------- SPADEAutoencoderKL
AE_SMALL = dict(num_channels=(8, 16), latent_channels=3, norm_num_groups=4, num_res_blocks=1, spade_intermediate_channels=6)
AE_CONFIGS = {
    "attention-nonlocal": dict(AE_SMALL, attention_levels=(False, True)),
    "plain": dict(AE_SMALL, attention_levels=(False, False), with_encoder_nonlocal_attn=False,
                  with_decoder_nonlocal_attn=False),
    "three-levels": dict(AE_SMALL, num_channels=(8, 8, 16), attention_levels=(False, False, True), num_res_blocks=(1, 2, 1)),
    "fused-qkv-no-fc": dict(AE_SMALL, attention_levels=(False, True), use_combined_linear=True, include_fc=False),
}


def core_names(kw: dict) -> dict:
    kw = dict(kw)
    kw["channels"] = kw.pop("num_channels")
    return kw


def ae_compare(core, ours, sd: int, size: int = 8) -> float:
    x, s = rand(2, 1, *[size] * sd, seed=5), labels(2, 3, (size,) * sd, seed=6)
    with torch.no_grad():
        mu, sigma = core.encode(x)
        z = rand(*mu.shape, seed=8)
        eps = rand(*mu.shape, seed=7)
        return max(diff(core.encode(x), ours.encode(x)), diff(core.decode(z, s), ours.decode(z, s)),
                   diff(core.reconstruct(x, s), ours.reconstruct(x, s)),
                   diff(core.decode_stage_2_outputs(z, s), ours.decode_stage_2_outputs(z, s)),
                   diff((core.decode(mu + eps * sigma, s), mu, sigma),
                        ours(x, s, generator=torch.Generator().manual_seed(7))))


@pytest.mark.parametrize("sd", [2, 3])
@pytest.mark.parametrize("name", list(AE_CONFIGS))
def test_ae_parity(sd, name):
    kw = AE_CONFIGS[name]
    core = randomize(CoreAE(sd, 3, 1, 2, **core_names(kw)))
    ours = SPADEAutoencoderKL(sd, 3, 1, 2, **kw).eval()
    ours.load_state_dict(core.state_dict())
    assert set(ours.state_dict()) == set(core.state_dict())
    assert ae_compare(core, ours, sd) <= TOL


@pytest.mark.parametrize("sd", [2, 3])
def test_ae_gm_checkpoint_and_monai_names(sd):
    kw = AE_CONFIGS["attention-nonlocal"]
    core = randomize(CoreAE(sd, 3, 1, 2, **core_names(kw)))
    gm = to_gm(core.state_dict())
    assert any(".proj_attn." in k for k in gm) and any(k.startswith("decoder") and ".conv.conv." in k for k in gm)
    gm_reference(core, spade_eps=True)  # GM: proj_attn unused, SPADE group norms with torch's eps
    for load in ("load_state_dict", "load_old_state_dict"):
        ours = SPADEAutoencoderKL(sd, 3, 1, 2, **core_names(kw)).eval()  # MONAI core's `channels`
        getattr(ours, load)(dict(gm))
        assert ae_compare(core, ours, sd) <= TOL


def test_ae_is_an_autoencoderkl_with_spade_decoder():
    ae = SPADEAutoencoderKL(2, 5, **AE_CONFIGS["attention-nonlocal"])
    assert isinstance(ae, AutoencoderKL) and ae.label_nc == ae.decoder.label_nc == 5
    spades = [m for m in ae.modules() if isinstance(m, SPADE)]
    assert spades and all(not m.param_free_norm.affine for m in spades)
    assert not any(isinstance(m, SPADE) for m in ae.encoder.modules())
    # 3 resnets in the decoder (2 non-local, 1 per level x 2 levels... ) x 2 norms
    n_res = sum(isinstance(b, AEKLResBlock) for b in ae.decoder.blocks)
    assert len(spades) == 2 * n_res == 8
    x, s = torch.rand(1, 1, 16, 16), labels(1, 5, (16, 16))
    with torch.no_grad():  # the encoder ignores labels; the decoder depends on them
        z = ae.encode_stage_2_inputs(x, generator=torch.Generator().manual_seed(0))
        assert (ae.decode(z, s) - ae.decode(z, s.flip(1))).abs().max() > 1e-3


def test_ae_hub_round_trip(tmp_path):
    m = randomize(SPADEAutoencoderKL(2, 3, 1, 2, channels=(8, 16), attention_levels=(False, True), latent_channels=4,
                                     norm_num_groups=4, num_res_blocks=(1, 2), spade_intermediate_channels=6))
    save_pretrained(m, tmp_path)
    back = from_pretrained(tmp_path).eval()
    assert type(back) is SPADEAutoencoderKL and back.label_nc == 3
    x, s = torch.randn(2, 1, 8, 8), labels(2, 3, (8, 8))
    with torch.no_grad(): assert torch.equal(back.reconstruct(x, s), m.reconstruct(x, s))


@pytest.mark.parametrize("kw,msg", [
    (dict(num_channels=(16, 32), attention_levels=(False,) * 3), "same size of attention_levels"),
    (dict(num_channels=(16, 30), attention_levels=(False, False)), "multiple of norm_num_groups"),
    (dict(num_channels=(16, 32), attention_levels=(False, False), num_res_blocks=(1, 1, 1)), "num_res_blocks"),
])
def test_ae_config_errors(kw, msg):
    with pytest.raises(ValueError, match=msg): CoreAE(2, 3, norm_num_groups=8, **core_names(kw))
    with pytest.raises(ValueError, match=msg): SPADEAutoencoderKL(2, 3, norm_num_groups=8, **kw)


def test_ae_input_errors():
    ae = SPADEAutoencoderKL(2, 3, **AE_CONFIGS["plain"])
    core = CoreAE(2, 3, **core_names(AE_CONFIGS["plain"]))
    z, s = torch.randn(2, 3, 4, 4), labels(2, 3, (8, 8))
    with pytest.raises(RuntimeError): core.decode(z, s[:, :2])  # MONAI: a convolution error deep inside ...
    with pytest.raises(ValueError, match="label_nc=3"): ae.decode(z, s[:, :2])  # ... medgen: names seg and label_nc
    with pytest.raises(ValueError, match="seg: got shape"): ae.decode(z, s[0])
    with pytest.raises(ValueError, match="z: got shape"): ae.decode(torch.randn(2, 4, 4, 4), s)
    with pytest.raises(TypeError): ae.decode(z)
    with pytest.raises(TypeError): ae(torch.randn(2, 1, 8, 8))


# ---------------------------------------------------------------------------------------- SPADEDiffusionModelUNet
UNET_SMALL = dict(num_channels=(8, 16), norm_num_groups=4, num_res_blocks=1, num_head_channels=4,
                  spade_intermediate_channels=6)
UNET_CONFIGS = {
    "plain": dict(UNET_SMALL, attention_levels=(False, False)),
    "attention": dict(UNET_SMALL, attention_levels=(False, True)),
    "resblock-updown-3-levels": dict(UNET_SMALL, num_channels=(8, 8, 16), attention_levels=(False, True, True),
                                     resblock_updown=True, num_res_blocks=(1, 2, 1)),
    "cross-attention-classes": dict(UNET_SMALL, attention_levels=(False, True), with_conditioning=True,
                                    cross_attention_dim=6, num_class_embeds=3, transformer_num_layers=2),
}


def unet_inputs(sd: int, kw: dict, size: int = 8) -> tuple:
    x, t, s = rand(2, 2, *[size] * sd, seed=9), torch.tensor([3, 700]), labels(2, 3, (2 * size,) * sd, seed=sd)
    extra = {}
    if kw.get("with_conditioning"): extra["context"] = rand(2, 4, kw["cross_attention_dim"], seed=10)
    if kw.get("num_class_embeds"): extra["class_labels"] = torch.tensor([0, 2])
    return x, t, s, extra


def unet_compare(core, ours, sd, kw, **more) -> float:
    x, t, s, extra = unet_inputs(sd, kw)
    with torch.no_grad(): return diff(core(x, t, s, **extra, **more), ours(x, t, s, **extra, **more))


@pytest.mark.parametrize("sd", [2, 3])
@pytest.mark.parametrize("name", list(UNET_CONFIGS))
def test_unet_parity(sd, name):
    kw = UNET_CONFIGS[name]
    core = randomize(CoreUNet(sd, 2, 2, 3, **core_names(kw)))
    ours = SPADEDiffusionModelUNet(sd, 2, 2, 3, **kw).eval()
    ours.load_state_dict(core.state_dict())
    assert set(ours.state_dict()) == set(core.state_dict())
    assert unet_compare(core, ours, sd, kw) <= TOL


@pytest.mark.parametrize("sd", [2, 3])
def test_unet_controlnet_residuals(sd):
    "down_block_additional_residuals (one per skip) and mid_block_additional_residual, as MONAI adds them."
    kw = UNET_CONFIGS["attention"]
    core = randomize(CoreUNet(sd, 2, 2, 3, **core_names(kw)))
    ours = SPADEDiffusionModelUNet(sd, 2, 2, 3, **kw).eval()
    ours.load_state_dict(core.state_dict())
    shapes = [(2, 8, *[8] * sd), (2, 8, *[8] * sd), (2, 8, *[4] * sd), (2, 16, *[4] * sd)]
    down = tuple(rand(*sh, seed=20 + i) for i, sh in enumerate(shapes))
    mid = rand(2, 16, *[4] * sd, seed=30)
    more = dict(down_block_additional_residuals=down, mid_block_additional_residual=mid)
    assert unet_compare(core, ours, sd, kw, **more) <= TOL
    x, t, s, _ = unet_inputs(sd, kw)
    with torch.no_grad(): assert diff(ours(x, t, s, **more), ours(x, t, s)) > 1e-3


def test_unet_gm_checkpoint_and_structure():
    kw = UNET_CONFIGS["cross-attention-classes"]
    core = randomize(CoreUNet(2, 2, 2, 3, **core_names(kw)))
    gm = to_gm(core.state_dict())
    assert any(".to_out.0." in k for k in gm) and any(".conv.conv." in k for k in gm)
    gm = {k.replace("param_free_norm.", "param_free_norm.N."): v for k, v in gm.items()}  # GM's ADN-wrapped norms
    assert any("param_free_norm.N.weight" in k for k in gm)
    gm_reference(core)
    for load in ("load_state_dict", "load_old_state_dict"):
        ours = SPADEDiffusionModelUNet(2, 2, 2, 3, **kw).eval()
        getattr(ours, load)(dict(gm))
        assert unet_compare(core, ours, 2, kw) <= TOL
    assert isinstance(ours, DiffusionModelUNet) and ours.label_nc == 3
    spades = [n for n, m in ours.named_modules() if isinstance(m, SPADE)]
    assert spades and all(n.startswith("up_blocks.") for n in spades)  # encoder and middle stay plain
    assert all(m.param_free_norm.affine for m in ours.modules() if isinstance(m, SPADE))


def test_unet_hub_round_trip(tmp_path):
    m = randomize(SPADEDiffusionModelUNet(2, 2, 2, 3, **UNET_CONFIGS["cross-attention-classes"]))
    save_pretrained(m, tmp_path)
    back = from_pretrained(tmp_path).eval()
    assert type(back) is SPADEDiffusionModelUNet
    x, t, s, extra = unet_inputs(2, UNET_CONFIGS["cross-attention-classes"])
    with torch.no_grad(): assert torch.equal(back(x, t, s, **extra), m(x, t, s, **extra))


@pytest.mark.parametrize("kw,msg", [
    (dict(num_channels=(8, 16), attention_levels=(False,) * 3), "same size of attention_levels"),
    (dict(num_channels=(8, 14), attention_levels=(False, False)), "multiple of norm_num_groups"),
    (dict(num_channels=(8, 16), attention_levels=(False, False), with_conditioning=True), "cross_attention_dim"),
    (dict(num_channels=(8, 16), attention_levels=(False, False), cross_attention_dim=4), "with_conditioning"),
])
def test_unet_config_errors(kw, msg):
    with pytest.raises(ValueError, match=msg): CoreUNet(2, 1, 1, 3, norm_num_groups=4, **core_names(kw))
    with pytest.raises(ValueError, match=msg): SPADEDiffusionModelUNet(2, 1, 1, 3, norm_num_groups=4, **kw)


def test_unet_input_errors():
    kw = UNET_CONFIGS["cross-attention-classes"]
    m = SPADEDiffusionModelUNet(2, 2, 2, 3, **kw)
    x, t, s, extra = unet_inputs(2, kw)
    with pytest.raises(ValueError, match="label_nc=3"): m(x, t, s[:, :2], **extra)
    with pytest.raises(TypeError): m(x, t)
    with pytest.raises(ValueError, match="class_labels"): m(x, t, s, context=extra["context"])
    plain = SPADEDiffusionModelUNet(2, 2, 2, 3, **UNET_CONFIGS["plain"])
    with pytest.raises(ValueError, match="with_conditioning"): plain(x, t, s, context=extra["context"])


# ------------------------------------------------------------------------------------------------------ SPADENet
NET_CONFIGS = {
    "default": dict(),
    "group-prelu-no-last-act": dict(norm=("GROUP", {"num_groups": 2}), act="PRELU", last_act=None),
    "batch-kernel5": dict(norm="BATCH", kernel_size=5),
    "three-levels-bilinear": dict(channels=[4, 8, 8], upsampling_mode="bilinear"),
}


def net_pair(sd: int, is_vae: bool, kw: dict):
    kw = dict(kw)
    chs = kw.pop("channels", [4, 8])
    if sd == 3 and kw.get("upsampling_mode") == "bilinear": kw["upsampling_mode"] = "nearest"
    core = randomize(CoreNet(sd, 1, 2, 3, (16,) * sd, list(chs), z_dim=6, is_vae=is_vae, spade_intermediate_channels=5, **kw))
    ours = SPADENet(sd, 1, 2, 3, (16,) * sd, list(chs), z_dim=6, is_vae=is_vae, spade_intermediate_channels=5, **kw)
    ours.load_state_dict(core.state_dict())
    return core, ours.eval()


@pytest.mark.parametrize("sd", [2, 3])
@pytest.mark.parametrize("is_vae", [True, False])
@pytest.mark.parametrize("name", list(NET_CONFIGS))
def test_net_parity(sd, is_vae, name):
    core, ours = net_pair(sd, is_vae, NET_CONFIGS[name])
    assert set(ours.state_dict()) == set(core.state_dict())
    s, x = labels(2, 3, (16,) * sd, seed=sd), rand(2, 1, *[16] * sd, seed=11)
    with torch.no_grad():
        if not is_vae:
            a, b = core(s), ours(s)
            assert isinstance(b, tuple) and len(b) == 1
            assert diff(a, b) <= TOL
            return
        z = rand(2, 6, seed=3)
        assert diff(core.encoder(x), ours.encoder(x)) <= TOL
        assert diff(core.decode(s, z), ours.decode(s, z)) <= TOL
        mu, logvar = core.encoder(x)  # forward with a fixed eps
        eps = rand(2, 6, seed=4)
        out, mu2, logvar2 = ours(s, x, generator=torch.Generator().manual_seed(4))
        assert diff((core.decode(s, mu + eps * torch.exp(0.5 * logvar)), mu, logvar), (out, mu2, logvar2)) <= TOL
        z1 = ours.encode(x, generator=torch.Generator().manual_seed(4))
        assert diff(z1, mu + eps * torch.exp(0.5 * logvar)) <= TOL


def test_net_prior_samples_and_channels_alias():
    net = SPADENet(2, 1, 1, 3, (16, 16), channels=[4, 8], z_dim=5).eval()
    s = labels(2, 3, (16, 16))
    with torch.no_grad():
        a = net.decode(s, generator=torch.Generator().manual_seed(1))
        b = net.decode(s, rand(2, 5, seed=1))
        assert torch.equal(a, b)  # z ~ N(0, I) from the generator
    assert net.channels == (4, 8) and net.encoder.fc_mu.in_features == 8 * 4 * 4
    chs = [4, 8]
    SPADENet(2, 1, 1, 3, (16, 16), chs, z_dim=5)
    assert chs == [4, 8]  # MONAI reverses (and extends) the caller's list in place; medgen does not
    assert SPADENet(2, 1, 1, 3, (16, 16), [4, 8], is_vae=False).encode(torch.randn(1, 1, 16, 16)) is None


def test_net_hub_round_trip(tmp_path):
    m = randomize(SPADENet(2, 1, 2, 3, (16, 16), [4, 8], z_dim=5, norm=("GROUP", {"num_groups": 2}),
                           act=("LEAKYRELU", {"negative_slope": 0.1}), last_act=None))
    save_pretrained(m, tmp_path)
    back = from_pretrained(tmp_path).eval()
    assert type(back) is SPADENet and back.decoder.last_conv[0].out_channels == 2
    s, z = labels(2, 3, (16, 16)), torch.randn(2, 5)
    with torch.no_grad(): assert torch.equal(back.decode(s, z), m.decode(s, z))


@pytest.mark.parametrize("args,kw,exc,msg", [
    (((18, 16), [4, 8]), dict(z_dim=4), ValueError, "divisible by 2 \\*\\* \\(autoencoder depth\\)"),
    (((16, 16, 16), [4, 8]), dict(z_dim=4), ValueError, "must match spatial_dims"),
    (((16, 16), [4, 8]), dict(), ValueError, "z_dim"),
    (((16, 16), [4, 8]), dict(z_dim=4, upsampling_mode="area"), ValueError, "upsampling_mode"),
    (((16, 16), [4, 8]), dict(z_dim=4, channels=[4, 16]), ValueError, "give one of them"),
    (((16, 16), None), dict(z_dim=4), ValueError, "num_channels"),
])
def test_net_config_errors(args, kw, exc, msg):
    with pytest.raises(exc, match=msg): SPADENet(2, 1, 1, 3, *args, **kw)


def test_net_config_errors_as_monai():
    for shape in ((18, 16), (16, 16, 16)):
        with pytest.raises(ValueError): CoreNet(2, 1, 1, 3, shape, [4, 8], z_dim=4)
    with pytest.raises(ValueError, match="z_dim"): CoreNet(2, 1, 1, 3, (16, 16), [4, 8])


def test_net_input_errors():
    net = SPADENet(2, 1, 1, 3, (16, 16), [4, 8], z_dim=5)
    s, x = labels(2, 3, (16, 16)), torch.randn(2, 1, 16, 16)
    with pytest.raises(ValueError, match="expected \\(B, 3\\)"): net(s[:, :2], x)
    with pytest.raises(ValueError, match="seg: got shape"): net.decode(s[0])
    with pytest.raises(ValueError, match="style image"): net(s)


# ------------------------------------------------------------------------------------------ SPADE latent diffusion
def test_latent_diffusion_end_to_end_equals_monai():
    "medgen's LatentDiffusionInferer routes seg to both SPADE stages, as MONAI's does with MONAI's SPADE networks."
    ae_kw = dict(channels=(8, 8), attention_levels=(False, False), latent_channels=2, norm_num_groups=4, num_res_blocks=1,
                 with_encoder_nonlocal_attn=False, spade_intermediate_channels=4)  # no encoder attention: see below
    un_kw = dict(channels=(8, 8), attention_levels=(False, True), num_res_blocks=1, norm_num_groups=4,
                 num_head_channels=4, spade_intermediate_channels=4)
    core_ae, core_un = randomize(CoreAE(2, 3, **ae_kw), 1), randomize(CoreUNet(2, 2, 2, 3, **un_kw), 2)
    ours_ae, ours_un = SPADEAutoencoderKL(2, 3, **ae_kw).eval(), SPADEDiffusionModelUNet(2, 2, 2, 3, **un_kw).eval()
    ours_ae.load_state_dict(core_ae.state_dict())
    ours_un.load_state_dict(core_un.state_dict())
    pair = []
    for inferer, sched in ((LatentDiffusionInferer, DDPMScheduler), (CoreLDMInferer, CoreDDPM)):
        s = sched(20, clip_sample=False)
        s.set_timesteps(20)
        pair.append(inferer(s, scale_factor=0.8))
    seg, z_T, x = labels(2, 3, (16, 16), seed=3), rand(2, 2, 8, 8, seed=4), torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        outs = []
        for inf, ae, un in ((pair[0], ours_ae, ours_un), (pair[1], core_ae, core_un)):
            torch.manual_seed(0)
            sample = inf.sample(z_T, ae, un, seg=seg, verbose=False)
            # the training call samples the posterior with the global generator (MONAI: randn_like, whose layout
            # follows z_sigma's memory format; MONAI's encoder attention makes that channels-last, hence no attention)
            torch.manual_seed(0)
            pred = inf(x, ae, un, z_T, torch.tensor([3, 15]), seg=seg)
            outs.append((sample, pred))
    assert outs[0][0].shape == (2, 1, 16, 16)
    assert diff(outs[0], outs[1]) <= TOL
    with torch.no_grad():  # the labels matter: other labels, other sample
        other = pair[0].sample(z_T, ours_ae, ours_un, seg=seg.flip(1), verbose=False)
    assert (other - outs[0][0]).abs().max() > 1e-3
    bad = SPADEAutoencoderKL(2, 4, **ae_kw)
    with pytest.raises(ValueError, match="semantic labels"):
        pair[0].sample(z_T, bad, ours_un, seg=seg, verbose=False)


# ---------------------------------------------------------------------------------------------------- signatures
def _names(f) -> list[str]:
    return [p.name for p in inspect.signature(f).parameters.values() if p.kind is not p.KEYWORD_ONLY and p.name != "self"]


def test_gm_signatures():
    "GM's positional parameter order (API.md); MONAI core's later names are keyword-only extras."
    assert _names(SPADEAutoencoderKL.__init__) == [
        "spatial_dims", "label_nc", "in_channels", "out_channels", "num_res_blocks", "num_channels", "attention_levels",
        "latent_channels", "norm_num_groups", "norm_eps", "with_encoder_nonlocal_attn", "with_decoder_nonlocal_attn",
        "use_flash_attention", "spade_intermediate_channels"]
    assert _names(SPADEDiffusionModelUNet.__init__) == [
        "spatial_dims", "in_channels", "out_channels", "label_nc", "num_res_blocks", "num_channels", "attention_levels",
        "norm_num_groups", "norm_eps", "resblock_updown", "num_head_channels", "with_conditioning",
        "transformer_num_layers", "cross_attention_dim", "num_class_embeds", "upcast_attention", "use_flash_attention",
        "spade_intermediate_channels"]
    assert _names(SPADEDiffusionModelUNet.forward) == [
        "x", "timesteps", "seg", "context", "class_labels", "down_block_additional_residuals",
        "mid_block_additional_residual"]
    assert _names(SPADENet.__init__) == [
        "spatial_dims", "in_channels", "out_channels", "label_nc", "input_shape", "num_channels", "z_dim", "is_vae",
        "spade_intermediate_channels", "norm", "act", "last_act", "kernel_size", "upsampling_mode"]
    assert _names(SPADENet.forward) == ["seg", "x"] and _names(SPADENet.decode) == ["seg", "z"]
    assert _names(SPADEAutoencoderKL.decode) == ["z", "seg"]
    assert _names(SPADEAutoencoderKL.forward) == ["x", "seg", "generator"]  # generator: not keyword-only (TorchScript)
    assert _names(SPADE.__init__) == [p for p in inspect.signature(CoreSPADE.__init__).parameters if p != "self"]
    with contextlib.redirect_stdout(io.StringIO()):  # MONAI core's keywords are accepted
        SPADEAutoencoderKL(2, 3, channels=(8, 8), attention_levels=(False, False), norm_num_groups=4, num_res_blocks=1,
                           include_fc=False, use_combined_linear=True, use_checkpointing=True)
        SPADEDiffusionModelUNet(2, 1, 1, 3, channels=(8, 8), attention_levels=(False, True), norm_num_groups=4, num_res_blocks=1,
                                include_fc=False, use_combined_linear=True, use_checkpoint=True)
