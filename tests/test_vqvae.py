"""medgen.vqvae (chapter 21) against MONAI core on the same weights, the EMA update, DDP synchronisation, errors, hub.

Parity: MONAI core's VQVAE / EMAQuantizer / VectorQuantizer (GM's layout and names) load into medgen's modules with
`strict=True`; float32 outputs must agree within 1e-5 (measured: bit-identical) in evaluation mode, and after a few
training steps (forward passes that update the codebook by EMA, and SGD steps) weights, buffers and codebooks too.
"""
from functools import partial
import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from monai.networks.layers.vector_quantizer import EMAQuantizer as CoreEMAQuantizer
from monai.networks.layers.vector_quantizer import VectorQuantizer as CoreVectorQuantizer
from monai.networks.nets import VQVAE as CoreVQVAE

from medgen.hub import from_pretrained, save_pretrained
from medgen.training import AutoencoderStep, Trainer, TrainConfig, init_distributed
from medgen.vqvae import VQVAE, EMAQuantizer, VectorQuantizer, codebook_perplexity
from helpers import randomize as _randomize
from helpers import free_port

randomize = partial(_randomize, std=0.2, eval=False)

TOL = 1e-5


def kwargs(sd: int, **kw) -> dict:
    return dict(spatial_dims=sd, in_channels=1, out_channels=2, num_channels=(8, 16), num_res_channels=(8, 4),
                num_res_layers=2, downsample_parameters=((2, 4, 1, 1), (2, 3, 1, 1)),
                upsample_parameters=((2, 3, 1, 1, 1), (2, 4, 1, 1, 0)), num_embeddings=16, embedding_dim=4, **kw)


def core(kw: dict) -> torch.nn.Module:
    kw = dict(kw)
    kw["channels"] = kw.pop("num_channels")
    return CoreVQVAE(**kw)


def pair(sd: int, std: float = 0.2, **kw):
    torch.manual_seed(0)
    c = randomize(core(kwargs(sd, **kw)), std=std)
    m = VQVAE(**kwargs(sd, **kw))
    m.load_state_dict(c.state_dict())
    return c, m


def diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


CONFIGS = {"default": {}, "leakyrelu-sigmoid": dict(act=("leakyrelu", {"negative_slope": 0.1}), output_act="SIGMOID"),
           "prelu-dropout": dict(act="PRELU", dropout=0.1), "kaiming": dict(embedding_init="kaiming_uniform")}


@pytest.mark.parametrize("sd", [2, 3])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_eval_parity(sd, name):
    c, m = pair(sd, **CONFIGS[name])
    c.eval(); m.eval()
    x = torch.randn(2, 1, *[16] * sd, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert diff(c(x), m(x)) <= TOL
        tok = m.index_quantize(x)
        assert torch.equal(c.index_quantize(x), tok) and tok.shape == (2, *[4] * sd) and tok.dtype == torch.long
        assert diff([c.decode_samples(tok)], [m.decode_samples(tok)]) <= TOL
        assert diff([c.encode_stage_2_inputs(x)], [m.encode_stage_2_inputs(x)]) <= TOL
        z = m.encode_stage_2_inputs(x, quantized=False)
        assert torch.equal(z, m.encode(x))
        assert diff([c.decode_stage_2_outputs(z)], [m.decode_stage_2_outputs(z)]) <= TOL


@pytest.mark.parametrize("sd", [2, 3])
def test_index_round_trip(sd):
    "Decoding the tokens gives the reconstruction (z + sg[z_q - z] equals z_q up to rounding)."
    torch.manual_seed(0)
    m = VQVAE(**kwargs(sd)).eval()
    x = torch.rand(2, 1, *[16] * sd)
    with torch.no_grad():
        assert diff([m.decode_samples(m.index_quantize(x))], [m(x)[0]]) <= 1e-6


@pytest.mark.parametrize("sd", [2, 3])
def test_train_mode_parity_ema_and_sgd(sd):
    c, m = pair(sd, std=0.1, decay=0.8)
    x = torch.randn(4, 1, *[16] * sd, generator=torch.Generator().manual_seed(2))
    opts = [torch.optim.SGD([p for p in n.parameters() if p.requires_grad], lr=0.01) for n in (c, m)]
    for _ in range(4):
        outs = []
        for net, opt in zip((c, m), opts):
            net.train(); opt.zero_grad()
            recon, loss = net(x)
            (F.l1_loss(recon, x.expand_as(recon)) + loss).backward(); opt.step()
            outs.append((recon, loss))
        assert diff(*outs) <= TOL
    sc = c.state_dict()
    for k, v in m.state_dict().items():
        assert torch.isfinite(v).all() and (v - sc[k]).abs().max() <= TOL, k
    assert sc["quantizer.quantizer.ema_cluster_size"].sum() > 0   # the EMA moved
    assert abs(float(m.quantizer.perplexity) - float(c.quantizer.perplexity)) <= 1e-6


@pytest.mark.parametrize("sd", [2, 3])
def test_quantizer_parity_and_gm_prerelease_names(sd):
    torch.manual_seed(1)
    cq = CoreVectorQuantizer(CoreEMAQuantizer(sd, 16, 4, decay=0.7))
    mq = VectorQuantizer(EMAQuantizer(sd, 16, 4, decay=0.7))
    mq.load_state_dict(cq.state_dict())
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        z = torch.randn(3, 4, *[5] * sd, generator=g)
        assert diff(cq.train()(z), mq.train()(z)) <= TOL
        assert torch.equal(cq.quantizer.quantize(z)[2], mq.quantize(z))
    for k, v in mq.state_dict().items(): assert (v - cq.state_dict()[k]).abs().max() <= TOL
    old = {k.replace("quantizer.", "_quantizer.", 1).replace("embedding", "_embedding").replace("ema_", "_ema_"): v
           for k, v in cq.state_dict().items()}
    assert set(old) == {"_quantizer._embedding.weight", "_quantizer._ema_cluster_size", "_quantizer._ema_w"}
    mo = VectorQuantizer(EMAQuantizer(sd, 16, 4))
    mo.load_state_dict(old)
    for k, v in mo.state_dict().items(): assert torch.equal(v, cq.state_dict()[k])


def test_same_seed_same_initial_weights_as_monai():
    torch.manual_seed(5); a = core(kwargs(3)).state_dict()
    torch.manual_seed(5); b = VQVAE(**kwargs(3)).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ema_update_closed_form():
    q = EMAQuantizer(2, 3, 2, decay=0.5, epsilon=0.1).train()
    e0 = torch.tensor([[0., 0.], [10., 10.], [-10., 10.]])
    with torch.no_grad(): q.embedding.weight.copy_(e0); q.ema_w.copy_(e0)
    z = torch.tensor([[0.5, 0.], [0., 1.], [11., 10.]])[..., None, None]
    quantized, loss, idx = q(z)
    assert idx.flatten().tolist() == [0, 0, 1] and idx.shape == (3, 1, 1)
    n_cluster = torch.tensor([1., 0.5, 0.])
    m = 0.5 * e0 + 0.5 * torch.tensor([[0.5, 1.], [11., 10.], [0., 0.]])
    smoothed = (n_cluster + 0.1) / (1.5 + 0.3) * 1.5
    assert torch.allclose(q.ema_cluster_size, n_cluster) and torch.allclose(q.ema_w, m)
    assert torch.allclose(q.embedding.weight, m / smoothed[:, None])
    assert torch.allclose(loss, torch.tensor(0.25 * 2.25 / 6))          # to the codes before the update
    assert torch.allclose(quantized, e0[idx.flatten()][..., None, None], atol=1e-6)
    w = q.embedding.weight.clone(); q.eval()(z)
    assert torch.equal(q.embedding.weight, w)                            # no update in evaluation mode


def test_straight_through_and_commitment_gradients():
    q = EMAQuantizer(2, 8, 4).eval()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    quantized, loss, idx = q(z)
    up = torch.randn_like(z)
    (quantized * up).sum().backward()
    assert torch.equal(z.grad, up)                                       # identity gradient through the lookup
    z.grad = None
    q(z)[1].backward()
    zq = q.embed(idx)
    assert torch.allclose(z.grad, 0.25 * 2 * (z - zq).detach() / z.numel(), atol=1e-7)


def test_perplexity_closed_forms():
    assert codebook_perplexity(torch.zeros(10, dtype=torch.long), 8).item() == pytest.approx(1.0)
    assert codebook_perplexity(torch.arange(8).repeat(3), 8).item() == pytest.approx(8.0, rel=1e-5)
    assert codebook_perplexity(torch.tensor([[0, 1], [2, 3]]), 100).item() == pytest.approx(4.0, rel=1e-5)
    p = torch.tensor([0.5, 0.25, 0.25])
    idx = torch.tensor([0, 0, 1, 2])
    assert codebook_perplexity(idx, 3).item() == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-6)


def test_index_quantize_is_a_pure_lookup():
    m = VQVAE(**kwargs(2)).train()
    w = m.quantizer.quantizer.embedding.weight.clone()
    m.index_quantize(torch.randn(2, 1, 16, 16))
    assert torch.equal(m.quantizer.quantizer.embedding.weight, w)


def test_1d_and_odd_resampling():
    m = VQVAE(1, 2, 3, num_channels=(8,), num_res_channels=4, num_res_layers=1, downsample_parameters=(2, 4, 1, 1),
              upsample_parameters=(2, 4, 1, 1, 0), embedding_dim=4)
    assert m(torch.randn(2, 2, 16))[0].shape == (2, 3, 16)
    m3 = VQVAE(3, 1, 1, num_channels=(8, 8), num_res_channels=8, num_res_layers=1, embedding_dim=4,
               downsample_parameters=((2, 4, 1, 1), (3, 3, 1, 1)), upsample_parameters=((3, 3, 1, 1, 2), (2, 4, 1, 1, 0)))
    x = torch.randn(1, 1, 12, 12, 12)
    assert m3.index_quantize(x).shape == (1, 2, 2, 2) and m3(x)[0].shape == x.shape


BAD = {
    "num_res_channels length": (dict(num_res_channels=(8, 8, 8)), "num_res_channels"),
    "downsample length": (dict(downsample_parameters=((2, 4, 1, 1),) * 3), "same length as `num_channels` (2)"),
    "upsample length": (dict(upsample_parameters=((2, 4, 1, 1, 0),)), "same length as `num_channels` (2)"),
    "downsample width": (dict(downsample_parameters=((2, 4, 1),) * 2), "4 integers"),
    "upsample width": (dict(upsample_parameters=(2, 4, 1, 1)), "5 integers"),
    "downsample type": (dict(downsample_parameters=(2.0, 4, 1, 1)), "single tuple of integer"),
    "embedding_init": (dict(embedding_init="xavier"), "embedding_init='xavier'"),
    "act": (dict(act="swishy"), "act='swishy'"),
    "both channel names": (dict(channels=(4, 4)), "give one of them"),
    "spatial_dims": (dict(spatial_dims=4), "spatial_dims=4"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_errors(name):
    kw, msg = BAD[name]
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        VQVAE(**{**kwargs(2), **kw})


@pytest.mark.parametrize("name", ["num_res_channels length", "downsample length", "upsample length", "downsample width",
                                  "upsample width"])
def test_monai_raises_valueerror_too(name):
    with pytest.raises(ValueError):
        core({**kwargs(2), **BAD[name][0]})


def test_other_errors_and_names():
    with pytest.raises(TypeError, match="num_channels=8"): VQVAE(**{**kwargs(2), "num_channels": 8})
    with pytest.raises(TypeError, match="quantizer must be an nn.Module"): VectorQuantizer()
    with pytest.raises(ValueError, match="embedding_dim=4"): EMAQuantizer(2, 8, 4)(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="decay=1.5"): EMAQuantizer(2, 8, 4, decay=1.5)
    m = VQVAE(**{**kwargs(2), "num_channels": (96, 96, 192), "channels": (8, 16)})   # MONAI core's name
    assert m.num_channels == m.channels == (8, 16)


def test_checkpointing_same_gradients():
    ref, ck = VQVAE(**kwargs(2)), VQVAE(**kwargs(2), use_checkpointing=True)
    ck.load_state_dict(ref.state_dict())
    x = torch.randn(2, 1, 16, 16)
    for m in (ref, ck): m.eval(); sum(t.sum() for t in m(x)).backward()
    for a, b in zip(ref.parameters(), ck.parameters()):
        if a.grad is not None: assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_hub_round_trip_with_ema_buffers(tmp_path):
    m = VQVAE(**kwargs(3, act=("leakyrelu", {"negative_slope": 0.1}), decay=0.9, embedding_init="kaiming_uniform"))
    x = torch.randn(2, 1, 16, 16, 16)
    m.train()(x)
    save_pretrained(m, tmp_path / "vq")
    back = from_pretrained(tmp_path / "vq")          # class from config.json (medgen is allow-listed)
    assert type(back) is VQVAE and back.quantizer.quantizer.decay == 0.9
    for k, v in m.state_dict().items(): assert torch.equal(back.state_dict()[k], v), k
    assert back.state_dict()["quantizer.quantizer.ema_cluster_size"].sum() > 0
    m.train()(x); back.train()(x)                    # training continues identically
    assert torch.equal(m.quantizer.quantizer.embedding.weight, back.quantizer.quantizer.embedding.weight)
    q = EMAQuantizer(2, 8, 4, decay=0.3)
    save_pretrained(q, tmp_path / "q")
    assert from_pretrained(tmp_path / "q").decay == 0.3


# ---------- DistributedDataParallel: the codebook statistics are summed over the processes ----------
STEPS = 4


def _data(n: int = 16):
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(1, 8, 8, generator=g)} for _ in range(n)]


def _train(out: Path, batch_size: int) -> dict:
    torch.manual_seed(0)
    m = VQVAE(2, 1, 1, num_channels=(8,), num_res_channels=8, num_res_layers=1, downsample_parameters=(2, 4, 1, 1),
              upsample_parameters=(2, 4, 1, 1, 0), num_embeddings=8, embedding_dim=4, decay=0.7)
    with torch.no_grad(): m.quantizer.quantizer.embedding.weight.mul_(0.1); m.quantizer.quantizer.ema_w.mul_(0.1)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.05)
    cfg = TrainConfig(max_steps=STEPS, batch_size=batch_size, progress=False, tensorboard=False, seed=3,
                      precision="fp32")  # exact equality: bf16 rounds a batch of 4 differently from one of 8
    Trainer(AutoencoderStep(), {"autoencoder": m}, {"autoencoder": opt}, _data(), out, cfg).fit()
    return {k: v.clone() for k, v in m.state_dict().items()}


def _worker(rank: int, world: int, port: int, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    init_distributed("cpu")
    try:
        state = _train(Path(out) / "ddp", batch_size=4)
        torch.save(state, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_process(tmp_path):
    # fork: the children inherit the imported modules; one thread each, no data-loader workers
    mp.start_processes(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    single = _train(tmp_path / "single", batch_size=8)
    key = "quantizer.quantizer.embedding.weight"
    assert torch.equal(ranks[0][key], ranks[1][key])                   # both processes hold the same codebook
    for k, v in single.items():
        assert (ranks[0][k] - v).abs().max() <= TOL, k                 # ... which is the one of the global batch
    torch.manual_seed(0)
    start = VQVAE(2, 1, 1, num_channels=(8,), num_res_channels=8, num_res_layers=1, downsample_parameters=(2, 4, 1, 1),
                  upsample_parameters=(2, 4, 1, 1, 0), num_embeddings=8, embedding_dim=4).state_dict()
    assert (single[key] - 0.1 * start[key]).abs().max() > 1e-3        # the codebook moved
