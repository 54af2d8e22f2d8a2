"""One GPU check, a few minutes, for when a GPU is lent: UNet train-step MFU in bf16, the paper's 3D LDM sample at the
MONAI bundle's configuration, and a cascaded super-resolution time. Writes bench/results/gpu_<device>.json.

1. MFU: FLOPs of one train step (forward + backward) counted by torch.utils.flop_counter.FlopCounterMode, divided by
   the measured step time (bf16 autocast) and the device's dense bf16 peak (PEAK_BF16, by device name).
2. 3D LDM sample: DiffusionModelUNet(spatial_dims=3, in/out 3, num_channels (256, 512, 768), attention (F, T, T),
   num_head_channels (0, 512, 768), num_res_blocks 2) on a 20x28x20 latent, 200 DDIM steps and 20 DPM-Solver++ steps
   (medgen.schedulers), then the bundle-size AutoencoderKL decode to 160x224x160; medgen and MONAI core
   (use_flash_attention=True) with the same weights, bf16 autocast. Random weights: time, not quality.
   The same loops again with the UNet's forward captured once as a CUDA graph and replayed (no launch overhead).
3. Cascade: medgen.super_resolution.cascaded_sample (a 64^2 base sampler, then a x4 pixel-space upscaler), if present.
4. Peers: medgen / MONAI core (flash) train-step time, the 2D 128^2 UNet and the bundle's 3D UNet, in bf16 autocast and
   in fp32 (TF32), interleaved rounds with a second medgen as the noise line; the memory a step takes.
5. Launches: device kernels, their busy time and the host time of one batch-1 forward of the bundle's 3D UNet.
The JSON is rewritten after every part, so a time limit keeps what was measured.

    python bench/gpu_check.py                 # on the GPU: -> bench/results/gpu_nvidia_h200.json (for example)
    python bench/gpu_check.py --parts peers_train_2d128_fp32 forward_launches   # some parts only
    python bench/gpu_check.py --dry-run       # tiny sizes, any device (CPU here): the script's own test
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, interleaved, machine, n_params, ratio, sync, write_json  # noqa: E402

# dense bf16 tensor-core peak, FLOP/s (vendor data sheets, without sparsity); first match on the device name wins
PEAK_BF16 = [("H200", 989e12), ("H100", 989e12), ("H800", 989e12), ("GH200", 989e12), ("B200", 2250e12),
             ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12),
             ("A10G", 125e12), ("A10", 125e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12), ("TITAN RTX", 130e12),
             ("V100", 125e12)]  # V100 / TITAN RTX: fp16 (no bf16 tensor cores)

BUNDLE_UNET = dict(spatial_dims=3, in_channels=3, out_channels=3, num_channels=(256, 512, 768),
                   attention_levels=(False, True, True), num_head_channels=(0, 512, 768), num_res_blocks=2)
BUNDLE_AE = dict(spatial_dims=3, in_channels=1, out_channels=1, latent_channels=3, num_channels=(64, 128, 128, 128),
                 num_res_blocks=2, attention_levels=(False, False, False, False), with_encoder_nonlocal_attn=False,
                 with_decoder_nonlocal_attn=False)


def peak_flops(name: str) -> float | None:
    "Dense bf16 peak of a device by its name (None when unknown, e.g. a CPU)."
    return next((p for key, p in PEAK_BF16 if key.lower() in name.lower()), None)


def _autocast(device: str, on: bool):
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16) if on else nullcontext()


def _median_time(fn, n: int, device: str, warmup: int = 1) -> list[float]:
    for _ in range(warmup): fn()
    out = []
    for _ in range(n):
        sync(device); t0 = time.perf_counter(); fn(); sync(device)
        out.append(time.perf_counter() - t0)
    return out


def _unet(impl: str, cfg: dict, device: str, seed: int = 0) -> torch.nn.Module:
    "medgen's or MONAI core's (flash) DiffusionModelUNet with the same seeded weights."
    from monai.networks.nets import DiffusionModelUNet as CoreUNet
    kw = {("channels" if k == "num_channels" else k): v for k, v in cfg.items()}
    torch.manual_seed(seed)
    core = CoreUNet(**kw, use_flash_attention=True)
    if impl == "monai_flash": return core.to(device)
    from medgen.unet import DiffusionModelUNet
    ours = DiffusionModelUNet(**cfg)
    ours.load_state_dict(core.state_dict())
    return ours.to(device)


def _train_step(impl: str, cfg: dict, shape: tuple, batch: int, device: str, bf16: bool, seed: int = 0):
    "One UNet train step (forward, MSE to the noise, backward, AdamW) of medgen's or MONAI's (flash) network."
    net = _unet(impl, cfg, device, seed).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5)
    g = torch.Generator().manual_seed(0)
    x, noise = torch.randn(batch, *shape, generator=g).to(device), torch.randn(batch, *shape, generator=g).to(device)
    t = torch.randint(0, 1000, (batch,), generator=g).to(device)

    def step():
        opt.zero_grad(set_to_none=True)
        with _autocast(device, bf16): loss = torch.nn.functional.mse_loss(net(x, t).float(), noise)
        loss.backward()
        opt.step()
    return net, step


def mfu(cfg: dict, shape: tuple, batch: int, device: str, steps: int, bf16: bool) -> dict:
    "Train-step FLOPs (FlopCounterMode), time and model FLOP utilisation of medgen's UNet."
    from torch.utils.flop_counter import FlopCounterMode
    net, step = _train_step("medgen", cfg, shape, batch, device, bf16)
    fc = FlopCounterMode(display=False)
    with fc: step()
    flops = fc.get_total_flops()
    times = _median_time(step, steps, device)
    sec = statistics.median(times)
    peak = peak_flops(torch.cuda.get_device_name() if device.startswith("cuda") else "cpu")
    return {"config": cfg, "shape": shape, "batch": batch, "bf16": bf16, "params": n_params(net), "flops_per_step": flops,
            "step_s": sec, "runs_s": times, "achieved_tflops": flops / sec / 1e12, "peak_tflops": peak and peak / 1e12,
            "mfu": flops / sec / peak if peak else None}


def peers_train(cfg: dict, shape: tuple, batch: int, device: str, rounds: int, bf16: bool, per_round: int = 3) -> dict:
    """medgen against MONAI core (use_flash_attention=True) and a second medgen (the noise line): train-step time in
    interleaved rounds (paired per-round ratios, median and quartiles), then each one's peak device memory."""
    steps = {name: _train_step("medgen" if name.startswith("medgen") else name, cfg, shape, batch, device, bf16)[1]
             for name in ("medgen", "monai_flash", "medgen_copy")}
    times = interleaved({k: (lambda f=f: [f() for _ in range(per_round)]) for k, f in steps.items()}, rounds, 1, device)
    out = {"config": cfg, "shape": shape, "batch": batch, "bf16": bf16, "steps_per_round": per_round,
           "round_s": times}
    for name, ref in (("medgen_vs_monai_flash", "monai_flash"), ("noise_medgen_vs_copy", "medgen_copy")):
        out[name] = ratio(times["medgen"], times[ref])
    out["step_s"] = {k: statistics.median(v) / per_round for k, v in times.items()}
    if device.startswith("cuda"):  # memory a step takes above the resident weights and Adam state
        for name, step in steps.items():
            torch.cuda.synchronize(); base = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
            step(); torch.cuda.synchronize()
            out[f"{name}_step_peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        out["step_memory_medgen_vs_monai_flash"] = out["medgen_step_peak_mib"] / out["monai_flash_step_peak_mib"]
    return out


def _sampler(name: str, steps: int, device: str):
    from medgen import schedulers as S
    s = S.DDIMScheduler(num_train_timesteps=1000) if name == "ddim" else S.DPMSolverMultistepScheduler(1000)
    s.set_timesteps(steps)
    return s.to(device)


def graphed(net, latent: tuple, device: str, bf16: bool):
    "`net`'s batch-1 forward at `latent` captured once as a CUDA graph: a function (x, t) -> output (float32)."
    x_in, t_in = torch.zeros(1, *latent, device=device), torch.full((1,), 500.0, device=device)
    ac = lambda: torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16, cache_enabled=False)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad(), ac():  # warm-up off the capture stream, as torch.cuda.graph asks
        for _ in range(2): net(x_in, t_in)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph), ac(): y_out = net(x_in, t_in).float()

    def forward(x, t):
        x_in.copy_(x); t_in.fill_(float(t)); graph.replay()
        return y_out
    return forward


def sample_time(net, latent: tuple, sched_name: str, steps: int, device: str, bf16: bool, repeats: int,
                forward=None) -> dict:
    """Seconds for one full sampling loop (batch 1) of `net` (or of `forward(x, t)`, e.g. a CUDA graph) with a medgen
    scheduler; `final_std`, the spread of the last timed sample, shows that the graph computes what the eager loop does (with
    random weights it says nothing about quality: DPM-Solver++'s data prediction amplifies a random network's output)."""
    sched = _sampler(sched_name, steps, device)
    x = torch.randn(1, *latent, generator=torch.Generator().manual_seed(0)).to(device)

    last = {}

    @torch.no_grad()
    def run():
        sched.set_timesteps(steps)
        h = x
        for t in sched.timesteps:
            if forward is not None: out = forward(h, t)
            else:
                with _autocast(device, bf16): out = net(h, torch.full((1,), float(t), device=device))
            h = sched.step(out.float(), t if sched_name != "ddim" else int(t), h)[0]
        last["sample"] = h  # every run starts from the same x: the last timed sample is the sample
    times = _median_time(run, repeats, device)
    return {"scheduler": sched_name, "steps": steps, "s": statistics.median(times), "runs_s": times,
            "cuda_graph": forward is not None, "final_std": last["sample"].float().std().item()}


def ldm3d(tiny: bool, device: str, bf16: bool, repeats: int) -> dict:
    "The paper's 3D LDM sample: bundle-size UNet, 200 DDIM / 20 DPM-Solver++ steps, then the decode; medgen vs MONAI."
    from torch.utils.flop_counter import FlopCounterMode
    from medgen.autoencoderkl import AutoencoderKL
    cfg = (dict(BUNDLE_UNET, num_channels=(16, 32, 32), num_head_channels=(0, 32, 32), norm_num_groups=8)
           if tiny else BUNDLE_UNET)
    latent = (3, 4, 4, 4) if tiny else (3, 20, 28, 20)
    n_ddim, n_dpm = (3, 2) if tiny else (200, 20)
    out = {"unet": cfg, "latent": latent, "bf16": bf16}
    nets = {impl: _unet(impl, cfg, device).eval() for impl in ("medgen", "monai_flash")}
    out["params"] = n_params(nets["medgen"])
    fc = FlopCounterMode(display=False)
    with fc, torch.no_grad(), _autocast(device, bf16):
        nets["medgen"](torch.zeros(1, *latent, device=device), torch.full((1,), 500.0, device=device))
    out["unet_flops_per_step"] = fc.get_total_flops()
    for impl, net in nets.items():
        out[f"{impl}_ddim{n_ddim}"] = sample_time(net, latent, "ddim", n_ddim, device, bf16, repeats)
    out[f"medgen_dpmpp{n_dpm}"] = sample_time(nets["medgen"], latent, "dpm", n_dpm, device, bf16, repeats)
    out["ddim_ratio_medgen_vs_monai"] = out[f"medgen_ddim{n_ddim}"]["s"] / out[f"monai_flash_ddim{n_ddim}"]["s"]
    if device.startswith("cuda"):  # launch overhead: the same loops with the UNet's forward replayed as a CUDA graph
        try:
            for impl, net in nets.items():
                fwd = graphed(net, latent, device, bf16)
                out[f"{impl}_ddim{n_ddim}_graph"] = sample_time(net, latent, "ddim", n_ddim, device, bf16, repeats, fwd)
                if impl == "medgen":
                    out[f"medgen_dpmpp{n_dpm}_graph"] = sample_time(net, latent, "dpm", n_dpm, device, bf16, repeats, fwd)
                del fwd
            out["ddim_graph_ratio_medgen_vs_monai"] = (out[f"medgen_ddim{n_ddim}_graph"]["s"] /
                                                       out[f"monai_flash_ddim{n_ddim}_graph"]["s"])
        except Exception:  # keep the eager numbers
            out["graph_error"] = traceback.format_exc()[-1500:]
    del nets
    ae_cfg = dict(BUNDLE_AE, num_channels=(8, 8, 8, 8), norm_num_groups=8) if tiny else BUNDLE_AE
    ae = AutoencoderKL(**ae_cfg).to(device).eval()
    z = torch.randn(1, *latent, device=device)

    @torch.no_grad()
    def dec():
        with _autocast(device, bf16): return ae.decode(z)
    out["autoencoder"], out["decode_s"] = ae_cfg, statistics.median(_median_time(dec, repeats, device))
    for key in (f"medgen_ddim{n_ddim}", f"medgen_dpmpp{n_dpm}", f"medgen_ddim{n_ddim}_graph", f"medgen_dpmpp{n_dpm}_graph"):
        if key in out: out[f"{key}_plus_decode_s"] = out[key]["s"] + out["decode_s"]
    out["goal_s"] = 1.0
    return out


def cascade(tiny: bool, device: str, bf16: bool) -> dict:
    "medgen.super_resolution.cascaded_sample: 64^2 base samples (DDIM), then a x4 pixel-space upscaler (DDIM)."
    try:
        from medgen import super_resolution as SR
    except ImportError as e:
        return {"skipped": f"medgen.super_resolution not importable: {e}"}
    from medgen.schedulers import DDPMScheduler
    from medgen.unet import DiffusionModelUNet
    ch, heads, side, steps, n = ((8, 16, 16), 8, 8, 2, 2) if tiny else ((64, 128, 256), 64, 64, 50, 8)
    g = dict(norm_num_groups=8) if tiny else {}
    base = DiffusionModelUNet(2, 1, 1, num_res_blocks=2, num_channels=ch, attention_levels=(False, True, True),
                              num_head_channels=heads, **g).to(device).eval()
    up = DiffusionModelUNet(2, 2, 1, num_res_blocks=2, num_channels=ch, attention_levels=(False, False, True),
                            num_head_channels=heads, num_class_embeds=350, **g).to(device).eval()
    augment = DDPMScheduler(num_train_timesteps=1000).to(device)
    gen = torch.Generator(device=device).manual_seed(0)

    @torch.no_grad()
    def sample_low(k):
        s = _sampler("ddim", steps, device)
        h = torch.randn(k, 1, side, side, device=device, generator=gen)
        for t in s.timesteps:
            with _autocast(device, bf16): out = base(h, torch.full((k,), int(t), device=device))
            h = s.step(out.float(), int(t), h)[0]
        return h

    def upscale_fn(lo):
        with _autocast(device, bf16):
            return SR.upscale(lo, up, _sampler("ddim", steps, device), augment, noise_level=1, scale=4, generator=gen)

    def run(): return SR.cascaded_sample(sample_low, upscale_fn, num_samples=n, batch_size=n)
    run()  # warm-up
    sync(device); t0 = time.perf_counter(); lo, hi = run(); sync(device)
    return {"base": {"channels": ch, "side": side, "steps": steps}, "upscaler": {"channels": ch, "factor": 4,
            "steps": steps, "num_class_embeds": 350}, "num_samples": n, "bf16": bf16, "s": time.perf_counter() - t0,
            "shapes": [list(lo.shape), list(hi.shape)], "finite": bool(torch.isfinite(hi).all())}


def forward_launches(cfg: dict, latent: tuple, device: str, bf16: bool, repeats: int = 20) -> dict:
    """Per batch-1 forward of medgen's and MONAI's (flash) UNet: device kernels and their busy time (torch.profiler),
    and host time to issue the forward. Host time well above busy time: the sampling loop is launch-bound."""
    from torch.profiler import ProfilerActivity, profile
    x, t = torch.randn(1, *latent, device=device), torch.full((1,), 500.0, device=device)
    out = {"config": cfg, "latent": latent, "bf16": bf16}
    for impl in ("medgen", "monai_flash"):
        net = _unet(impl, cfg, device).eval()
        with torch.no_grad(), _autocast(device, bf16):
            for _ in range(3): net(x, t)
            sync(device)
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
            with profile(activities=acts) as prof:
                net(x, t); sync(device)
            t0 = time.perf_counter()
            for _ in range(repeats): net(x, t)
            host = (time.perf_counter() - t0) / repeats
            sync(device)
            wall = (time.perf_counter() - t0) / repeats
        kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
        ops = sum(1 for e in prof.events() if e.device_type.name == "CPU" and e.name.startswith("aten::"))
        out[impl] = {"device_kernels": len(kernels), "device_busy_ms": sum(e.device_time for e in kernels) / 1e3,
                     "aten_ops": ops, "host_ms_per_forward": host * 1e3, "wall_ms_per_forward": wall * 1e3}
        del net
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", "--tiny", dest="tiny", action="store_true", help="tiny sizes on any device")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--parts", nargs="+", default=None, help="run only these parts (default: all)")
    a = ap.parse_args(argv)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    bf16, t0 = not a.fp32, time.time()
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    res = {"benchmark": "GPU check: UNet train MFU (bf16), paper's 3D LDM sample, cascaded super-resolution",
           "machine": machine(device), "settings": {"tiny": a.tiny, "bf16": bf16}, "peak_bf16_tflops":
           (peak_flops(name) or 0) / 1e12 or None, "parts": {}, "errors": {}}
    if a.tiny:
        parts = {"mfu_unet2d": lambda: mfu(dict(spatial_dims=2, in_channels=1, out_channels=1, num_channels=(8, 16, 16),
                                                attention_levels=(False, True, True), num_head_channels=8,
                                                norm_num_groups=8, num_res_blocks=1), (1, 16, 16), 2, device, 2, bf16),
                 "ldm3d_sample": lambda: ldm3d(True, device, bf16, 1), "cascade_sr": lambda: cascade(True, device, bf16),
                 "peers_train_2d": lambda: peers_train(dict(spatial_dims=2, in_channels=1, out_channels=1,
                                                            num_channels=(8, 16, 16), attention_levels=(False, True, True),
                                                            num_head_channels=8, norm_num_groups=8, num_res_blocks=1),
                                                       (1, 16, 16), 2, device, 2, bf16, 1),
                 "forward_launches": lambda: forward_launches(dict(BUNDLE_UNET, num_channels=(16, 32, 32),
                                                                   num_head_channels=(0, 32, 32), norm_num_groups=8),
                                                              (3, 4, 4, 4), device, bf16, 2)}
    else:
        unet2 = dict(spatial_dims=2, in_channels=1, out_channels=1, num_channels=(128, 256, 512),
                     attention_levels=(False, True, True), num_head_channels=64, num_res_blocks=2)
        parts = {"mfu_unet2d": lambda: mfu(unet2, (1, 128, 128), 32, device, 10, bf16),
                 "mfu_unet3d_bundle": lambda: mfu(BUNDLE_UNET, (3, 20, 28, 20), 2, device, 10, bf16),
                 "ldm3d_sample": lambda: ldm3d(False, device, bf16, 3), "cascade_sr": lambda: cascade(False, device, bf16),
                 # medgen / MONAI core (flash) train steps at equal precision: bf16 autocast, then fp32 (TF32 matmuls)
                 "peers_train_2d128_bf16": lambda: peers_train(unet2, (1, 128, 128), 32, device, 7, True),
                 "peers_train_3d_bundle_bf16": lambda: peers_train(BUNDLE_UNET, (3, 20, 28, 20), 2, device, 7, True),
                 "peers_train_2d128_fp32": lambda: peers_train(unet2, (1, 128, 128), 32, device, 5, False),
                 "peers_train_3d_bundle_fp32": lambda: peers_train(BUNDLE_UNET, (3, 20, 28, 20), 2, device, 5, False),
                 "forward_launches": lambda: forward_launches(BUNDLE_UNET, (3, 20, 28, 20), device, bf16)}
    if a.parts:
        if unknown := sorted(set(a.parts) - set(parts)):
            raise SystemExit(f"--parts: unknown {unknown}; expected some of {sorted(parts)}")
        parts = {k: parts[k] for k in a.parts}
        res["settings"]["parts"] = a.parts
    tag = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") + ("_dryrun" if a.tiny else "")
    path = a.out or RESULTS / f"gpu_{tag}.json"
    for key, fn in parts.items():
        t1 = time.time()
        try:
            res["parts"][key] = fn()
        except Exception:  # keep what the other parts measure
            res["errors"][key] = traceback.format_exc()[-2000:]
            print(f"{key}: FAILED\n{res['errors'][key]}", flush=True)
        else:
            p = res["parts"][key]
            brief = {k: (v["median"] if isinstance(v, dict) and "median" in v else v) for k, v in p.items()
                     if k in ("mfu", "step_s", "achieved_tflops", "s", "skipped", "ddim_ratio_medgen_vs_monai", "decode_s",
                              "ddim_graph_ratio_medgen_vs_monai", "medgen_vs_monai_flash", "noise_medgen_vs_copy",
                              "step_memory_medgen_vs_monai_flash", "graph_error") or k.endswith("_plus_decode_s")}
            print(f"{key} ({time.time() - t1:.0f} s): {brief}", flush=True)
        if device.startswith("cuda"): torch.cuda.empty_cache()
        write_json(path, {**res, "wall_s": time.time() - t0})  # what is measured so far survives a time limit
    if device.startswith("cuda"): res["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    res["wall_s"] = time.time() - t0
    out = write_json(path, res)
    print(f"-> {out} ({res['wall_s']:.0f} s)")
    if res["errors"]: raise SystemExit(f"parts failed: {sorted(res['errors'])}")
    return res


if __name__ == "__main__":
    main()
