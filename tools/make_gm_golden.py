"""Golden outputs of MONAI Generative Models 0.2.3's own networks, for tests/test_gm_golden.py.

Run with GM installed (not a medgen dependency), in a side environment:

    python3 -m venv /work/gmenv && /work/gmenv/bin/pip install torch==2.13.0
    /work/gmenv/bin/pip install monai==1.6.1 monai-generative==0.2.3 einops safetensors
    /work/gmenv/bin/python tools/make_gm_golden.py            # writes tests/golden/gm/*.safetensors

Each config builds one GM network with tiny sizes, draws every parameter (attention's unused `proj_attn` included)
and BatchNorm statistics from a seeded generator, rounded to float16 so the file stores them exactly in half the
bytes, runs GM's forward (or encode/decode) in float32 on seeded inputs, and saves one safetensors file:
`state` (the float entries of the state dict, in order, as one float16 vector; their GM key names and shapes in
the metadata), `state_int/<key>` (integer entries), `input/<name>`, `output/<call>/<i>` (float32, the flattened outputs),
and in the metadata the class, its constructor arguments and the calls (JSON)."""
from __future__ import annotations

import copy
import importlib
import json
import math
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parents[1] / "tests" / "golden" / "gm"

U = dict(in_channels=1, out_channels=1, norm_num_groups=2)         # UNet basics
AE = dict(in_channels=1, out_channels=1, latent_channels=2, norm_num_groups=2)


def image(*shape):  # input name -> ("randn", shape)
    return ("randn", list(shape))


def ints(high, *shape):
    return ("randint", [high, *shape])


def seg(label_nc, *shape):  # a one-hot label map (B, label_nc, *spatial)
    return ("onehot", [label_nc, *shape])


# (name, GM class, constructor arguments, inputs {name: spec}, calls [(method, [input names], {kwarg: input name})])
CONFIGS = [
    # ---- DiffusionModelUNet: self-attention (GM's AttentionBlock, unused proj_attn), cross-attention, classes, 3D
    ("unet2d_attn", "nets.DiffusionModelUNet",
     dict(spatial_dims=2, **U, num_channels=[2, 4], attention_levels=[False, True], num_res_blocks=1,
          num_head_channels=2),
     dict(x=image(2, 1, 8, 8), t=ints(1000, 2)), [("forward", ["x", "t"], {})]),
    ("unet2d_attn_all_levels", "nets.DiffusionModelUNet",
     dict(spatial_dims=2, **U, num_channels=[2, 4, 4], attention_levels=[True, False, True], num_res_blocks=[1, 2, 1],
          num_head_channels=[2, 2, 4], resblock_updown=True, norm_eps=1e-5),
     dict(x=image(1, 1, 8, 8), t=ints(1000, 1)), [("forward", ["x", "t"], {})]),
    ("unet2d_cross_class", "nets.DiffusionModelUNet",
     dict(spatial_dims=2, **U, num_channels=[2, 4], attention_levels=[False, True], num_res_blocks=1,
          num_head_channels=2, with_conditioning=True, cross_attention_dim=6, num_class_embeds=3,
          transformer_num_layers=2, upcast_attention=True),
     dict(x=image(2, 1, 8, 8), t=ints(1000, 2), context=image(2, 3, 6), labels=ints(3, 2)),
     [("forward", ["x", "t"], {"context": "context", "class_labels": "labels"})]),
    ("unet2d_no_attn", "nets.DiffusionModelUNet",
     dict(spatial_dims=2, **U, num_channels=[2, 4], attention_levels=[False, False], num_res_blocks=1,
          num_head_channels=2),
     dict(x=image(2, 1, 8, 8), t=ints(1000, 2)), [("forward", ["x", "t"], {})]),
    ("unet3d_attn", "nets.DiffusionModelUNet",
     dict(spatial_dims=3, **U, num_channels=[2, 4], attention_levels=[False, True], num_res_blocks=1,
          num_head_channels=2),
     dict(x=image(1, 1, 4, 4, 4), t=ints(1000, 1)), [("forward", ["x", "t"], {})]),
    ("unet3d_cross", "nets.DiffusionModelUNet",
     dict(spatial_dims=3, **U, num_channels=[2, 4], attention_levels=[True, True], num_res_blocks=1,
          num_head_channels=2, with_conditioning=True, cross_attention_dim=5),
     dict(x=image(1, 1, 4, 4, 4), t=ints(1000, 1), context=image(1, 2, 5)),
     [("forward", ["x", "t"], {"context": "context"})]),
    # (GM's DiffusionModelEncoder is left out: its head is a fixed Linear(4096, 512), 4 MB in float16)
    # ---- AutoencoderKL: attention levels + non-local attention (proj_attn), none, 3D, transposed upsampling
    ("aekl2d_attn", "nets.AutoencoderKL",
     dict(spatial_dims=2, **AE, num_channels=[2, 4], attention_levels=[False, True], num_res_blocks=1),
     dict(x=image(2, 1, 8, 8), z=image(2, 2, 4, 4)),
     [("encode", ["x"], {}), ("decode", ["z"], {}), ("reconstruct", ["x"], {})]),
    ("aekl2d_no_attn", "nets.AutoencoderKL",
     dict(spatial_dims=2, **AE, num_channels=[2, 4], attention_levels=[False, False], num_res_blocks=1,
          with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False, use_convtranspose=True),
     dict(x=image(2, 1, 8, 8), z=image(2, 2, 4, 4)), [("encode", ["x"], {}), ("decode", ["z"], {})]),
    ("aekl3d_attn", "nets.AutoencoderKL",
     dict(spatial_dims=3, **AE, num_channels=[2, 4], attention_levels=[True, False], num_res_blocks=[1, 2],
          norm_eps=1e-5),
     dict(x=image(1, 1, 4, 4, 4), z=image(1, 2, 2, 2, 2)), [("encode", ["x"], {}), ("decode", ["z"], {})]),
    # ---- ControlNet
    ("controlnet2d_attn", "nets.ControlNet",
     dict(spatial_dims=2, in_channels=1, norm_num_groups=2, num_channels=[2, 4], attention_levels=[False, True],
          num_res_blocks=1, num_head_channels=2, conditioning_embedding_num_channels=[2, 4]),
     dict(x=image(2, 1, 8, 8), t=ints(1000, 2), cond=image(2, 1, 16, 16)),
     [("forward", ["x", "t", "cond"], {})]),
    ("controlnet2d_cross", "nets.ControlNet",
     dict(spatial_dims=2, in_channels=1, norm_num_groups=2, num_channels=[2, 4], attention_levels=[True, True],
          num_res_blocks=1, num_head_channels=2, with_conditioning=True, cross_attention_dim=6, num_class_embeds=2,
          conditioning_embedding_in_channels=2, conditioning_embedding_num_channels=[2]),
     dict(x=image(2, 1, 8, 8), t=ints(1000, 2), cond=image(2, 2, 8, 8), context=image(2, 3, 6), labels=ints(2, 2)),
     [("forward", ["x", "t", "cond"], {"context": "context", "class_labels": "labels"})]),
    ("controlnet3d_attn", "nets.ControlNet",
     dict(spatial_dims=3, in_channels=1, norm_num_groups=2, num_channels=[2, 4], attention_levels=[False, True],
          num_res_blocks=1, num_head_channels=2, conditioning_embedding_num_channels=[2]),
     dict(x=image(1, 1, 4, 4, 4), t=ints(1000, 1), cond=image(1, 1, 4, 4, 4)),
     [("forward", ["x", "t", "cond"], {})]),
    # ---- SPADE family (SPADE UNet's group norms use norm_eps; SPADE AEKL's use torch's 1e-5)
    ("spade_unet2d_attn", "nets.SPADEDiffusionModelUNet",
     dict(spatial_dims=2, **U, label_nc=3, num_channels=[2, 4], attention_levels=[False, True], num_res_blocks=1,
          num_head_channels=2, spade_intermediate_channels=2, norm_eps=1e-3),
     dict(x=image(2, 1, 8, 8), t=ints(1000, 2), seg=seg(3, 2, 8, 8)), [("forward", ["x", "t", "seg"], {})]),
    ("spade_unet3d_cross", "nets.SPADEDiffusionModelUNet",
     dict(spatial_dims=3, **U, label_nc=2, num_channels=[2, 4], attention_levels=[True, True], num_res_blocks=1,
          num_head_channels=2, with_conditioning=True, cross_attention_dim=5, spade_intermediate_channels=2),
     dict(x=image(1, 1, 4, 4, 4), t=ints(1000, 1), seg=seg(2, 1, 4, 4, 4), context=image(1, 2, 5)),
     [("forward", ["x", "t", "seg"], {"context": "context"})]),
    ("spade_aekl2d_attn", "nets.SPADEAutoencoderKL",
     dict(spatial_dims=2, label_nc=3, **AE, num_channels=[2, 4], attention_levels=[False, True], num_res_blocks=1,
          spade_intermediate_channels=2, norm_eps=1e-3),
     dict(x=image(2, 1, 8, 8), z=image(2, 2, 4, 4), seg=seg(3, 2, 8, 8)),
     [("encode", ["x"], {}), ("decode", ["z", "seg"], {}), ("reconstruct", ["x", "seg"], {})]),
    ("spade_aekl3d", "nets.SPADEAutoencoderKL",
     dict(spatial_dims=3, label_nc=2, **AE, num_channels=[2, 4], attention_levels=[False, False], num_res_blocks=1,
          spade_intermediate_channels=2),
     dict(z=image(1, 2, 2, 2, 2), seg=seg(2, 1, 4, 4, 4)), [("decode", ["z", "seg"], {})]),
    ("spadenet2d_vae", "nets.SPADENet",
     dict(spatial_dims=2, in_channels=1, out_channels=1, label_nc=3, input_shape=[8, 8], num_channels=[4, 8],
          z_dim=6, spade_intermediate_channels=4),
     dict(x=image(2, 1, 8, 8), z=image(2, 6), seg=seg(3, 2, 8, 8)),
     [("encoder", ["x"], {}), ("decode", ["seg", "z"], {})]),
    # (is_vae=False is left out: GM's GAN path applies Linear(label_nc, ...) to the label map's last axis, and fails)
    # ---- VQVAE, discriminators, transformer, blocks
    ("vqvae2d", "nets.VQVAE",
     dict(spatial_dims=2, in_channels=1, out_channels=1, num_channels=[4, 8], num_res_channels=[4, 8],
          num_res_layers=1, downsample_parameters=[[2, 4, 1, 1]] * 2, upsample_parameters=[[2, 4, 1, 1, 0]] * 2,
          num_embeddings=5, embedding_dim=3),
     dict(x=image(2, 1, 8, 8)), [("forward", ["x"], {}), ("index_quantize", ["x"], {})]),
    ("vqvae3d", "nets.VQVAE",
     dict(spatial_dims=3, in_channels=1, out_channels=1, num_channels=[4], num_res_channels=[4], num_res_layers=1,
          downsample_parameters=[[2, 4, 1, 1]], upsample_parameters=[[2, 4, 1, 1, 0]], num_embeddings=5,
          embedding_dim=3),
     dict(x=image(1, 1, 4, 4, 4)), [("forward", ["x"], {})]),
    ("patchdisc2d", "nets.PatchDiscriminator",
     dict(spatial_dims=2, num_channels=4, in_channels=1, num_layers_d=2),
     dict(x=image(2, 1, 16, 16)), [("forward", ["x"], {})]),
    ("patchdisc3d", "nets.PatchDiscriminator",
     dict(spatial_dims=3, num_channels=4, in_channels=2, out_channels=2, num_layers_d=1, norm="INSTANCE", bias=True),
     dict(x=image(1, 2, 8, 8, 8)), [("forward", ["x"], {})]),
    ("multiscale_disc2d", "nets.MultiScalePatchDiscriminator",
     dict(num_d=2, num_layers_d=1, spatial_dims=2, num_channels=4, in_channels=1, minimum_size_im=16),
     dict(x=image(2, 1, 16, 16)), [("forward", ["x"], {})]),
    ("transformer", "nets.DecoderOnlyTransformer",
     dict(num_tokens=7, max_seq_len=6, attn_layers_dim=8, attn_layers_depth=2, attn_layers_heads=2),
     dict(tokens=ints(7, 2, 6)), [("forward", ["tokens"], {})]),
    ("transformer_cross", "nets.DecoderOnlyTransformer",
     dict(num_tokens=5, max_seq_len=4, attn_layers_dim=8, attn_layers_depth=1, attn_layers_heads=4,
          with_cross_attention=True),
     dict(tokens=ints(5, 2, 4), context=image(2, 3, 8)), [("forward", ["tokens"], {"context": "context"})]),
    ("spatial_rescaler2d", "blocks.SpatialRescaler",
     dict(spatial_dims=2, n_stages=2, method="bilinear", multiplier=0.5, in_channels=2, out_channels=3, bias=True),
     dict(x=image(2, 2, 8, 8)), [("forward", ["x"], {})]),
    ("spatial_rescaler3d", "blocks.SpatialRescaler",
     dict(spatial_dims=3, n_stages=1, method="trilinear", size=[3, 5, 4], in_channels=1),
     dict(x=image(1, 1, 4, 4, 4)), [("forward", ["x"], {})]),
]


def make_input(spec, g: torch.Generator) -> torch.Tensor:
    kind, args = spec
    if kind == "randn": return torch.randn(*args, generator=g).half().float()
    if kind == "randint": return torch.randint(0, args[0], tuple(args[1:]), generator=g)
    labels = torch.randint(0, args[0], (args[1], *args[2:]), generator=g)
    return torch.nn.functional.one_hot(labels, args[0]).movedim(-1, 1).float()


@torch.no_grad()
def randomise(net: torch.nn.Module, g: torch.Generator) -> None:
    "Every parameter ~ N(0, 1/fan_in) (vectors N(0, 0.3^2), norm scales 1 + N(0, 0.3^2)), BatchNorm statistics too."
    for name, p in net.named_parameters():
        if p.ndim >= 2: std = 1 / math.sqrt(p[0].numel())
        else: std = 0.3
        if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")): std *= 0.1  # outputs O(1), not O(20)
        v = torch.randn(p.shape, generator=g) * std
        if p.ndim == 1 and name.endswith("weight") and "norm" in name.lower(): v = v + 1
        p.copy_(v.half().float())
    for name, b in net.named_buffers():
        if name.endswith("running_mean"): b.copy_((torch.randn(b.shape, generator=g) * 0.1).half().float())
        elif name.endswith("running_var"): b.copy_((torch.rand(b.shape, generator=g) + 0.5).half().float())


def flatten(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor): return [out]
    return [t for o in out for t in flatten(o)]


def make(name: str, cls_path: str, kwargs: dict, inputs: dict, calls: list, seed: int) -> dict:
    mod, cls_name = cls_path.rsplit(".", 1)
    cls = getattr(importlib.import_module(f"generative.networks.{mod}"), cls_name)
    torch.manual_seed(seed)
    net = cls(**copy.deepcopy(kwargs)).eval()  # GM's SPADENet reverses the num_channels list it is given
    g = torch.Generator().manual_seed(seed)
    randomise(net, g)
    xs = {k: make_input(v, g) for k, v in inputs.items()}
    state = net.state_dict()  # float entries packed into one float16 vector (a header entry per key would
    floats = [k for k, v in state.items() if v.is_floating_point()]  # weigh more than the weights)
    tensors = {"state": torch.cat([state[k].flatten() for k in floats]).half() if floats else torch.zeros(0).half()}
    tensors.update({f"state_int/{k}": v.clone() for k, v in state.items() if not v.is_floating_point()})
    tensors.update({f"input/{k}": v for k, v in xs.items()})
    with torch.no_grad():
        for i, (method, args, kw) in enumerate(calls):
            out = getattr(net, method)(*(xs[a] for a in args), **{k: xs[v] for k, v in kw.items()})
            for j, t in enumerate(flatten(out)): tensors[f"output/{i}/{j}"] = t.float().contiguous()
    meta = {"state_keys": json.dumps([[k, list(state[k].shape)] for k in floats]), "class": cls_name,
            "gm_module": f"generative.networks.{mod}", "kwargs": json.dumps(kwargs),
            "calls": json.dumps(calls), "generative": importlib.import_module("generative").__version__,
            "torch": torch.__version__}
    save_file({k: v.contiguous() for k, v in tensors.items()}, OUT / f"{name}.safetensors", metadata=meta)
    return {k: v for k, v in tensors.items() if k.startswith("output/")}


def main() -> int:
    import generative
    if generative.__version__ != "0.2.3": print(f"warning: GM {generative.__version__}, expected 0.2.3")
    OUT.mkdir(parents=True, exist_ok=True)
    total = 0
    for seed, (name, cls_path, kwargs, inputs, calls) in enumerate(CONFIGS):
        outs = make(name, cls_path, kwargs, inputs, calls, seed)
        size = (OUT / f"{name}.safetensors").stat().st_size
        total += size
        mx = max(t.abs().max().item() for t in outs.values())
        print(f"{name:24s} {len(outs):3d} outputs, max |out| {mx:8.3g}, {size / 1024:6.1f} KB")
    print(f"{len(CONFIGS)} configs, {total / 1024:.0f} KB in {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
