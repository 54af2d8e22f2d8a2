"""medgen's DiffusionModelUNet against MONAI core's: same configuration, same weights, one process.

Tasks: a training step (forward, MSE loss, backward, Adam step) of a 2D 64x64 and a 3D 32^3 UNet with attention,
and 50-step DDIM sampling with the 2D UNet. Time: median of `repeats` runs after warm-up, the two implementations
alternating so that load on the machine hits both alike. Peak memory: on CUDA torch.cuda.max_memory_allocated around
one run; on CPU the growth of the resident set at its peak during one run (Linux: VmHWM reset through
/proc/self/clear_refs after a warm-up run and malloc_trim), in a fresh child process per implementation and task.

    python bench/bench_unet.py --device cpu --quick     # -> bench/results/unet_cpu.json
    python bench/bench_unet.py --device cuda            # -> bench/results/unet_cuda.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, peak_rss, sync  # noqa: E402


def configs(quick: bool) -> dict[str, dict]:
    "Task name -> UNet configuration (MONAI core names), input shape and batch size."
    c2 = (32, 64, 64) if quick else (64, 128, 128)
    c3 = (32, 64, 64) if quick else (32, 64, 128)
    unet2 = dict(spatial_dims=2, in_channels=1, out_channels=1, channels=c2, attention_levels=(False, True, True),
                 num_res_blocks=1, num_head_channels=32, norm_num_groups=32)
    unet3 = dict(spatial_dims=3, in_channels=1, out_channels=1, channels=c3, attention_levels=(False, True, True),
                 num_res_blocks=1, num_head_channels=32, norm_num_groups=32)
    return {"train_2d_64": dict(unet=unet2, shape=(1, 64, 64), batch=4 if quick else 16, task="train"),
            "train_3d_32": dict(unet=unet3, shape=(1, 32, 32, 32), batch=1 if quick else 4, task="train"),
            "ddim50_2d_64": dict(unet=unet2, shape=(1, 64, 64), batch=4 if quick else 16, task="sample", steps=50)}


def build(impl: str, unet_kw: dict, device: str, seed: int = 0) -> torch.nn.Module:
    "The UNet of `impl` ('medgen' or 'monai') with the same seeded weights (MONAI's init, loaded into medgen's)."
    from monai.networks.nets import DiffusionModelUNet as CoreUNet
    torch.manual_seed(seed)
    core = CoreUNet(**unet_kw)
    with torch.no_grad():  # non-zero everywhere, so no branch is skipped by a zero weight
        for p in core.parameters(): p.add_(torch.randn_like(p) * 0.01)
    if impl == "monai": return core.to(device)
    from medgen.unet import DiffusionModelUNet
    ours = DiffusionModelUNet(**unet_kw)
    ours.load_state_dict(core.state_dict())
    return ours.to(device)


def ddim(impl: str):
    "A DDIM scheduler: medgen's when there is one for medgen, MONAI core's otherwise (and for MONAI)."
    if impl == "medgen":
        try:
            from medgen.schedulers import DDIMScheduler
            return DDIMScheduler(num_train_timesteps=1000), "medgen.schedulers.DDIMScheduler"
        except ImportError: pass
    from monai.networks.schedulers import DDIMScheduler
    return DDIMScheduler(num_train_timesteps=1000), "monai.networks.schedulers.DDIMScheduler"


def make_task(impl: str, cfg: dict, device: str):
    "A zero-argument callable running one unit of the task (one train step, or one full DDIM sampling)."
    net = build(impl, cfg["unet"], device)
    gen = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(cfg["batch"], *cfg["shape"], generator=gen).to(device)
    if cfg["task"] == "train":
        opt = torch.optim.Adam(net.parameters(), lr=1e-5)
        t = torch.randint(0, 1000, (cfg["batch"],), generator=gen).to(device)
        noise = torch.randn(x.shape, generator=gen).to(device)
        net.train()

        def step():
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(net(x, t), noise)
            loss.backward()
            opt.step()
        return step, None
    sched, name = ddim(impl)
    sched.to(device)
    sched.set_timesteps(cfg["steps"])
    net.eval()

    @torch.no_grad()
    def sample():
        h = x.clone()
        for t in sched.timesteps:
            out = net(h, torch.full((h.shape[0],), int(t), device=device, dtype=torch.long))
            h, _ = sched.step(out, int(t), h)
        return h
    return sample, name


def time_pair(cfg: dict, device: str, repeats: int, warmup: int) -> dict:
    "Median seconds per run of both implementations, alternating runs."
    fns = {impl: make_task(impl, cfg, device) for impl in ("medgen", "monai")}
    times = {impl: [] for impl in fns}
    for i in range(warmup + repeats):
        for impl, (fn, _) in (fns.items() if i % 2 == 0 else reversed(list(fns.items()))):
            sync(device); t0 = time.perf_counter(); fn(); sync(device)
            if i >= warmup: times[impl].append(time.perf_counter() - t0)
    out = {f"{impl}_s": statistics.median(v) for impl, v in times.items()}
    out.update({f"{impl}_runs_s": [round(s, 4) for s in v] for impl, v in times.items()})
    if fns["medgen"][1]: out["scheduler"] = {impl: f[1] for impl, f in fns.items()}
    return out


def _task_fn(impl: str, cfg: dict, device: str):
    "The task callable alone (picklable entry point for the fresh memory process)."
    return make_task(impl, cfg, device)[0]


def peak_memory(impl: str, cfg: dict, device: str) -> int:
    "Peak memory (bytes) of one run of the task, above what the model, optimizer and inputs hold before it."
    if cfg["task"] == "sample": cfg = dict(cfg, steps=2)  # the peak of sampling is the peak of one step
    if device == "cuda":
        fn, _ = make_task(impl, cfg, device)
        fn(); sync(device)
        torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
        fn(); sync(device)
        return torch.cuda.max_memory_allocated() - base
    return peak_rss(_task_fn, (impl, cfg, "cpu"), threads=torch.get_num_threads())["peak_bytes"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--quick", action="store_true", help="small models and batches, few repeats (CPU in minutes)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--tasks", nargs="*", default=None, help="subset of: train_2d_64 train_3d_32 ddim50_2d_64")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available(): raise SystemExit("--device cuda: no CUDA device here")
    repeats = args.repeats or (5 if args.quick else 20)
    results = {}
    for name, cfg in configs(args.quick).items():
        if args.tasks and name not in args.tasks: continue
        reps = max(3, repeats // 2) if cfg["task"] == "sample" else repeats
        r = time_pair(cfg, args.device, reps, warmup=1 if cfg["task"] == "sample" else 2)
        r.update({f"{impl}_peak_bytes": peak_memory(impl, cfg, args.device) for impl in ("medgen", "monai")})
        r["time_ratio"] = r["medgen_s"] / r["monai_s"]
        mem = (r["medgen_peak_bytes"], r["monai_peak_bytes"])
        r["memory_ratio"] = mem[0] / max(mem[1], 1) if None not in mem else None
        r["config"] = {k: v for k, v in cfg.items() if k != "unet"} | {"unet": cfg["unet"]}
        results[name] = r
        peak = (f"peak {mem[0] / 2**20:.0f} / {mem[1] / 2**20:.0f} MiB  memory x{r['memory_ratio']:.2f}"
                if None not in mem else "peak memory: not measurable here")
        print(f"{name:14s} medgen {r['medgen_s']:.3f}s  monai {r['monai_s']:.3f}s  time x{r['time_ratio']:.2f}  {peak}",
              flush=True)
    meta = {"device": args.device, "quick": args.quick, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
            "goal": {"train_time_ratio": 0.67, "sample_time_ratio": 0.75, "memory_ratio": 1.0}}
    if args.device == "cuda": meta["gpu"] = torch.cuda.get_device_name()
    import monai
    meta["monai"] = monai.__version__
    out = args.out or RESULTS / f"unet_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    main()
