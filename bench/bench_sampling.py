"""Quality-matched sampling (issue 12): FID against the number of sampling steps, per sampler, on a trained model.

The model is the book's `ddpm_brain64` (an epsilon-prediction DDPM on 64x64 MNI152 + Colin27 slices; chapter 13).
Every sampler starts from the same seeded noise; for each number of steps it draws `--num-samples` images and scores
them by FID (EfficientNet-Lite0 features, `medgen.experiments.fid_extractor`) against the model's training slices.
The reference is DDIM with 200 steps, as the paper samples, without clipping x0_hat: none of the other samplers clip,
so all of them approximate the same probability-flow ODE. DDIM with MONAI's default `clip_sample=True` is its own
row ("DDIM, clipped"): clipping x0_hat to [-1, 1] at every step moves the trajectory off that ODE. For each sampler the JSON gives the fewest steps whose
FID is within `--tolerance` (5 %) of the reference's, and the sampling time that saves. The reference is drawn a
second time from other noise (`seed + 1`): the relative FID difference of the two is the noise floor, the smallest
difference between two entries that means anything at this number of samples.

RFlow is not in the list: it samples a model trained for rectified flow (velocity along straight paths), and
ddpm_brain64 predicts noise.

    python bench/bench_sampling.py                          # -> bench/results/sampling_cpu.json (hours on 2 cores; GPU: minutes)
    python bench/bench_sampling.py --tiny --out /tmp/s.json  # seconds: a random tiny UNet, for tests
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write_json  # noqa: E402

STEPS = {"DDIM": (10, 20, 50, 100, 200), "DDIM, clipped": (10, 20, 50, 100, 200), "PNDM": (10, 20, 50, 100),
         "DPM-Solver++(2M)": (5, 10, 20, 50), "Euler": (10, 20, 50, 100)}
TINY_STEPS = {name: (2, 4) for name in STEPS}


def make_scheduler(name: str, steps: int):
    "A sampler of the DDPM's training schedule (linear betas, epsilon), set to `steps` steps."
    from medgen.schedulers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler
    cls = {"DDIM": DDIMScheduler, "DDIM, clipped": DDIMScheduler, "PNDM": PNDMScheduler,
           "DPM-Solver++(2M)": DPMSolverMultistepScheduler, "Euler": EulerDiscreteScheduler}[name]
    kw = {"PNDM": {"skip_prk_steps": True}, "DDIM": {"clip_sample": False}, "DDIM, clipped": {"clip_sample": True}}.get(name, {})
    s = cls(num_train_timesteps=1000, **kw)
    s.set_timesteps(steps)
    return s


@torch.no_grad()
def draw(unet, scheduler, noise: torch.Tensor, batch_size: int, device: str = "cpu") -> tuple[torch.Tensor, float]:
    "Samples in [0, 1] (on the CPU) from `noise` (N, 1, H, W) and the seconds they took on `device`."
    from medgen.inferers import DiffusionInferer
    scheduler = scheduler.to(device)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    t0, out = time.perf_counter(), []
    for s in range(0, len(noise), batch_size):
        x = DiffusionInferer(scheduler).sample(noise[s:s + batch_size].to(device), unet, scheduler, verbose=False)
        out.append(((x.clamp(-1, 1) + 1) / 2).float())
    sync()
    return torch.cat(out).cpu(), time.perf_counter() - t0


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-samples", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--tolerance", type=float, default=0.05, help="relative FID above the reference that counts as equal")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu", help="where to sample, e.g. cuda (features are computed on the CPU)")
    p.add_argument("--tiny", action="store_true", help="a random tiny UNet and 8 samples: seconds, for tests")
    p.add_argument("--out", type=Path, default=RESULTS / "sampling_cpu.json")
    a = p.parse_args(argv)
    if a.num_samples < 2 or a.batch_size < 1: p.error("--num-samples must be >= 2 and --batch-size >= 1")
    if a.threads: torch.set_num_threads(a.threads)
    from medgen.data import SliceDataset
    from medgen.experiments import fid_extractor, load_book_models
    from medgen.metrics import get_fid_score
    if a.tiny:
        from medgen import DiffusionModelUNet
        torch.manual_seed(a.seed)
        unet = DiffusionModelUNet(spatial_dims=2, in_channels=1, out_channels=1, num_channels=(8,), attention_levels=(False,),
                                  num_res_blocks=1, norm_num_groups=8).eval()
        model, sources, size, steps, n = "random tiny UNet", ("mni152_t1",), 32, TINY_STEPS, 8
        extractor = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten())  # 16 pooled pixels as features
        ref_steps = 4
    else:
        book = load_book_models("ddpm_brain64")
        if book is None: p.error("the book model ddpm_brain64 is not installed (train it: nbs/13_diffusion_unet.ipynb, profile book)")
        (unet,), card = book[0].values(), book[1]
        model, sources, size, steps, n = "ddpm_brain64", tuple(card["sources"]), 64, STEPS, a.num_samples
        extractor, ref_steps = fid_extractor(2), 200
    unet = unet.to(a.device)
    ds = SliceDataset(sources=sources, size=size, split="train")
    reference = torch.stack([ds[i]["image"] for i in range(len(ds))])
    feats = lambda x: torch.cat([extractor(x[s:s + 64]) for s in range(0, len(x), 64)]).double()
    with torch.no_grad(): ref_feats = feats(reference)
    noise = lambda seed: torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(seed))
    x_T = noise(a.seed)
    fid = lambda x: get_fid_score(feats(x), ref_feats).item()
    runs = {}
    for name, grid in steps.items():
        runs[name] = []
        for k in grid:
            x, sec = draw(unet, make_scheduler(name, k), x_T, a.batch_size, a.device)
            runs[name].append({"steps": k, "fid": fid(x), "seconds_per_sample": sec / n})
            print(f"{name:18} {k:4d} steps: FID {runs[name][-1]['fid']:8.2f}  {1e3 * sec / n:7.1f} ms/sample", flush=True)
    ref = next(r for r in runs["DDIM"] if r["steps"] == ref_steps)
    x2, _ = draw(unet, make_scheduler("DDIM", ref_steps), noise(a.seed + 1), a.batch_size, a.device)
    fid2 = fid(x2)
    noise_floor = abs(fid2 - ref["fid"]) / ref["fid"]
    matched = {}
    for name, rs in runs.items():
        ok = [r for r in rs if r["fid"] <= ref["fid"] * (1 + a.tolerance)]
        best = min(ok, key=lambda r: r["steps"]) if ok else None
        matched[name] = None if best is None else {
            "steps": best["steps"], "fid": best["fid"], "speedup_vs_reference": ref["seconds_per_sample"] / best["seconds_per_sample"]}
    res = {"what": "FID against sampling steps per sampler (issue 12: quality-matched sampling)", "model": model,
           "machine": machine(a.device), "device": a.device, "threads": torch.get_num_threads(), "num_samples": n, "reference_images": len(reference),
           "reference": {"sampler": "DDIM (clip_sample=False)", "steps": ref_steps, **ref, "fid_other_noise": fid2,
                         "noise_floor_rel": noise_floor},
           "tolerance_rel": a.tolerance, "runs": runs, "matched": matched,
           "rflow": "not applicable: ddpm_brain64 predicts noise; RFlow samples a rectified-flow (velocity) model"}
    write_json(a.out, res)
    for name, m in matched.items():
        print(f"{name:18} " + ("no step count reaches the reference" if m is None else
                               f"{m['steps']} steps reach FID {m['fid']:.2f} (reference {ref['fid']:.2f}): "
                               f"{m['speedup_vs_reference']:.1f}x faster than DDIM-{ref_steps}"))
    print(f"noise floor (DDIM-{ref_steps}, other noise): {100 * noise_floor:.1f} %; wrote {a.out}")
    return res


if __name__ == "__main__":
    main()
