"""Bad arguments across medgen's public constructors and main methods: each is refused before any computing, with a
ValueError or TypeError (or the type GM/MONAI raise, through a class that is also a ValueError) whose message names
the argument. One parametrized case per bad input."""
import json
import re

import pytest
import torch

import medgen
from medgen import (AutoencoderKL, ControlNet, DDIMScheduler, DDPMScheduler, DecoderOnlyTransformer, DiffusionInferer,
                    DiffusionModelUNet, EMAQuantizer, JukeboxLoss, LatentDiffusionInferer, MultiScalePatchDiscriminator,
                    PatchAdversarialLoss, PatchDiscriminator, PerceptualLoss, PNDMScheduler, RFlowScheduler, SABlock,
                    SPADEAutoencoderKL, SPADEDiffusionModelUNet, SPADENet, SpatialRescaler, TransformerBlock, VQVAE)

CASES = []


def bad(ident: str, fn, *names: str, errors=(ValueError, TypeError)):
    "Register: calling fn() must raise one of `errors` whose message contains every name in `names`."
    CASES.append(pytest.param(fn, names, errors, id=ident))


def x2(c=1, n=8, b=2): return torch.randn(b, c, n, n, generator=torch.Generator().manual_seed(0))
def t2(b=2): return torch.tensor([3, 7][:b])


# ---- DiffusionModelUNet (GM's names; MONAI core's `channels`)
U = dict(spatial_dims=2, in_channels=1, out_channels=1, num_channels=(8, 16), attention_levels=(False, True),
         num_res_blocks=1, norm_num_groups=8, num_head_channels=8)
def unet(**kw): return DiffusionModelUNet(**{**U, **kw})
for v in (4, 0, "2"): bad(f"unet-spatial_dims={v!r}", lambda v=v: unet(spatial_dims=v), "spatial_dims")
for v in (0, -1, 1.5, None): bad(f"unet-in_channels={v!r}", lambda v=v: unet(in_channels=v), "in_channels")
for v in (0, -2): bad(f"unet-out_channels={v!r}", lambda v=v: unet(out_channels=v), "out_channels")
for v in ((-8, 16), (8, 0), (), "816"): bad(f"unet-num_channels={v!r}", lambda v=v: unet(num_channels=v), "num_channels")
bad("unet-channels-negative", lambda: DiffusionModelUNet(2, 1, 1, channels=(-32, 64), attention_levels=(False, True),
                                                         norm_num_groups=8, num_res_blocks=1), "channels")
bad("unet-num_channels-not-multiple-of-groups", lambda: unet(num_channels=(8, 12)), "num_channels", "norm_num_groups")
bad("unet-attention_levels-length", lambda: unet(attention_levels=(True,)), "attention_levels")
for v in (0, -1, (1,), (1, 0)): bad(f"unet-num_res_blocks={v!r}", lambda v=v: unet(num_res_blocks=v), "num_res_blocks")
for v in (0, -4): bad(f"unet-norm_num_groups={v!r}", lambda v=v: unet(norm_num_groups=v), "norm_num_groups")
for v in (0.0, -1e-6): bad(f"unet-norm_eps={v!r}", lambda v=v: unet(norm_eps=v), "norm_eps")
for v in (0, 3, (8,)): bad(f"unet-num_head_channels={v!r}", lambda v=v: unet(num_head_channels=v), "num_head_channels")
bad("unet-with_conditioning-no-dim", lambda: unet(with_conditioning=True), "cross_attention_dim")
bad("unet-cross_attention_dim=0", lambda: unet(with_conditioning=True, cross_attention_dim=0), "cross_attention_dim")
bad("unet-transformer_num_layers=0", lambda: unet(with_conditioning=True, cross_attention_dim=4,
                                                   transformer_num_layers=0), "transformer_num_layers")
bad("unet-num_class_embeds=0", lambda: unet(num_class_embeds=0), "num_class_embeds")
for v in (1.5, -0.1): bad(f"unet-dropout_cattn={v!r}", lambda v=v: unet(dropout_cattn=v), "dropout_cattn")
NET = unet()
COND = unet(with_conditioning=True, cross_attention_dim=6, num_class_embeds=3)
bad("unet.forward-x-channels", lambda: NET(x2(c=2), t2()), "x", errors=(ValueError, RuntimeError))
bad("unet.forward-x-ndim", lambda: NET(torch.randn(2, 1, 8), t2()), "x")
bad("unet.forward-x-15x15", lambda: NET(x2(n=15), t2()), "x", "divisible")
bad("unet.forward-timesteps-shape", lambda: NET(x2(), torch.tensor([1, 2, 3])), "timesteps")
bad("unet.forward-timesteps-2d", lambda: NET(x2(), torch.ones(2, 1).long()), "timesteps")
bad("unet.forward-context-unconditioned", lambda: NET(x2(), t2(), context=torch.randn(2, 3, 6)), "context")
bad("unet.forward-context-width", lambda: COND(x2(), t2(), context=torch.randn(2, 3, 5), class_labels=t2() % 3),
    "context", "cross_attention_dim")
bad("unet.forward-class_labels-range", lambda: COND(x2(), t2(), context=torch.randn(2, 3, 6),
                                                     class_labels=torch.tensor([0, 3])), "class_labels")
bad("unet.forward-class_labels-missing", lambda: COND(x2(), t2(), context=torch.randn(2, 3, 6)), "class_labels")
bad("unet.forward-class_labels-float", lambda: COND(x2(), t2(), context=torch.randn(2, 3, 6),
                                                     class_labels=torch.tensor([0.0, 1.0])), "class_labels")

# ---- AutoencoderKL
A = dict(spatial_dims=2, in_channels=1, out_channels=1, num_channels=(8, 16), attention_levels=(False, False),
         num_res_blocks=1, norm_num_groups=8, latent_channels=2)
def aekl(**kw): return AutoencoderKL(**{**A, **kw})
bad("aekl-spatial_dims=4", lambda: aekl(spatial_dims=4), "spatial_dims")
for n in ("in_channels", "out_channels", "latent_channels"):
    for v in (0, -1): bad(f"aekl-{n}={v}", lambda n=n, v=v: aekl(**{n: v}), n)
bad("aekl-num_channels-negative", lambda: aekl(num_channels=(8, -16)), "num_channels")
bad("aekl-num_res_blocks=0", lambda: aekl(num_res_blocks=0), "num_res_blocks")
bad("aekl-attention_levels-length", lambda: aekl(attention_levels=(False,)), "attention_levels")
bad("aekl-norm_num_groups", lambda: aekl(norm_num_groups=3), "norm_num_groups")
bad("aekl-norm_eps=0", lambda: aekl(norm_eps=0.0), "norm_eps")
AE = aekl()
bad("aekl.encode-channels", lambda: AE.encode(x2(c=3)), "x", errors=(ValueError, RuntimeError))
bad("aekl.decode-latent-channels", lambda: AE.decode(torch.randn(2, 3, 4, 4)), "z", errors=(ValueError, RuntimeError))
bad("aekl.forward-15x15", lambda: AE(x2(n=15)), "x", "divisible", errors=(ValueError, RuntimeError))
bad("aekl.reconstruct-15x16", lambda: AE.reconstruct(torch.randn(1, 1, 15, 16)), "x", errors=(ValueError, RuntimeError))
bad("aekl.decode-latent-ndim", lambda: AE.decode(torch.randn(2, 2, 4)), "z", errors=(ValueError, RuntimeError))

# ---- VQVAE and its quantizer
V = dict(spatial_dims=2, in_channels=1, out_channels=1, num_channels=(8, 8), num_res_channels=8, num_res_layers=1,
         downsample_parameters=((2, 4, 1, 1),) * 2, upsample_parameters=((2, 4, 1, 1, 0),) * 2, num_embeddings=6,
         embedding_dim=4)
def vqvae(**kw): return VQVAE(**{**V, **kw})
bad("vqvae-spatial_dims=0", lambda: vqvae(spatial_dims=0), "spatial_dims")
for n in ("in_channels", "out_channels", "num_embeddings", "embedding_dim"):
    bad(f"vqvae-{n}=0", lambda n=n: vqvae(**{n: 0}), n)
bad("vqvae-num_channels-negative", lambda: vqvae(num_channels=(8, -8)), "num_channels")
bad("vqvae-num_res_layers=-1", lambda: vqvae(num_res_layers=-1), "num_res_layers")
bad("vqvae-downsample_parameters-length", lambda: vqvae(downsample_parameters=((2, 4, 1, 1),) * 3), "downsample_parameters")
bad("vqvae-downsample_parameters-entry", lambda: vqvae(downsample_parameters=((2, 4, 1),) * 2), "downsample_parameters")
bad("vqvae-upsample_parameters-entry", lambda: vqvae(upsample_parameters=((2, 4, 1, 1),) * 2), "upsample_parameters")
for n, v in (("commitment_cost", -0.1), ("decay", 1.5), ("epsilon", -1e-3), ("dropout", 1.5)):
    bad(f"vqvae-{n}={v}", lambda n=n, v=v: vqvae(**{n: v}), n)
bad("vqvae-embedding_init", lambda: vqvae(embedding_init="uniform"), "embedding_init")
VQ = vqvae()
bad("vqvae.forward-15x15", lambda: VQ(x2(n=15)), "images", "(12, 12)", errors=(ValueError, RuntimeError))
bad("vqvae.forward-channels", lambda: VQ(x2(c=2)), "x", errors=(ValueError, RuntimeError))
for n, v in (("num_embeddings", 0), ("embedding_dim", -1), ("decay", 2.0), ("epsilon", -1.0), ("spatial_dims", 5)):
    bad(f"ema-{n}={v}", lambda n=n, v=v: EMAQuantizer(**{**dict(spatial_dims=2, num_embeddings=4, embedding_dim=3),
                                                        n: v}), n)
bad("ema.quantize-channels", lambda: EMAQuantizer(2, 4, 3).quantize(torch.randn(1, 2, 3, 3)), "inputs",
    errors=(ValueError, RuntimeError))

# ---- discriminators and the adversarial loss
P = dict(spatial_dims=2, num_channels=4, in_channels=1, num_layers_d=2)
def patch(**kw): return PatchDiscriminator(**{**P, **kw})
for n, v in (("num_layers_d", 0), ("num_channels", 0), ("in_channels", -1), ("out_channels", 0), ("kernel_size", 0),
             ("spatial_dims", 4), ("dropout", 1.5)):
    bad(f"patch-{n}={v}", lambda n=n, v=v: patch(**{n: v}), n)
bad("patch.forward-channels", lambda: patch()(x2(c=3, n=16)), "x", errors=(ValueError, RuntimeError))
MS = dict(num_d=2, num_layers_d=1, spatial_dims=2, num_channels=4, in_channels=1, minimum_size_im=16)
for n, v in (("num_d", 0), ("num_layers_d", 0), ("minimum_size_im", 2)):
    bad(f"multiscale-{n}={v}", lambda n=n, v=v: MultiScalePatchDiscriminator(**{**MS, n: v}), n)
bad("adversarial-criterion", lambda: PatchAdversarialLoss(criterion="wasserstein"), "criterion")
bad("adversarial-reduction", lambda: PatchAdversarialLoss(reduction="avg"), "reduction")

# ---- ControlNet
C = dict(spatial_dims=2, in_channels=1, num_channels=(8, 16), attention_levels=(False, False), num_res_blocks=1,
         norm_num_groups=8, conditioning_embedding_num_channels=(8,))
def cnet(**kw): return ControlNet(**{**C, **kw})
bad("controlnet-conditioning_embedding_in_channels=0", lambda: cnet(conditioning_embedding_in_channels=0),
    "conditioning_embedding_in_channels")
bad("controlnet-conditioning_embedding_num_channels", lambda: cnet(conditioning_embedding_num_channels=(0,)),
    "conditioning_embedding_num_channels")
bad("controlnet-num_channels", lambda: cnet(num_channels=(-8, 16)), "num_channels")
CN = cnet()
bad("controlnet.forward-cond-channels", lambda: CN(x2(), t2(), x2(c=3)), "controlnet_cond",
    errors=(ValueError, RuntimeError))
bad("controlnet.forward-cond-size", lambda: CN(x2(), t2(), x2(n=6)), "controlnet_cond")

# ---- SPADE family
SU = dict(spatial_dims=2, in_channels=1, out_channels=1, label_nc=3, num_channels=(8, 16),
          attention_levels=(False, False), num_res_blocks=1, norm_num_groups=8, spade_intermediate_channels=4)
bad("spade_unet-label_nc=0", lambda: SPADEDiffusionModelUNet(**{**SU, "label_nc": 0}), "label_nc")
bad("spade_unet-spade_intermediate_channels=0", lambda: SPADEDiffusionModelUNet(**{**SU, "spade_intermediate_channels": 0}),
    "spade_intermediate_channels")
SUN = SPADEDiffusionModelUNet(**SU)
bad("spade_unet.forward-seg-channels", lambda: SUN(x2(), t2(), x2(c=2)), "seg", "label_nc",
    errors=(RuntimeError,))  # GM/MONAI: torch's RuntimeError; medgen's clear error is one too
SA = dict(spatial_dims=2, label_nc=3, num_channels=(8, 16), attention_levels=(False, False), num_res_blocks=1,
          norm_num_groups=8, latent_channels=2, spade_intermediate_channels=4)
bad("spade_aekl-label_nc=-1", lambda: SPADEAutoencoderKL(**{**SA, "label_nc": -1}), "label_nc")
SAE = SPADEAutoencoderKL(**SA)
bad("spade_aekl.decode-seg-channels", lambda: SAE.decode(torch.randn(2, 2, 4, 4), x2(c=5)), "seg", "label_nc",
    errors=(RuntimeError,))
bad("spade_aekl.decode-latent", lambda: SAE.decode(torch.randn(2, 3, 4, 4), x2(c=3)), "z", errors=(RuntimeError,))
SN = dict(spatial_dims=2, in_channels=1, out_channels=1, label_nc=3, input_shape=(8, 8), num_channels=(4, 8), z_dim=4)
def spadenet(**kw): return SPADENet(**{**SN, **kw})
bad("spadenet-input_shape-not-divisible", lambda: spadenet(input_shape=(10, 8)), "input_shape")
bad("spadenet-input_shape-int", lambda: spadenet(input_shape=8), "input_shape")
bad("spadenet-input_shape-length", lambda: spadenet(input_shape=(8, 8, 8)), "input_shape")
bad("spadenet-num_channels-int", lambda: spadenet(num_channels=8), "num_channels")
bad("spadenet-num_channels-None", lambda: spadenet(num_channels=None), "num_channels")
bad("spadenet-z_dim-missing", lambda: spadenet(z_dim=None), "z_dim")
bad("spadenet-z_dim=0", lambda: spadenet(z_dim=0), "z_dim")
bad("spadenet-upsampling_mode", lambda: spadenet(upsampling_mode="cubic"), "upsampling_mode")
for n in ("label_nc", "in_channels", "out_channels", "kernel_size", "spade_intermediate_channels"):
    bad(f"spadenet-{n}=0", lambda n=n: spadenet(**{n: 0}), n)
for e in (ValueError,):  # SPADENet's arguments: ValueError, never a TypeError from inside
    bad("spadenet-spatial_dims=1", lambda: spadenet(spatial_dims=1, input_shape=(8,)), "spatial_dims", errors=(e,))

# ---- transformer and attention blocks
T = dict(num_tokens=7, max_seq_len=5, attn_layers_dim=8, attn_layers_depth=1, attn_layers_heads=2)
def gpt(**kw): return DecoderOnlyTransformer(**{**T, **kw})
for n, v in (("num_tokens", 0), ("max_seq_len", 0), ("attn_layers_depth", 0), ("attn_layers_heads", 0),
             ("attn_layers_heads", 3), ("attn_layers_dim", -8), ("embedding_dropout_rate", 1.5)):
    bad(f"transformer-{n}={v}", lambda n=n, v=v: gpt(**{n: v}), n)
GPT, GPTX = gpt(), gpt(with_cross_attention=True)
bad("transformer.forward-too-long", lambda: GPT(torch.zeros(1, 6).long()), "max_seq_len")
bad("transformer.forward-token-range", lambda: GPT(torch.full((1, 5), 7)), "num_tokens")
bad("transformer.forward-float-tokens", lambda: GPT(torch.zeros(1, 5)), "x")
bad("transformer.forward-context-width", lambda: GPTX(torch.zeros(1, 5).long(), context=torch.randn(1, 2, 5)), "context")
for n, v in (("hidden_size", 0), ("num_heads", 0), ("num_heads", 3), ("dropout_rate", 2.0)):
    bad(f"sablock-{n}={v}", lambda n=n, v=v: SABlock(**{**dict(hidden_size=8, num_heads=2), n: v}), n)
bad("sablock-causal-no-length", lambda: SABlock(8, 2, causal=True), "sequence_length")
for n, v in (("mlp_dim", 0), ("dropout_rate", -0.5), ("num_heads", 5)):
    bad(f"transformerblock-{n}={v}", lambda n=n, v=v: TransformerBlock(**{**dict(hidden_size=8, mlp_dim=16, num_heads=2),
                                                                         n: v}), n)
bad("sablock.forward-width", lambda: SABlock(8, 2)(torch.randn(1, 3, 6)), "x")

# ---- SpatialRescaler (GM's checks)
for n, v in (("n_stages", -1), ("method", "cubic"), ("in_channels", 0), ("out_channels", 0), ("spatial_dims", 4)):
    bad(f"rescaler-{n}={v!r}", lambda n=n, v=v: SpatialRescaler(**{"multiplier": 0.5, n: v}), n)
bad("rescaler-size-and-multiplier", lambda: SpatialRescaler(size=4, multiplier=0.5), "size", "multiplier")
bad("rescaler-size-n_stages", lambda: SpatialRescaler(size=4, n_stages=2), "size", "n_stages")
bad("rescaler.forward-channels", lambda: SpatialRescaler(multiplier=0.5, in_channels=2)(x2(c=3)), "x")

# ---- schedulers
for cls in (DDPMScheduler, DDIMScheduler, PNDMScheduler, RFlowScheduler):
    bad(f"{cls.__name__}-num_train_timesteps=0", lambda cls=cls: cls(num_train_timesteps=0), "num_train_timesteps")
    bad(f"{cls.__name__}-set_timesteps=0", lambda cls=cls: cls(100).set_timesteps(0), "num_inference_steps")
for cls in (DDPMScheduler, DDIMScheduler, PNDMScheduler):
    bad(f"{cls.__name__}-schedule", lambda cls=cls: cls(100, schedule="cosine_wrong"), "schedule")
    bad(f"{cls.__name__}-set_timesteps>T", lambda cls=cls: cls(100).set_timesteps(101), "num_inference_steps")
bad("DDPMScheduler-decreasing-betas", lambda: DDPMScheduler(100, beta_start=0.02, beta_end=0.0001), "beta")
bad("DDPMScheduler-variance_type", lambda: DDPMScheduler(100, variance_type="small"), "variance_type")
bad("DDPMScheduler-prediction_type", lambda: DDPMScheduler(100, prediction_type="noise"), "prediction_type")
bad("PNDMScheduler-prediction_type", lambda: PNDMScheduler(100, prediction_type="sample"), "prediction_type")
bad("DDIMScheduler-steps_offset", lambda: DDIMScheduler(100, steps_offset=-1), "steps_offset")
Z = torch.zeros(1, 1, 2, 2)
for t in (-1, 100, 2.5):
    bad(f"DDPMScheduler.step-timestep={t}", lambda t=t: DDPMScheduler(100).step(Z, t, Z), "timestep")
    bad(f"DDIMScheduler.step-timestep={t}", lambda t=t: DDIMScheduler(100).step(Z, t, Z), "timestep")
bad("DDIMScheduler.step-eta", lambda: DDIMScheduler(100).step(Z, 5, Z, eta=-1.0), "eta")
bad("DDPMScheduler.step-shape", lambda: DDPMScheduler(100).step(torch.zeros(1, 2, 2, 2), 5, Z), "model_output")

# ---- inferers
bad("inferer-mode", lambda: DiffusionInferer(DDPMScheduler(10)).sample(torch.zeros(1, 1, 8, 8), NET, mode="add",
                                                                      verbose=False), "mode",
    errors=(NotImplementedError,))  # GM's type
bad("inferer-noise-shape", lambda: DiffusionInferer(DDPMScheduler(10))(x2(), NET, x2(n=4), t2()), "noise")
bad("inferer-cfg-unconditioned", lambda: DiffusionInferer(DDPMScheduler(10)).sample(torch.zeros(1, 1, 8, 8), NET, cfg=2.0,
                                                                                    verbose=False), "cfg")
bad("ldm-scale_factor=0", lambda: LatentDiffusionInferer(DDPMScheduler(10), scale_factor=0.0), "scale_factor")
bad("ldm-ldm_latent_shape", lambda: LatentDiffusionInferer(DDPMScheduler(10), ldm_latent_shape=[8, 8],
                                                           autoencoder_latent_shape=[8, 8, 8]), "latent_shape")

# ---- losses
for n, v in (("spatial_dims", 1), ("network_type", "resnet18"), ("fake_3d_ratio", 0.0)):
    bad(f"perceptual-{n}={v!r}", lambda n=n, v=v: PerceptualLoss(**{**dict(spatial_dims=2, network_type="squeeze",
                                                                         pretrained=False), n: v}), n,
        errors=(ValueError, TypeError, NotImplementedError))
for n, v in (("reduction", "avg"), ("fft_norm", "unit"), ("spatial_dims", 0)):
    bad(f"jukebox-{n}={v!r}", lambda n=n, v=v: JukeboxLoss(**{**dict(spatial_dims=2), n: v}), n)
bad("jukebox.forward-shapes", lambda: JukeboxLoss(2)(x2(), x2(n=4)), "input", "target")

# ---- hub
bad("save_pretrained-not-a-module", lambda: medgen.save_pretrained(object(), "/tmp/x"), "model")


def _corrupt_dir(tmp_path):
    medgen.save_pretrained(PatchDiscriminator(2, 4, 1, num_layers_d=1), tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    return tmp_path


def _config_without_class(tmp_path):
    medgen.save_pretrained(PatchDiscriminator(2, 4, 1, num_layers_d=1), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["class"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return tmp_path


HUB_CASES = [("from_pretrained-corrupt-weights", _corrupt_dir, "model.safetensors"),
             ("from_pretrained-config-without-class", _config_without_class, "class")]


@pytest.mark.parametrize("fn,names,errors", CASES)
def test_bad_input_is_refused_with_its_name(fn, names, errors, one_thread):
    with pytest.raises(errors) as info:
        fn()
    msg = str(info.value)
    for name in names:
        assert re.search(re.escape(name), msg), f"{type(info.value).__name__}: {msg!r} does not name {name!r}"


@pytest.mark.parametrize("ident,make,name", HUB_CASES, ids=[c[0] for c in HUB_CASES])
def test_bad_pretrained_directory_is_refused_with_its_name(ident, make, name, tmp_path):
    d = make(tmp_path)
    with pytest.raises((ValueError, OSError)) as info:
        medgen.from_pretrained(d)
    assert name in str(info.value), str(info.value)


def test_at_least_100_bad_inputs():
    assert len(CASES) + len(HUB_CASES) >= 100
