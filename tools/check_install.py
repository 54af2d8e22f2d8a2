"""What a new user does after `pip install .` (no extras): import every public name, run one small forward of every
network, and round-trip each through save_pretrained / from_pretrained with equal outputs.

Run by tools/test.sh in a clean virtual environment; tests/test_hub.py runs the same specs in the dev environment.
`python tools/check_install.py` exits non-zero and names what failed."""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path


def _g(seed: int = 0):
    import torch
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed: int = 0):
    import torch
    return torch.randn(*shape, generator=_g(seed))


def network_specs() -> list[tuple[str, str, dict, callable]]:
    """(id, class name in medgen, constructor arguments, inputs() -> (args, kwargs)) of every public network, built
    with GM's argument names and with MONAI core's (`channels`) where they differ."""
    import torch
    import medgen
    t2, lab = (lambda: torch.tensor([3, 7])), (lambda: torch.randint(0, 3, (2, 3, 8, 8), generator=_g(1)))
    seg2 = lambda: torch.nn.functional.one_hot(lab()[:, 0], 3).movedim(-1, 1).float()  # noqa: E731
    unet = dict(spatial_dims=2, in_channels=1, out_channels=1, num_res_blocks=1, attention_levels=(False, True),
                num_head_channels=8, norm_num_groups=8)
    aekl = dict(spatial_dims=2, in_channels=1, out_channels=1, num_res_blocks=1, attention_levels=(False, True),
                latent_channels=2, norm_num_groups=8)
    return [
        ("DiffusionModelUNet-gm", "DiffusionModelUNet", {**unet, "num_channels": (8, 16)},
         lambda: ((_randn(2, 1, 8, 8), t2()), {})),
        ("DiffusionModelUNet-monai", "DiffusionModelUNet", {**unet, "channels": (8, 16), "include_fc": True},
         lambda: ((_randn(2, 1, 8, 8), t2()), {})),
        ("DiffusionModelUNet-cond", "DiffusionModelUNet",
         {**unet, "num_channels": (8, 16), "with_conditioning": True, "cross_attention_dim": 4, "num_class_embeds": 3},
         lambda: ((_randn(2, 1, 8, 8), t2()), {"context": _randn(2, 3, 4), "class_labels": torch.tensor([0, 2])})),
        ("DiffusionModelEncoder", "DiffusionModelEncoder", {**unet, "num_channels": (8, 16), "input_shape": (8, 8)},
         lambda: ((_randn(2, 1, 8, 8), t2()), {})),
        ("ControlNet", "ControlNet", {**{k: v for k, v in unet.items() if k != "out_channels"}, "num_channels": (8, 16),
                                      "conditioning_embedding_num_channels": (8,)},
         lambda: ((_randn(2, 1, 8, 8), t2(), _randn(2, 1, 8, 8)), {})),
        ("AutoencoderKL-gm", "AutoencoderKL", {**aekl, "num_channels": (8, 16)}, lambda: ((_randn(2, 1, 8, 8),), {})),
        ("AutoencoderKL-monai", "AutoencoderKL", {**aekl, "channels": (8, 16)}, lambda: ((_randn(2, 1, 8, 8),), {})),
        ("VQVAE-gm", "VQVAE", dict(spatial_dims=2, in_channels=1, out_channels=1, num_channels=(8, 8), num_res_channels=8,
                                   num_res_layers=1, downsample_parameters=((2, 4, 1, 1),) * 2,
                                   upsample_parameters=((2, 4, 1, 1, 0),) * 2, num_embeddings=6, embedding_dim=4),
         lambda: ((_randn(2, 1, 8, 8),), {})),
        ("VQVAE-monai", "VQVAE", dict(spatial_dims=3, in_channels=1, out_channels=1, channels=(4,), num_res_channels=(4,),
                                      num_res_layers=1, downsample_parameters=((2, 4, 1, 1),),
                                      upsample_parameters=((2, 4, 1, 1, 0),), num_embeddings=6, embedding_dim=4),
         lambda: ((_randn(1, 1, 4, 4, 4),), {})),
        ("PatchDiscriminator-gm", "PatchDiscriminator", dict(spatial_dims=2, num_channels=4, in_channels=1, num_layers_d=2),
         lambda: ((_randn(2, 1, 16, 16),), {})),
        ("PatchDiscriminator-monai", "PatchDiscriminator", dict(spatial_dims=3, channels=4, in_channels=1, num_layers_d=1),
         lambda: ((_randn(1, 1, 8, 8, 8),), {})),
        ("MultiScalePatchDiscriminator", "MultiScalePatchDiscriminator",
         dict(num_d=2, num_layers_d=1, spatial_dims=2, num_channels=4, in_channels=1, minimum_size_im=16),
         lambda: ((_randn(2, 1, 16, 16),), {})),
        ("SPADEDiffusionModelUNet", "SPADEDiffusionModelUNet",
         {**unet, "num_channels": (8, 16), "label_nc": 3, "spade_intermediate_channels": 4},
         lambda: ((_randn(2, 1, 8, 8), t2(), seg2()), {})),
        ("SPADEAutoencoderKL", "SPADEAutoencoderKL",
         {**aekl, "channels": (8, 16), "label_nc": 3, "spade_intermediate_channels": 4},
         lambda: ((_randn(2, 1, 8, 8), seg2()), {})),
        ("SPADENet", "SPADENet", dict(spatial_dims=2, in_channels=1, out_channels=1, label_nc=3, input_shape=(8, 8),
                                      num_channels=(4, 8), z_dim=4, spade_intermediate_channels=4),
         lambda: ((seg2(), _randn(2, 1, 8, 8)), {})),
        ("DecoderOnlyTransformer", "DecoderOnlyTransformer",
         dict(num_tokens=7, max_seq_len=5, attn_layers_dim=8, attn_layers_depth=1, attn_layers_heads=2,
              with_cross_attention=True), lambda: ((torch.randint(0, 7, (2, 5), generator=_g(2)),), {"context": _randn(2, 3, 8)})),
        ("EMAQuantizer", "EMAQuantizer", dict(spatial_dims=2, num_embeddings=6, embedding_dim=4),
         lambda: ((_randn(2, 4, 3, 3),), {})),
        ("VectorQuantizer", "VectorQuantizer", dict(quantizer=medgen.EMAQuantizer(spatial_dims=2, num_embeddings=6,
                                                                                  embedding_dim=4)),
         lambda: ((_randn(2, 4, 3, 3),), {})),
        ("SABlock", "SABlock", dict(hidden_size=8, num_heads=2, qkv_bias=True), lambda: ((_randn(2, 5, 8),), {})),
        ("TransformerBlock", "TransformerBlock", dict(hidden_size=8, mlp_dim=16, num_heads=2, with_cross_attention=True),
         lambda: ((_randn(2, 5, 8),), {"context": _randn(2, 3, 8)})),
        ("SpatialRescaler", "SpatialRescaler", dict(spatial_dims=2, n_stages=1, method="bilinear", multiplier=0.5, in_channels=1,
                                                    out_channels=2), lambda: ((_randn(2, 1, 8, 8),), {})),
    ]


def _flat(out) -> list:
    "The tensors of a network's output (a tensor, or nested tuples/lists of them)."
    import torch
    if isinstance(out, torch.Tensor): return [out]
    return [t for o in out for t in _flat(o)]


def round_trip(cls_name: str, kwargs: dict, inputs, directory: Path) -> tuple[int, float]:
    "Build, run, save_pretrained, from_pretrained (class from the config), run again: (#outputs, max abs diff)."
    import torch
    import medgen
    cls = getattr(medgen, cls_name)
    torch.manual_seed(0)
    net = cls(**kwargs).eval()
    with torch.no_grad():  # random non-zero weights: a zero-initialised output layer would hide a lost tensor
        g = _g(5)
        for p in net.parameters(): p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    args, kw = inputs()
    torch.manual_seed(1)  # the same draws in both runs for networks that sample (VAE latents)
    with torch.no_grad(): before = _flat(net(*args, **kw))
    medgen.save_pretrained(net, directory)
    loaded = medgen.from_pretrained(directory).eval()
    if type(loaded) is not cls: raise TypeError(f"from_pretrained built {type(loaded).__name__}, expected {cls_name}")
    torch.manual_seed(1)
    with torch.no_grad(): after = _flat(loaded(*args, **kw))
    if len(before) != len(after): raise AssertionError(f"{len(before)} outputs before saving, {len(after)} after")
    diff = max((a - b).abs().max().item() for a, b in zip(before, after))
    return len(before), diff


def main() -> int:
    t0 = time.time()
    import medgen
    failed = []
    names = list(medgen.__all__)
    for name in names:
        try: getattr(medgen, name)
        except Exception as e: failed.append(f"import {name}: {type(e).__name__}: {e}")
    print(f"imported {len(names) - len(failed)}/{len(names)} names of medgen.__all__ ({time.time() - t0:.1f}s)")
    specs, ok = network_specs(), 0
    with tempfile.TemporaryDirectory() as tmp:
        for ident, cls_name, kwargs, inputs in specs:
            try:
                n, diff = round_trip(cls_name, kwargs, inputs, Path(tmp) / ident)
                if diff != 0: raise AssertionError(f"outputs differ after loading by {diff:.3g}")
                ok += 1
            except Exception as e: failed.append(f"{ident}: {type(e).__name__}: {e}")
    print(f"forward + save_pretrained/from_pretrained round trip: {ok}/{len(specs)} networks, outputs equal "
          f"({time.time() - t0:.1f}s)")
    # the book's trained models ship inside the package (package-data): each one that is installed loads
    from medgen.experiments import book_models_dir, load_book_models
    names = sorted(d.name for d in book_models_dir().iterdir() if (d / "card.json").is_file()) \
        if book_models_dir().is_dir() else []
    for name in names:
        try:
            models, card = load_book_models(name)
            if set(models) != set(card["networks"]): raise AssertionError(f"networks {sorted(models)} != card's")
        except Exception as e: failed.append(f"book model {name}: {type(e).__name__}: {e}")
    print(f"book models installed and loaded: {names}")
    for f in failed: print("FAILED", f)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
