"""Mixed precision against fp32 on a chapter's model (issue 12): does bf16 autocast cost quality, and what does it save?

Chapter 13's DDPM at its smoke size (32x32 axial MNI152 T1 slices and their mirror images; UNet (16, 32, 32),
attention at the lowest level) trained by the Trainer (`train_diffusion`, as the chapter's book profile trains) with
each precision and several seeds, the same seeds for both. Recorded per run: the loss curve (mean of each block of
steps), the FID of 64 DDIM-50 samples against the training slices (EfficientNet-Lite0 features, the book's protocol)
and the wall time. bf16 costs no quality when its final loss and its FID lie within the spread of the fp32 runs, whose
seeds differ in initial weights, data order and noise (`no_worse`: within that spread or below it, i.e. better;
`paired_minus_fp32`: each seed's bf16 value minus its fp32 value).

    python bench/bench_precision.py                      # -> bench/results/precision_cpu.json (about 10 min)
    python bench/bench_precision.py --tiny --out /tmp/p.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write_json  # noqa: E402

UNET = dict(spatial_dims=2, in_channels=1, out_channels=1, num_channels=(16, 32, 32),
            attention_levels=(False, False, True), num_res_blocks=1, num_head_channels=16, norm_num_groups=8)


def training_slices(tiny: bool) -> torch.Tensor:
    "The axial MNI152 T1 slices in [-1, 1] (32x32; tiny 16x16), loaded once for all runs."
    from medgen import SliceDataset
    slices = SliceDataset(sources=("mni152_t1",), size=16 if tiny else 32, split="train")
    return torch.stack([slices[i]["image"] for i in range(len(slices))]) * 2 - 1


def train_and_measure(x: torch.Tensor, extractor, precision: str, seed: int, steps: int, n_samples: int, block: int,
                      tiny: bool) -> dict:
    "One run on slices `x`: train with `precision` from `seed`, sample and score; the loss curve in blocks of `block` steps."
    from medgen import DDIMScheduler, DDPMScheduler, DiffusionInferer, DiffusionModelUNet, TrainConfig
    from medgen.experiments import generation_metrics, train_diffusion
    data = [{"image": im} for im in torch.cat([x, x.flip(-1)])]
    torch.manual_seed(seed)
    unet = DiffusionModelUNet(**UNET)
    cfg = TrainConfig(max_steps=steps, batch_size=16, seed=seed, log_every=1, precision=precision, ema_decay=0.999,
                      warmup_steps=min(100, steps // 4), lr_schedule="cosine", min_lr_ratio=0.1, progress=False,
                      tensorboard=False)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        run = train_diffusion(unet, data, Path(d) / "train", cfg, 2e-3, DDPMScheduler(num_train_timesteps=1000))
        ema = run.ema_model("unet").eval()
        losses = [row["mse"] for row in run.history]
    train_s = time.time() - t0
    ddim = DDIMScheduler(num_train_timesteps=1000, clip_sample=False)
    ddim.set_timesteps(5 if tiny else 50)
    noise = torch.randn(n_samples, 1, *x.shape[2:], generator=torch.Generator().manual_seed(1000 + seed))
    t0 = time.time()
    with torch.no_grad():
        drawn = DiffusionInferer(ddim).sample(input_noise=noise, diffusion_model=ema, verbose=False)
    sample_s = time.time() - t0
    m = generation_metrics((drawn.clamp(-1, 1) + 1) / 2, (x + 1) / 2, extractor,
                           generator=torch.Generator().manual_seed(0), num_pairs=200)
    curve = [statistics.fmean(losses[i:i + block]) for i in range(0, len(losses), block)]
    return {"precision": precision, "seed": seed, "loss_curve": [round(v, 5) for v in curve],
            "final_loss": round(statistics.fmean(losses[-block:]), 5), "fid": round(m["fid"], 3),
            "ms_ssim_diversity": round(m["ms_ssim_diversity"], 4), "train_s": round(train_s, 2),
            "sample_s": round(sample_s, 2)}


def verdict(runs: list[dict]) -> dict:
    "Per measure: the fp32 runs' range, each other precision's values, and whether they lie within that range."
    by = {}
    for r in runs: by.setdefault(r["precision"], []).append(r)
    ref = by.get("fp32", [])
    out = {}
    for p, rs in by.items():
        if p == "fp32" or not ref: continue
        entry = {}
        fp32_by_seed = {r["seed"]: r for r in ref}
        for key in ("final_loss", "fid"):  # lower is better for both
            lo, hi = min(r[key] for r in ref), max(r[key] for r in ref)
            vals = [r[key] for r in rs]
            entry[key] = {"fp32_range": [lo, hi], p: vals, "within": all(lo <= v <= hi for v in vals),
                          "no_worse": all(v <= hi for v in vals),  # within the spread, or below it (better)
                          "paired_minus_fp32": [round(r[key] - fp32_by_seed[r["seed"]][key], 5) for r in rs
                                                if r["seed"] in fp32_by_seed],
                          "mean_fp32": round(statistics.fmean(r[key] for r in ref), 4),
                          f"mean_{p}": round(statistics.fmean(vals), 4)}
        entry["train_time_ratio"] = round(statistics.fmean(r["train_s"] for r in rs)
                                          / statistics.fmean(r["train_s"] for r in ref), 3)
        out[p] = entry
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="16x16 slices, a few steps, one seed per precision (tests)")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (tiny: 0)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per run (default 600; tiny 4)")
    ap.add_argument("--samples", type=int, default=None, help="DDIM samples for the FID (default 64; tiny 8)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    seeds = a.seeds or ([0] if a.tiny else [0, 1, 2])
    steps, n = a.steps or (4 if a.tiny else 600), a.samples or (8 if a.tiny else 64)
    block = max(1, steps // 12)
    from medgen.experiments import fid_extractor
    t_start, runs, x, extractor = time.time(), [], training_slices(a.tiny), fid_extractor(2)  # once for all runs
    for seed in seeds:  # interleaved: each seed in every precision before the next seed
        for p in a.precisions:
            r = train_and_measure(x, extractor, p, seed, steps, n, block, a.tiny)
            runs.append(r)
            print(f"{p:5s} seed {seed}: final loss {r['final_loss']:.4f}  FID {r['fid']:.1f}  "
                  f"train {r['train_s']:.0f} s", flush=True)
    res = {"benchmark": "bf16 (and fp16) autocast against fp32: chapter 13's smoke DDPM, several seeds",
           "machine": machine("cpu"),
           "settings": {"tiny": a.tiny, "steps": steps, "batch_size": 16, "samples": n, "loss_block": block,
                        "threads": a.threads, "seeds": seeds, "unet": {k: v for k, v in UNET.items()},
                        "sampler": "DDIM, 50 steps (tiny 5), EMA weights, no clipping",
                        "fid": "EfficientNet-Lite0 features, samples vs the training slices"},
           "runs": runs, "verdict": verdict(runs), "wall_s": round(time.time() - t_start, 1)}
    out = write_json(a.out or RESULTS / "precision_cpu.json", res)
    print(f"-> {out} ({res['wall_s']:.0f} s)")
    return res


if __name__ == "__main__":
    main()
