"medgen.transformer against MONAI core's DecoderOnlyTransformer and VQVAETransformerInferer (float32, <= 1e-5), KV cache."
from functools import partial
import math

import pytest
import torch
from monai.inferers import VQVAETransformerInferer as CoreInferer
from monai.networks.nets import VQVAE as CoreVQVAE
from monai.networks.nets import DecoderOnlyTransformer as CoreTransformer
from monai.utils.ordering import Ordering as CoreOrdering

from medgen.hub import from_pretrained, save_pretrained
from medgen.ordering import Ordering
from medgen.transformer import DecoderOnlyTransformer, VQVAETransformerInferer, _generate, _next_token
from medgen.vqvae import VQVAE
from helpers import randomize as _randomize

randomize = partial(_randomize, std=0.3)

TOL = 1e-5


def core_to_gm(sd: dict, cross: bool) -> dict:
    "GM's block key names: norm2 (MLP) -> norm3, norm_cross_attn -> norm2 (absent without cross-attention)."
    out = {k.replace("norm2.", "norm3.").replace("norm_cross_attn.", "norm2."): v for k, v in sd.items()}
    return out if cross else {k: v for k, v in out.items() if ".norm2." not in k}


def pair(cross=False, max_seq_len=12, num_tokens=17, seed=0, **kw):
    core = randomize(CoreTransformer(num_tokens, max_seq_len, 32, 2, 4, with_cross_attention=cross, **kw), seed)
    ours = DecoderOnlyTransformer(num_tokens, max_seq_len, 32, 2, 4, with_cross_attention=cross, **kw).eval()
    ours.load_state_dict(core.state_dict())
    return core, ours


G = torch.Generator().manual_seed(1)
X = torch.randint(0, 17, (2, 12), generator=G)
CTX = torch.randn(2, 3, 32, generator=G)


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("kw", [{}, {"use_combined_linear": True}, {"include_fc": False}])
def test_parity_core_and_gm_keys(cross, kw):
    core, ours = pair(cross, **kw)
    ctx = CTX if cross else None
    with torch.no_grad():
        ref = core(X, context=ctx)
        assert (ours(X, ctx) - ref).abs().max() <= TOL
        gm = DecoderOnlyTransformer(17, 12, 32, 2, 4, with_cross_attention=cross, **kw).eval()
        gm.load_state_dict(core_to_gm(core.state_dict(), cross))  # plain load_state_dict converts GM's names
        assert (gm(X, ctx) - ref).abs().max() <= TOL
        old = DecoderOnlyTransformer(17, 12, 32, 2, 4, with_cross_attention=cross, **kw).eval()
        old.load_old_state_dict(core_to_gm(core.state_dict(), cross))
        assert (old(X, ctx) - ref).abs().max() <= TOL


def test_causal_and_uniform_closed_form():
    _, m = pair()
    x2 = X.clone(); x2[:, 7:] = (x2[:, 7:] + 3) % 17
    with torch.no_grad(): torch.testing.assert_close(m(X)[:, :7], m(x2)[:, :7], atol=1e-6, rtol=0)
    with torch.no_grad(): m.to_logits.weight.zero_(); m.to_logits.bias.zero_()
    vq = CoreVQVAE(2, 1, 1, channels=(4,), num_res_layers=1, num_res_channels=(4,), downsample_parameters=((2, 4, 1, 1),),
                   upsample_parameters=((2, 4, 1, 1, 0),), num_embeddings=16, embedding_dim=2).eval()
    ll = VQVAETransformerInferer().get_likelihood(torch.rand(2, 1, 6, 6), vq, m, Ordering("raster_scan", 2, (1, 3, 3)))
    torch.testing.assert_close(ll, torch.full((2, 3, 3), -math.log(17)))  # zero logits: p = 1 / num_tokens


@pytest.mark.parametrize("cross", [False, True])
def test_kv_cache_equals_full_forward_at_every_position(cross):
    core, m = pair(cross, use_combined_linear=True)
    ctx = CTX if cross else None
    for chunks in ([1] * 12, [5, 1, 4, 1, 1], [12]):
        cache, outs, i = m.init_cache(), [], 0
        with torch.no_grad():
            for n in chunks: outs.append(m(X[:, i:i + n], ctx, kv_cache=cache)); i += n
            assert (torch.cat(outs, 1) - core(X, context=ctx)).abs().max() <= TOL
        assert cache[0].length == 12 and len(cache) == 2
    with pytest.raises(IndexError, match="max_seq_len=12"): m(X[:, :1], ctx, kv_cache=cache)


@pytest.mark.parametrize("top_k,temperature", [(None, 1.0), (3, 0.7), (1, 1.0)])
def test_cached_sampling_same_tokens(top_k, temperature):
    _, m = pair(max_seq_len=24, seed=3)
    with torch.no_grad(): m.to_logits.bias[16] = -30.0  # BOS 16 never wins
    pick = lambda g: (lambda lg: _next_token(lg, temperature, top_k, 16, g))
    bos = torch.full((3, 1), 16)
    with torch.no_grad():
        for n in (23, 40):  # fits in max_seq_len / sliding window after 24
            a = _generate(m, bos, n, None, pick(torch.Generator().manual_seed(5)), use_cache=True)
            b = _generate(m, bos, n, None, pick(torch.Generator().manual_seed(5)), use_cache=False)
            assert torch.equal(a, b) and a.shape == (3, n + 1) and (a[:, 1:] != 16).all()


def vqvae_pair(spatial_dims=2):
    torch.manual_seed(0)
    kw = dict(channels=(8, 8), num_res_layers=1, num_res_channels=(8, 8), downsample_parameters=((2, 4, 1, 1),) * 2,
              upsample_parameters=((2, 4, 1, 1, 0),) * 2, num_embeddings=8, embedding_dim=4)
    core = CoreVQVAE(spatial_dims, 1, 1, **kw).eval()
    kw["num_channels"] = kw.pop("channels")
    ours = VQVAE(spatial_dims, 1, 1, **kw).eval()
    ours.load_state_dict(core.state_dict())
    return core, ours


@pytest.mark.parametrize("max_seq_len", [16, 10])
@pytest.mark.parametrize("cross", [False, True])
def test_inferer_parity(max_seq_len, cross):
    vq_core, vq = vqvae_pair()
    core_tr = randomize(CoreTransformer(9, max_seq_len, 16, 2, 2, with_cross_attention=cross), seed=max_seq_len)
    with torch.no_grad(): core_tr.to_logits.bias[8] = -30.0
    tr = DecoderOnlyTransformer(9, max_seq_len, 16, 2, 2, with_cross_attention=cross).eval()
    tr.load_state_dict(core_tr.state_dict())
    imgs = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    co, o = CoreOrdering("s_curve", 2, (1, 4, 4)), Ordering("s_curve", 2, (1, 4, 4))
    cond = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(5)) if cross else None
    ci, inf = CoreInferer(), VQVAETransformerInferer()
    torch.manual_seed(7); ref = ci(imgs, vq_core, core_tr, co, condition=cond, return_latent=True)
    torch.manual_seed(7); got = inf(imgs, vq, tr, o, condition=cond, return_latent=True)
    assert (got[0] - ref[0]).abs().max() <= TOL and torch.equal(got[1], ref[1]) and got[2] == ref[2] == (4, 4)
    for resample, mode in ((False, "nearest"), (True, "nearest"), (True, "bilinear")):
        kw = dict(condition=cond, resample_latent_likelihoods=resample, resample_interpolation_mode=mode)
        ref, got = ci.get_likelihood(imgs, vq_core, core_tr, co, **kw), inf.get_likelihood(imgs, vq, tr, o, **kw)
        assert got.shape == ref.shape == ((2, 1, 16, 16) if resample else (2, 4, 4))
        assert (got - ref).abs().max() <= TOL
    start = torch.full((2, 1), 8)
    for top_k, seed in ((1, 0), (None, 11)):
        torch.manual_seed(seed)
        ref = ci.sample((4, 4), start, vq_core, core_tr, co, conditioning=cond, top_k=top_k, verbose=False)
        for use_cache in (True, False):
            torch.manual_seed(seed)
            got = inf.sample((4, 4), start, vq, tr, o, conditioning=cond, top_k=top_k, verbose=False, use_cache=use_cache)
            assert (got - ref).abs().max() <= TOL
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(inf.sample((4, 4), start, vq, tr, o, cond, verbose=False, generator=g1),
                       inf.sample((4, 4), start, vq, tr, o, cond, verbose=False, generator=g2, use_cache=False))


def test_inferer_3d_likelihood_trilinear():
    vq_core, vq = vqvae_pair(3)
    core_tr = randomize(CoreTransformer(9, 8, 16, 1, 2), seed=2)
    tr = DecoderOnlyTransformer(9, 8, 16, 1, 2).eval(); tr.load_state_dict(core_tr.state_dict())
    imgs = torch.rand(2, 1, 8, 8, 8, generator=torch.Generator().manual_seed(4))
    o = Ordering("raster_scan", 3, (1, 2, 2, 2))
    kw = dict(resample_latent_likelihoods=True, resample_interpolation_mode="trilinear")
    ref = CoreInferer().get_likelihood(imgs, vq_core, core_tr, o, **kw)
    got = VQVAETransformerInferer().get_likelihood(imgs, vq, tr, o, **kw)
    assert got.shape == (2, 1, 8, 8, 8) and (got - ref).abs().max() <= TOL


def test_errors_as_monai():
    core, ours = pair()
    long = torch.zeros(1, 13, dtype=torch.long)
    for m in (core, ours):
        with pytest.raises(IndexError): m(long)
    with pytest.raises(ValueError, match="max_seq_len=12"): ours(long)
    with pytest.raises(IndexError, match="num_tokens=17"): ours(torch.full((1, 3), 17))
    with pytest.raises(TypeError, match="integer tokens"): ours(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="attn_layers_dim=30"): DecoderOnlyTransformer(10, 8, 30, 1, 4)
    with pytest.raises(ValueError, match="embedding_dropout_rate"): DecoderOnlyTransformer(10, 8, 32, 1, 4, 0, 1.5)
    vq_core, _ = vqvae_pair()
    imgs, o = torch.rand(1, 1, 16, 16), Ordering("raster_scan", 2, (1, 4, 4))
    tr = DecoderOnlyTransformer(9, 16, 16, 1, 2)
    for inf in (CoreInferer(), VQVAETransformerInferer()):
        with pytest.raises(ValueError, match="cubic"):
            inf.get_likelihood(imgs, vq_core, tr, o, resample_latent_likelihoods=True, resample_interpolation_mode="cubic")
    with pytest.raises(ValueError, match="temperature=0"):
        VQVAETransformerInferer().sample((4, 4), torch.full((1, 1), 8), vq_core, tr, o, temperature=0, verbose=False)
    with pytest.raises(ValueError, match="top_k=0"):
        VQVAETransformerInferer().sample((4, 4), torch.full((1, 1), 8), vq_core, tr, o, top_k=0, verbose=False)


def test_hub_round_trip(tmp_path):
    _, m = pair(cross=True, use_combined_linear=True)
    back = from_pretrained(save_pretrained(m, tmp_path / "tr")).eval()
    assert type(back) is DecoderOnlyTransformer and back.with_cross_attention
    with torch.no_grad(): assert torch.equal(back(X, CTX), m(X, CTX))
