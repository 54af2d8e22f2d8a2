"medgen.autoencoderkl against MONAI core on the same weights (float32, max abs diff <= 1e-5), GM checkpoints, errors."
from functools import partial
import contextlib
import inspect
import io
import math

import pytest
import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, Upsample
from monai.networks.nets import AutoencoderKL as CoreAE
from monai.networks.nets.autoencoderkl import AEKLDownsample as CoreDown
from monai.networks.nets.autoencoderkl import AEKLResBlock as CoreRes

from medgen.autoencoderkl import (AEKLDownsample, AEKLResBlock, AEKLTransposedUpsample, AutoencoderKL,
                                  latent_scale_factor, reparameterize, sigma_from_log_var)
from medgen.hub import from_pretrained, save_pretrained
from medgen.training import kl_divergence
from medgen.unet import UNetUpsample
from helpers import gm_reference, to_gm
from helpers import randomize as _randomize

randomize = partial(_randomize, std=0.1)

TOL = 1e-5
SMALL = dict(num_channels=(8, 16), latent_channels=3, norm_num_groups=8, num_res_blocks=1)
CONFIGS = {
    "attention-nonlocal": dict(SMALL, attention_levels=(False, True)),
    "plain": dict(SMALL, attention_levels=(False, False), with_encoder_nonlocal_attn=False,
                  with_decoder_nonlocal_attn=False),
    "all-attention-convT": dict(SMALL, attention_levels=(True, True), use_convtranspose=True, num_res_blocks=(2, 1)),
    "encoder-nonlocal-convT": dict(SMALL, attention_levels=(False, False), use_convtranspose=True,
                                   with_decoder_nonlocal_attn=False),
    "decoder-nonlocal": dict(SMALL, attention_levels=(False, False), with_encoder_nonlocal_attn=False),
    "fused-qkv-no-fc": dict(SMALL, attention_levels=(False, True), use_combined_linear=True, include_fc=False),
    "three-levels": dict(SMALL, num_channels=(8, 8, 16), attention_levels=(False, False, True), num_res_blocks=(1, 2, 1)),
}


def core_names(kw: dict) -> dict:
    kw = dict(kw)
    kw["channels"] = kw.pop("num_channels")
    return kw


def max_diff(a, b) -> float:
    return max((u - v).abs().max().item() for u, v in zip(a, b))


def compare(core: CoreAE, ours: AutoencoderKL, x: torch.Tensor) -> dict[str, float]:
    "encode, decode of a fixed z, reconstruct, forward with a fixed eps."
    factor = x.shape[2] // core.encode(x)[0].shape[2]
    z = torch.randn(x.shape[0], 3, *[s // factor for s in x.shape[2:]], generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        mu, sigma = core.encode(x)
        eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(7))
        return {"encode": max_diff((mu, sigma), ours.encode(x)),
                "decode": max_diff([core.decode(z)], [ours.decode(z)]),
                "reconstruct": max_diff([core.reconstruct(x)], [ours.reconstruct(x)]),
                "forward": max_diff((core.decode(mu + eps * sigma), mu, sigma),
                                    ours(x, generator=torch.Generator().manual_seed(7)))}


@pytest.mark.parametrize("sd", [2, 3])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_parity_with_monai_core(sd, name):
    kw = CONFIGS[name]
    core = randomize(CoreAE(sd, 2, 2, **core_names(kw)))
    ours = AutoencoderKL(sd, 2, 2, **kw)
    ours.load_state_dict(core.state_dict())
    x = torch.randn(2, 2, *[8] * sd, generator=torch.Generator().manual_seed(1))
    diffs = compare(core, ours.eval(), x)
    assert max(diffs.values()) <= TOL, diffs
    assert set(ours.state_dict()) == set(core.state_dict())


def test_parity_1d_and_monai_names():
    core = randomize(CoreAE(1, 1, 1, **core_names(CONFIGS["attention-nonlocal"])))
    ours = AutoencoderKL(1, 1, 1, channels=(8, 16), attention_levels=(False, True), latent_channels=3,
                         norm_num_groups=8, num_res_blocks=1)
    ours.load_state_dict(core.state_dict())
    assert max(compare(core, ours.eval(), torch.randn(2, 1, 16)).values()) <= TOL


@pytest.mark.parametrize("sd", [1, 2, 3])
def test_blocks_parity(sd):
    x = torch.randn(2, 8, *[6] * sd)
    pairs = [(CoreRes(sd, 8, 4, 1e-6, 16), AEKLResBlock(sd, 8, 4, 1e-6, 16)),
             (CoreRes(sd, 8, 4, 1e-6, 8), AEKLResBlock(sd, 8, 4, 1e-6, 8)),
             (CoreDown(sd, 8), AEKLDownsample(sd, 8)),
             (Upsample(sd, in_channels=8, out_channels=8, mode="deconv"), AEKLTransposedUpsample(sd, 8)),
             (Upsample(sd, in_channels=8, out_channels=8, mode="nontrainable", interp_mode="nearest", scale_factor=2.0,
                       align_corners=None, post_conv=Convolution(sd, 8, 8, kernel_size=3, padding=1, conv_only=True)),
              UNetUpsample(sd, 8))]
    for core, ours in pairs:
        randomize(core)
        ours.load_state_dict(core.state_dict())
        with torch.no_grad(): assert (core(x) - ours(x)).abs().max() <= TOL, type(ours).__name__


def test_downsample_closed_form():
    d = AEKLDownsample(2, 3)
    with torch.no_grad():
        d.conv.conv.weight.zero_(); d.conv.conv.bias.zero_()
        for c in range(3): d.conv.conv.weight[c, c, 1, 1] = 1  # centre tap: picks pixels (2i+1, 2j+1)
        x = torch.randn(1, 3, 8, 6)
        assert torch.equal(d(x), x[..., 1::2, 1::2])
    assert AEKLDownsample(3, 2)(torch.randn(1, 2, 7, 8, 9)).shape == (1, 2, 3, 4, 4)


@pytest.mark.parametrize("sd", [2, 3])
def test_gm_checkpoint(sd):
    kw = CONFIGS["attention-nonlocal"]
    core = randomize(CoreAE(sd, 2, 2, **core_names(kw)))
    gm = to_gm(core.state_dict())
    assert any(".proj_attn." in k for k in gm) and any(k.startswith("decoder") and ".conv.conv." in k for k in gm)
    assert not any(".attn." in k or "postconv" in k for k in gm)
    back = CoreAE(sd, 2, 2, **core_names(kw))  # MONAI core's own converter accepts the key set and restores it
    with contextlib.redirect_stdout(io.StringIO()): back.load_old_state_dict(dict(gm))
    for k, v in core.state_dict().items(): assert torch.equal(back.state_dict()[k], v), k
    x = torch.randn(2, 2, *[8] * sd)
    gm_reference(core)  # GM never applies proj_attn: the reference computes as GM
    for load in ("load_state_dict", "load_old_state_dict"):
        ours = AutoencoderKL(sd, 2, 2, **kw)
        getattr(ours, load)(dict(gm))
        assert max(compare(core, ours.eval(), x).values()) <= TOL


@pytest.mark.parametrize("sd", [2, 3])
def test_gm_transposed_convolution(sd, tmp_path):
    "GM's use_convtranspose layer: a 3x3 transposed convolution under `conv.conv`; the loader adopts its kernel."
    kw = dict(SMALL, attention_levels=(False, False), use_convtranspose=True)
    sd_gm = randomize(AutoencoderKL(sd, 2, 2, **kw)).state_dict()
    ours = AutoencoderKL(sd, 2, 2, **kw)
    i = next(j for j, b in enumerate(ours.decoder.blocks) if isinstance(b, AEKLTransposedUpsample))
    gm_layer = randomize(Convolution(sd, 16, 16, strides=2, kernel_size=3, padding=1, conv_only=True, is_transposed=True))
    for p in ("weight", "bias"):
        del sd_gm[f"decoder.blocks.{i}.deconv.{p}"]
        sd_gm[f"decoder.blocks.{i}.conv.conv.{p}"] = gm_layer.state_dict()[f"conv.{p}"]
    ours.load_state_dict(sd_gm)
    assert ours.decoder.blocks[i].deconv.kernel_size == (3,) * sd
    h = torch.randn(2, 16, *[4] * sd)
    with torch.no_grad():
        assert (ours.decoder.blocks[i](h) - gm_layer(h)).abs().max() <= TOL
        conv_t = {2: F.conv_transpose2d, 3: F.conv_transpose3d}[sd]
        ref = conv_t(h, gm_layer.conv.weight, gm_layer.conv.bias, stride=2, padding=1, output_padding=1)
        assert (ours.decoder.blocks[i](h) - ref).abs().max() <= TOL
    save_pretrained(ours, tmp_path)  # and the 3x3 kernel survives a hub round trip
    back = from_pretrained(tmp_path)
    x = torch.randn(1, 2, *[8] * sd)
    with torch.no_grad(): assert torch.equal(back.eval().reconstruct(x), ours.eval().reconstruct(x))


def test_hub_round_trip(tmp_path):
    m = randomize(AutoencoderKL(2, 1, 2, channels=(8, 16), attention_levels=(False, True), latent_channels=4,
                                norm_num_groups=8, num_res_blocks=(1, 2), use_checkpoint=True))
    save_pretrained(m, tmp_path)
    back = from_pretrained(tmp_path)
    assert type(back) is AutoencoderKL and back.latent_channels == 4 and back.use_checkpointing
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad(): assert torch.equal(back.eval().reconstruct(x), m.reconstruct(x))


@pytest.mark.parametrize("kw,msg", [
    (dict(num_channels=(16, 32), attention_levels=(False,) * 3), "same size of attention_levels"),
    (dict(num_channels=(16, 30), attention_levels=(False, False)), "num_channels=(16, 30), norm_num_groups=8"),
    (dict(num_channels=(16, 32), attention_levels=(False, False), num_res_blocks=(1, 1, 1)), "num_res_blocks=(1, 1, 1)"),
    (dict(num_channels=(16, 32), channels=(8, 16), attention_levels=(False, False)), "give one of them"),
])
def test_config_errors(kw, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        AutoencoderKL(2, norm_num_groups=8, **kw)
    if "channels" not in kw:  # GM/MONAI core raise ValueError for the same configurations
        with pytest.raises(ValueError): CoreAE(2, norm_num_groups=8, **core_names(kw))
    with pytest.raises(ValueError, match="spatial_dims=4"): AutoencoderKL(4)


def test_input_errors():
    m = AutoencoderKL(2, **CONFIGS["plain"])
    with pytest.raises(ValueError, match=r"x: got shape \(2, 1, 8, 8, 8\)"): m.encode(torch.randn(2, 1, 8, 8, 8))
    with pytest.raises(ValueError, match=r"x: got shape \(2, 3, 8, 8\)"): m(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"z: got shape \(2, 4, 4, 4\); expected \(B, 3\)"): m.decode(torch.randn(2, 4, 4, 4))


def test_gm_signature():
    names = list(inspect.signature(AutoencoderKL).parameters)
    assert names[:14] == ["spatial_dims", "in_channels", "out_channels", "num_res_blocks", "num_channels",
                          "attention_levels", "latent_channels", "norm_num_groups", "norm_eps",
                          "with_encoder_nonlocal_attn", "with_decoder_nonlocal_attn", "use_flash_attention",
                          "use_checkpointing", "use_convtranspose"]
    sampling = inspect.signature(AutoencoderKL.sampling).parameters
    assert list(sampling) == ["self", "z_mu", "z_sigma", "generator"] and sampling["generator"].default is None
    # generator: a parameter after GM's two (not keyword-only: TorchScript compiles no keyword-only arguments)
    import medgen
    assert medgen.AutoencoderKL is AutoencoderKL


def test_sampling_and_reparameterisation():
    m = AutoencoderKL(2, **CONFIGS["plain"])
    mu, sigma = torch.randn(2, 3, 4, 4), torch.rand(2, 3, 4, 4) + 0.1
    a = m.sampling(mu, sigma, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, m.sampling(mu, sigma, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(a, mu + torch.randn(mu.shape, generator=torch.Generator().manual_seed(0)) * sigma)
    torch.manual_seed(3); b = m.sampling(mu, sigma)
    torch.manual_seed(3); assert torch.equal(b, mu + torch.randn_like(sigma) * sigma)  # GM's global draw
    big = reparameterize(torch.full((20000,), -1.0), torch.full((20000,), 2.0), torch.Generator().manual_seed(1))
    assert abs(big.mean() + 1) < 0.05 and abs(big.std() - 2) < 0.05
    assert torch.allclose(sigma_from_log_var(torch.tensor([-100.0, 0.0, 2.0, 100.0])),
                          torch.tensor([math.exp(-15), 1.0, math.e, math.exp(10)]))
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        z1 = m.encode_stage_2_inputs(x, generator=torch.Generator().manual_seed(4))
        z_mu, z_sigma = m.encode(x)
        assert torch.equal(z1, m.sampling(z_mu, z_sigma, generator=torch.Generator().manual_seed(4)))
        assert torch.equal(m.decode_stage_2_outputs(z1), m.decode(z1))
        assert torch.equal(m.reconstruct(x), m.decode(z_mu))


def test_kl_closed_form():
    mu, sigma = torch.randn(3, 2, 4, 4), torch.rand(3, 2, 4, 4) + 0.2
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mu, sigma), torch.distributions.Normal(0.0, 1.0))
    assert torch.allclose(kl_divergence(mu, sigma), ref.flatten(1).sum(1).mean(), atol=1e-5)
    assert kl_divergence(torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)).item() == 0.0


def test_checkpointing_same_gradients():
    x = torch.randn(2, 1, 8, 8)
    grads = []
    for ck in ({}, {"use_checkpointing": True}, {"use_checkpoint": True}):
        torch.manual_seed(0)
        m = AutoencoderKL(2, **CONFIGS["attention-nonlocal"], **ck)
        rec, mu, sigma = m(x, generator=torch.Generator().manual_seed(0))
        (rec.abs().mean() + kl_divergence(mu, sigma)).backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    assert m.use_checkpointing
    assert torch.allclose(grads[0], grads[1], atol=1e-6) and torch.allclose(grads[0], grads[2], atol=1e-6)


def test_latent_scale_factor():
    z = 4.0 * torch.randn(32, 3, 4, 4, generator=torch.Generator().manual_seed(0)) - 2.0
    s = latent_scale_factor(z)
    assert math.isclose(s, 1 / z.std().item(), rel_tol=1e-6) and math.isclose((s * z).std().item(), 1.0, rel_tol=1e-5)
    with pytest.raises(ValueError, match="at least 2"): latent_scale_factor(torch.ones(1))
