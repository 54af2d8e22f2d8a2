"medgen.attention against MONAI core's attention blocks on the same weights (float32, max abs diff <= 1e-5)."
from functools import partial
import pytest
import torch
from monai.networks.blocks import CrossAttentionBlock, SABlock as CoreSABlock, SpatialAttentionBlock as CoreSpatial
from monai.networks.blocks import TransformerBlock as CoreTransformerBlock
from monai.networks.nets.diffusion_model_unet import SpatialTransformer as CoreSpatialTransformer

from medgen.attention import (MultiHeadAttention, SABlock, SpatialAttentionBlock, SpatialTransformer, TransformerBlock,
                              dot_product_attention)
from helpers import randomize as _randomize

randomize = partial(_randomize, std=0.3)

TOL = 1e-5


def diff(core, ours, *args, state_dict=None, **kwargs) -> float:
    ours.load_state_dict(core.state_dict() if state_dict is None else state_dict)
    with torch.no_grad(): return (core(*args, **kwargs) - ours.eval()(*args, **kwargs)).abs().max().item()


X = torch.randn(2, 24, 32, generator=torch.Generator().manual_seed(1))
CTX = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(2))


def test_dot_product_attention_matches_formula():
    q, k, v = (torch.randn(2, 3, 7, 4, generator=torch.Generator().manual_seed(i)) for i in range(3))
    w = (q @ k.transpose(-1, -2) / 2).softmax(-1)
    torch.testing.assert_close(dot_product_attention(q, k, v), w @ v)
    mask = torch.ones(7, 7, dtype=torch.bool).tril()
    wc = (q @ k.transpose(-1, -2) / 2).masked_fill(~mask, float("-inf")).softmax(-1)
    torch.testing.assert_close(dot_product_attention(q, k, v, causal=True), wc @ v)


@pytest.mark.parametrize("combined", [True, False])
@pytest.mark.parametrize("causal", [True, False])
def test_sablock(combined, causal):
    core = randomize(CoreSABlock(32, 4, qkv_bias=True, causal=causal, sequence_length=24, use_combined_linear=combined))
    assert diff(core, SABlock(32, 4, qkv_bias=True, causal=causal, sequence_length=24), X) <= TOL


def test_cross_attention_block():
    core = randomize(CrossAttentionBlock(32, 4, context_input_size=12, dim_head=8))
    assert diff(core, MultiHeadAttention(32, 4, dim_head=8, context_dim=12), X, context=CTX) <= TOL


@pytest.mark.parametrize("cross", [True, False])
def test_transformer_block_core_and_gm_keys(cross):
    core = randomize(CoreTransformerBlock(32, 64, 4, causal=True, sequence_length=24, with_cross_attention=cross))
    ctx = torch.randn(2, 5, 32)
    assert diff(core, TransformerBlock(32, 64, 4, causal=True, sequence_length=24, with_cross_attention=cross),
                X, context=ctx) <= TOL
    gm = {k.replace("norm2.", "norm3.").replace("norm_cross_attn.", "norm2."): v for k, v in core.state_dict().items()}
    if not cross: gm = {k: v for k, v in gm.items() if not k.startswith("norm2.")}
    assert diff(core, TransformerBlock(32, 64, 4, causal=True, sequence_length=24, with_cross_attention=cross),
                X, context=ctx, state_dict=gm) <= TOL


@pytest.mark.parametrize("sd", [2, 3])
def test_spatial_blocks(sd):
    x = torch.randn(2, 32, *[6, 4, 5][:sd])
    core = randomize(CoreSpatial(sd, 32, 8, norm_num_groups=8))
    assert diff(core, SpatialAttentionBlock(sd, 32, 8, norm_num_groups=8), x) <= TOL
    gm = {k.replace("attn.", "").replace("out_proj.", "proj_attn."): v for k, v in core.state_dict().items()}
    core_gm = randomize(CoreSpatial(sd, 32, 8, norm_num_groups=8))  # same weights; GM never applies proj_attn
    with torch.no_grad(): core_gm.attn.out_proj.weight.copy_(torch.eye(32)); core_gm.attn.out_proj.bias.zero_()
    assert diff(core_gm, SpatialAttentionBlock(sd, 32, 8, norm_num_groups=8), x, state_dict=gm) <= TOL
    assert diff(core, SpatialAttentionBlock(sd, 32, 8, norm_num_groups=8), x, state_dict=gm) > 1e-3
    kw = dict(spatial_dims=sd, in_channels=32, num_attention_heads=4, num_head_channels=4, num_layers=2, norm_num_groups=8,
              cross_attention_dim=12, upcast_attention=True)
    core = randomize(CoreSpatialTransformer(**kw))
    assert diff(core, SpatialTransformer(**kw), x, context=CTX) <= TOL


def test_errors():
    with pytest.raises(ValueError, match="hidden_size=30"): MultiHeadAttention(30, 4)
    with pytest.raises(ValueError, match="sequence_length=None"): SABlock(32, 4, causal=True)
    with pytest.raises(ValueError, match="num_head_channels=5"): SpatialAttentionBlock(2, 32, 5)
