"medgen.unet against MONAI core on the same weights (float32, max abs diff <= 1e-5), GM checkpoints, errors."
from functools import partial
import contextlib
import io

import pytest
import torch
from monai.networks.nets import DiffusionModelUNet as CoreUNet
from monai.networks.nets.diffusion_model_unet import DiffusionModelEncoder as CoreEncoder

from medgen.unet import DiffusionModelEncoder, DiffusionModelUNet
from helpers import gm_reference, to_gm
from helpers import randomize as _randomize

randomize = partial(_randomize, std=0.2)

TOL = 1e-5
SMALL = dict(num_channels=(16, 32, 32), attention_levels=(False, True, True), num_res_blocks=1, norm_num_groups=8,
             num_head_channels=8)
CONFIGS = {
    "self-attention": SMALL,
    "cross-attention": dict(SMALL, with_conditioning=True, cross_attention_dim=12, transformer_num_layers=2),
    "class-labels": dict(SMALL, num_class_embeds=5),
    "resblock-updown": dict(SMALL, resblock_updown=True, num_res_blocks=(2, 1, 2)),
    "fused-qkv-no-fc": dict(SMALL, use_combined_linear=True, include_fc=False),
}


def core_names(kw: dict) -> dict:
    kw = dict(kw)
    kw["channels"] = kw.pop("num_channels")
    return kw


def inputs(sd: int, kw: dict, size: int = 8, batch: int = 2):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 2, *[size] * sd, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    extra = {}
    if kw.get("with_conditioning"): extra["context"] = torch.randn(batch, 3, kw["cross_attention_dim"], generator=g)
    if kw.get("num_class_embeds"): extra["class_labels"] = torch.randint(0, kw["num_class_embeds"], (batch,), generator=g)
    return x, t, extra


def max_diff(a: torch.nn.Module, b: torch.nn.Module, *args, **kwargs) -> float:
    with torch.no_grad(): return (a(*args, **kwargs) - b.eval()(*args, **kwargs)).abs().max().item()


@pytest.mark.parametrize("sd", [2, 3])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_unet_parity(sd, name):
    kw = dict(CONFIGS[name], spatial_dims=sd, in_channels=2, out_channels=3)
    core = randomize(CoreUNet(**core_names(kw)))
    ours = DiffusionModelUNet(**kw)
    ours.load_state_dict(core.state_dict())
    x, t, extra = inputs(sd, kw)
    assert max_diff(core, ours, x, t, **extra) <= TOL


@pytest.mark.parametrize("sd", [2, 3])
def test_unet_controlnet_residuals(sd):
    kw = dict(SMALL, spatial_dims=sd, in_channels=2, out_channels=3)
    core = randomize(CoreUNet(**core_names(kw)))
    ours = DiffusionModelUNet(**core_names(kw))  # MONAI core's argument names work too
    ours.load_state_dict(core.state_dict())
    x, t, _ = inputs(sd, kw)
    shapes = [(2, 16, *[8] * sd), (2, 16, *[8] * sd), (2, 16, *[4] * sd), (2, 32, *[4] * sd), (2, 32, *[2] * sd),
              (2, 32, *[2] * sd)]
    g = torch.Generator().manual_seed(2)
    res = [torch.randn(s, generator=g) for s in shapes]
    mid = torch.randn(2, 32, *[2] * sd, generator=g)
    assert max_diff(core, ours, x, t, down_block_additional_residuals=res, mid_block_additional_residual=mid) <= TOL
    with pytest.raises(ValueError, match="expected 6"):
        ours(x, t, down_block_additional_residuals=res[:3])


@pytest.mark.parametrize("name", ["self-attention", "cross-attention", "resblock-updown"])
def test_gm_state_dict(name):
    kw = dict(CONFIGS[name], spatial_dims=2, in_channels=2, out_channels=3)
    core = randomize(CoreUNet(**core_names(kw)))
    gm = to_gm(core.state_dict())
    check = CoreUNet(**core_names(kw))  # MONAI core's own converter accepts the GM key set ...
    with contextlib.redirect_stdout(io.StringIO()): check.load_old_state_dict(dict(gm))
    assert all(torch.equal(v, core.state_dict()[k]) for k, v in check.state_dict().items())
    ours = DiffusionModelUNet(**kw)  # ... and medgen loads it with a plain load_state_dict, computing as GM does
    ours.load_state_dict(gm)
    gm_reference(core)
    x, t, extra = inputs(2, kw)
    assert max_diff(core, ours, x, t, **extra) <= TOL


@pytest.mark.parametrize("sd", [2, 3])
@pytest.mark.parametrize("name", ["self-attention", "cross-attention", "class-labels"])
def test_encoder_parity(sd, name):
    kw = dict(CONFIGS[name], spatial_dims=sd, in_channels=2, out_channels=3)
    shape = (16, 8) if sd == 2 else (8, 8, 16)
    core = randomize(CoreEncoder(**core_names(kw), input_shape=shape), std=0.05)
    ours = DiffusionModelEncoder(**kw, input_shape=shape)
    ours.load_state_dict(core.state_dict())
    x, t, extra = inputs(sd, kw)
    x = torch.randn(2, 2, *shape)
    assert max_diff(core, ours, x, t, **extra) <= TOL


def test_encoder_any_size_and_lazy_head():
    kw = dict(SMALL, spatial_dims=2, in_channels=1, out_channels=2)
    core = randomize(CoreEncoder(**core_names(kw), input_shape=(16, 16)), std=0.05)
    lazy = DiffusionModelEncoder(**kw)  # no input_shape: the head is sized by the checkpoint
    lazy.load_state_dict(core.state_dict())
    assert lazy.grid == (2, 2)
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3, 300])
    assert max_diff(core, lazy, x, t) <= TOL
    for size in (24, 40, 10):
        assert lazy(torch.randn(2, 1, size, size), t).shape == (2, 2)
    fresh = DiffusionModelEncoder(**kw)  # sized by the first batch
    assert fresh(torch.randn(2, 1, 32, 24), t).shape == (2, 2) and fresh.grid == (4, 3)


def test_errors_and_checkpointing():
    base = dict(spatial_dims=2, in_channels=1, out_channels=1, **SMALL)
    for bad, msg in [(dict(num_channels=(16, 32, 30)), "multiple of norm_num_groups"),
                     (dict(with_conditioning=True), "cross_attention_dim"),
                     (dict(cross_attention_dim=4), "with_conditioning=True"),
                     (dict(dropout_cattn=-0.1), "dropout_cattn=-0.1"),
                     (dict(attention_levels=(True,)), "same size of attention_levels")]:
        with pytest.raises(ValueError, match=msg): DiffusionModelUNet(**{**base, **bad})
    net = DiffusionModelUNet(**base, num_class_embeds=2)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="class_labels"): net(x, t)
    ref = randomize(DiffusionModelUNet(**base), 4).train()
    ck = randomize(DiffusionModelUNet(**base, use_checkpointing=True), 4).train()
    for m in (ref, ck): m(x, t).square().mean().backward()
    for a, b in zip(ref.parameters(), ck.parameters()): torch.testing.assert_close(a.grad, b.grad)
