"""Autoregressive sampling speed: medgen's KV-cached sampling vs its uncached loop vs MONAI core's inferer.

The task: `VQVAETransformerInferer.sample` of a batch of token sequences of length L (a latent grid of L tokens) with
the same DecoderOnlyTransformer weights in all three (MONAI core's model for MONAI core's inferer, medgen's with the
weights loaded for medgen's). The VQ-VAE is a stub whose `decode_samples` returns the tokens, so only the transformer
is timed. Time: median of `repeats` runs after a warm-up, the implementations alternating so that load on the machine
hits all alike; reported as generated tokens per second (batch * L / time) and speedups over MONAI core. The cached and
uncached medgen runs and MONAI core's draw the same tokens (greedy decoding; checked).

    python bench/bench_transformer.py --device cpu --quick     # -> bench/results/transformer_cpu.json
    python bench/bench_transformer.py --device cuda            # -> bench/results/transformer_cuda.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


class _StubVQVAE:
    "What the inferers need from a VQ-VAE: num_embeddings and decode_samples (here: the tokens as they are)."
    def __init__(self, num_embeddings: int): self.num_embeddings = num_embeddings
    def decode_samples(self, tokens: torch.Tensor) -> torch.Tensor: return tokens


class _RasterOrdering:
    def __init__(self, n: int): self.n = n
    def get_sequence_ordering(self): return torch.arange(self.n)
    def get_revert_sequence_ordering(self): return torch.arange(self.n)


def models(L: int, quick: bool, device: str, K: int = 256):
    "MONAI core's and medgen's DecoderOnlyTransformer with the same seeded weights, BOS = K never the argmax."
    from monai.networks.nets import DecoderOnlyTransformer as CoreTransformer
    from medgen.transformer import DecoderOnlyTransformer
    dim, depth, heads = (64, 4, 4) if quick else (256, 8, 8)
    torch.manual_seed(0)
    core = CoreTransformer(K + 1, L, dim, depth, heads)
    with torch.no_grad(): core.to_logits.bias[K] = -30.0
    ours = DecoderOnlyTransformer(K + 1, L, dim, depth, heads)
    ours.load_state_dict(core.state_dict())
    return core.eval().to(device), ours.eval().to(device), dict(attn_layers_dim=dim, attn_layers_depth=depth,
                                                                attn_layers_heads=heads, num_tokens=K + 1)


def sync(device: str):
    if device.startswith("cuda"): torch.cuda.synchronize()


def run(L: int, batch: int, quick: bool, device: str, repeats: int) -> dict:
    from monai.inferers import VQVAETransformerInferer as CoreInferer
    from medgen.transformer import VQVAETransformerInferer
    core, ours, cfg = models(L, quick, device)
    K = cfg["num_tokens"] - 1
    vq, order, side = _StubVQVAE(K), _RasterOrdering(L), (L,)
    start = torch.full((batch, 1), K, device=device)
    impls = {
        "monai": lambda: CoreInferer().sample(side, start, vq, core, order, top_k=1, verbose=False),
        "medgen_uncached": lambda: VQVAETransformerInferer().sample(side, start, vq, ours, order, top_k=1,
                                                                    verbose=False, use_cache=False),
        "medgen_cached": lambda: VQVAETransformerInferer().sample(side, start, vq, ours, order, top_k=1,
                                                                  verbose=False, use_cache=True)}
    outs, times = {}, {k: [] for k in impls}
    for name, f in impls.items(): outs[name] = f()  # warm-up, and the tokens to compare
    same = all(torch.equal(outs["monai"], o) for o in outs.values())
    for _ in range(repeats):
        for name, f in impls.items():
            sync(device); t0 = time.perf_counter(); f(); sync(device)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"L": L, "batch": batch, "model": cfg, "same_tokens": same,
            "seconds": med, "tokens_per_s": {k: batch * L / v for k, v in med.items()},
            "speedup_vs_monai": {k: med["monai"] / v for k, v in med.items()},
            "cached_vs_uncached": med["medgen_uncached"] / med["medgen_cached"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="small model, short sequences (< 2 min on CPU)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    lengths = (64, 128, 256) if a.quick else (256, 1024, 2048)
    repeats = a.repeats or (2 if a.quick else 3)
    batch = 4 if a.quick else 8
    t0 = time.time()
    rows = []
    for L in lengths:
        rows.append(run(L, batch, a.quick, a.device, repeats))
        r = rows[-1]
        print(f"L={L}: tokens/s " + ", ".join(f"{k} {v:.0f}" for k, v in r["tokens_per_s"].items())
              + f"; cached/uncached {r['cached_vs_uncached']:.1f}x; same tokens {r['same_tokens']}", flush=True)
    result = {"benchmark": "transformer_sampling", "device": a.device, "quick": a.quick, "repeats": repeats,
              "torch": torch.__version__, "threads": torch.get_num_threads(), "platform": platform.platform(),
              "wall_seconds": time.time() - t0, "results": rows}
    out = Path(a.out) if a.out else RESULTS / f"transformer_{a.device.split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"-> {out} ({result['wall_seconds']:.0f} s)")
    if not all(r["same_tokens"] for r in rows): raise SystemExit("the implementations drew different tokens")


if __name__ == "__main__":
    main()
