"""medgen against its strongest peers, interleaved in one process: MONAI core 1.6.1 in its fastest documented setting
(`use_flash_attention=True`, PyTorch's fused SDPA) and diffusers (`UNet2DModel`, `AutoencoderKL`), plus a second copy
of medgen whose ratio to medgen shows the noise.

Cases (fp32): UNet train step (forward, MSE, backward, Adam) 2D 64^2 and 128^2, 3D 32^3 and 48^3; KL autoencoder 2D
64^2 train step / encode / decode; DDIM-50 sampling of 2 x 64^2. Weights: medgen and MONAI share MONAI's seeded init;
diffusers' UNet2DModel gets the same weights through a key mapping (checked: max abs diff of the outputs stored);
diffusers' AutoencoderKL has no mapping (its decoder has one more residual block per level, its quant_conv mixes mean
and log-variance), so it runs at the matched configuration with its own seeded init and its parameter count is stored.
Timing: see _common.py (round-robin, paired per-round ratios, median and quartiles), for each torch thread count.
Peak memory: growth of the resident set during one run, in a fresh spawned process per candidate and case.

With `--defaults`, the train cases also time medgen as users run it: `medgen_auto`, the `Trainer`'s default precision
("auto": bf16 autocast where the hardware computes bfloat16 natively, else fp32), and in 3D `medgen_auto_ckpt`, the
same with gradient checkpointing. MONAI has no trainer: its users' default is its network in fp32 (here with flash
attention, its fastest documented setting). The issue's goals "as users run it" (train <= 0.75x, 3D peak memory
<= 0.6x) are measured on those lines.

    python bench/bench_peers.py --budget 900          # -> bench/results/peers_cpu.json (about 20 min on 2 cores)
    python bench/bench_peers.py --defaults --cases unet_train_2d_64 unet_train_2d_128 unet_train_3d_32 \
        unet_train_3d_48 kl_train_2d_64 --out bench/results/peers_defaults_cpu.json
    python bench/bench_peers.py --tiny --out /tmp/p.json   # seconds: tiny models, one round, for tests
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, fmt_ratio, interleaved, machine, n_params, peak_rss, ratio, summary, write_json  # noqa: E402
from bench_unet import build as build_unet  # noqa: E402  (medgen/MONAI UNet with MONAI's seeded weights)

from medgen import DiffusionModelUNet  # noqa: E402
from medgen.training import _autocast, _resolve_precision  # noqa: E402  (exactly what the Trainer does per step)

PEERS = ("monai_flash", "diffusers")
# goals of issue 12 at equal precision (fp32): medgen / MONAI-best train or sample time
GOALS = {"unet_train_2d_128": 0.85, "unet_train_3d_48": 0.85, "unet_train_2d_64": 0.95, "unet_train_3d_32": 0.95,
         "kl_train_2d_64": 0.95, "kl_encode_2d_64": 0.95, "kl_decode_2d_64": 0.95, "ddim50_2d_64": 0.85}
MEMORY_GOAL_3D = 0.6  # peak memory medgen / MONAI-best in 3D (the goal is with medgen's defaults)
USER_TRAIN_GOAL = 0.75  # train time, medgen as users run it (the Trainer's default precision) / MONAI-best


def unet_cfg(spatial_dims: int, tiny: bool) -> dict:
    "The benchmark's UNet (MONAI core names): 3 levels, attention on the two lower ones, 32 channels per head."
    ch, g = ((8, 16, 16), 8) if tiny else ((32, 64, 64), 32)
    return dict(spatial_dims=spatial_dims, in_channels=1, out_channels=1, channels=ch,
                attention_levels=(False, True, True), num_res_blocks=1, num_head_channels=g, norm_num_groups=g)


def kl_cfg(tiny: bool) -> dict:
    "The benchmark's 2D KL autoencoder (MONAI core names): 3 levels, attention in the middle blocks only."
    ch, g = ((8, 16, 16), 8) if tiny else ((32, 64, 64), 32)
    return dict(spatial_dims=2, in_channels=1, out_channels=1, channels=ch, attention_levels=(False, False, False),
                num_res_blocks=1, latent_channels=3, norm_num_groups=g, with_encoder_nonlocal_attn=True,
                with_decoder_nonlocal_attn=True)


def cases(tiny: bool) -> dict[str, dict]:
    "Case name -> kind, network config, input shape, batch (tiny: small sizes that run in well under a second)."
    s = (lambda full, small: small if tiny else full)
    return {
        "unet_train_2d_64": dict(kind="unet_train", net=unet_cfg(2, tiny), shape=(1, s(64, 16), s(64, 16)), batch=s(4, 2)),
        "unet_train_2d_128": dict(kind="unet_train", net=unet_cfg(2, tiny), shape=(1, s(128, 16), s(128, 16)), batch=1),
        "unet_train_3d_32": dict(kind="unet_train", net=unet_cfg(3, tiny), shape=(1,) + (s(32, 8),) * 3, batch=1),
        "unet_train_3d_48": dict(kind="unet_train", net=unet_cfg(3, tiny), shape=(1,) + (s(48, 8),) * 3, batch=1),
        "kl_train_2d_64": dict(kind="kl_train", net=kl_cfg(tiny), shape=(1, s(64, 16), s(64, 16)), batch=s(4, 2)),
        "kl_encode_2d_64": dict(kind="kl_encode", net=kl_cfg(tiny), shape=(1, s(64, 16), s(64, 16)), batch=s(4, 2)),
        "kl_decode_2d_64": dict(kind="kl_decode", net=kl_cfg(tiny), shape=(1, s(64, 16), s(64, 16)), batch=s(4, 2)),
        "ddim50_2d_64": dict(kind="ddim", net=unet_cfg(2, tiny), shape=(1, s(64, 16), s(64, 16)), batch=2,
                             steps=s(50, 3)),
    }


def candidates(case: dict, with_diffusers: bool, defaults: bool = False) -> list[str]:
    """medgen, its copy, MONAI (flash); diffusers for 2D UNets and the KL autoencoder; for 3D UNet training also medgen
    with gradient checkpointing (`medgen_ckpt`: MONAI's and GM's UNets have none), for its memory and its time cost.
    `defaults`: train cases add `medgen_auto` (the Trainer's default precision), 3D UNets `medgen_auto_ckpt` too."""
    out = ["medgen", "medgen_copy", "monai_flash"]
    if with_diffusers and case["net"]["spatial_dims"] == 2: out.append("diffusers")
    unet3d = case["kind"] == "unet_train" and case["net"]["spatial_dims"] == 3
    if unet3d: out.append("medgen_ckpt")
    if defaults and case["kind"].endswith("train"): out += ["medgen_auto"] + (["medgen_auto_ckpt"] if unet3d else [])
    return out


def precision_of(cand: str) -> str:
    "The TrainConfig precision a candidate trains with: medgen_auto*: 'auto' (the Trainer's default), else fp32."
    return "auto" if cand.startswith("medgen_auto") else "fp32"


# --- diffusers at the same configuration -------------------------------------------------------------------------

_UNET_KEYS = [(r"^conv_in\.conv\.", "conv_in."), (r"^time_embed\.0\.", "time_embedding.linear_1."),
              (r"^time_embed\.2\.", "time_embedding.linear_2."), (r"\.(conv1|conv2)\.conv\.", r".\1."),
              (r"\.skip_connection\.conv\.", ".conv_shortcut."), (r"\.downsampler\.op\.conv\.", ".downsamplers.0.conv."),
              (r"\.upsampler\.postconv\.conv\.", ".upsamplers.0.conv."), (r"^middle_block\.resnet_1\.", "mid_block.resnets.0."),
              (r"^middle_block\.resnet_2\.", "mid_block.resnets.1."), (r"^middle_block\.attention\.", "mid_block.attentions.0."),
              (r"(attentions\.\d+)\.norm\.", r"\1.group_norm."), (r"(attentions\.\d+)\.attn\.out_proj\.", r"\1.to_out.0."),
              (r"(attentions\.\d+)\.attn\.", r"\1."), (r"^out\.0\.", "conv_norm_out."), (r"^out\.2\.conv\.", "conv_out.")]


def monai_unet_to_diffusers(state_dict: dict) -> dict:
    "A MONAI core DiffusionModelUNet (2D, no conditioning) state dict under diffusers UNet2DModel's key names."
    out = {}
    for k, v in state_dict.items():
        for pat, rep in _UNET_KEYS: k = re.sub(pat, rep, k)
        out[k] = v
    return out


def diffusers_unet(cfg: dict):
    "diffusers UNet2DModel at the configuration of the MONAI/medgen UNet `cfg` (2D, 1 attention head width)."
    from diffusers import UNet2DModel
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg["attention_levels"])
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg["attention_levels"]))
    return UNet2DModel(in_channels=cfg["in_channels"], out_channels=cfg["out_channels"],
                       layers_per_block=cfg["num_res_blocks"], block_out_channels=tuple(cfg["channels"]),
                       down_block_types=down, up_block_types=up, attention_head_dim=cfg["num_head_channels"],
                       norm_num_groups=cfg["norm_num_groups"], norm_eps=1e-6)


def diffusers_kl(cfg: dict, seed: int = 0):
    "diffusers AutoencoderKL at the configuration of the MONAI/medgen KL autoencoder `cfg` (own seeded init)."
    from diffusers import AutoencoderKL
    torch.manual_seed(seed)
    n = len(cfg["channels"])
    return AutoencoderKL(in_channels=cfg["in_channels"], out_channels=cfg["out_channels"],
                         down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                         block_out_channels=tuple(cfg["channels"]), layers_per_block=cfg["num_res_blocks"],
                         latent_channels=cfg["latent_channels"], norm_num_groups=cfg["norm_num_groups"])


def build_kl(impl: str, cfg: dict, seed: int = 0) -> torch.nn.Module:
    "medgen's or MONAI core's (flash) AutoencoderKL with MONAI's seeded weights, perturbed so no weight is zero."
    from monai.networks.nets import AutoencoderKL as CoreKL
    torch.manual_seed(seed)
    core = CoreKL(**cfg, use_flash_attention=True)
    with torch.no_grad():
        for p in core.parameters(): p.add_(torch.randn_like(p) * 0.01)
    if impl == "monai_flash": return core
    from medgen.autoencoderkl import AutoencoderKL
    ours = AutoencoderKL(**cfg)
    ours.load_state_dict(core.state_dict())
    return ours


def build_net(cand: str, case: dict) -> torch.nn.Module:
    "The network of candidate `cand` for `case` (medgen_copy: an independent second medgen model, same weights)."
    impl = "medgen" if cand.startswith("medgen") else cand
    if case["kind"].startswith("kl"):
        return diffusers_kl(case["net"]) if impl == "diffusers" else build_kl(impl, case["net"])
    flash = dict(case["net"], use_flash_attention=True)
    if impl == "diffusers":
        d = diffusers_unet(case["net"])
        d.load_state_dict(monai_unet_to_diffusers(build_unet("monai", flash, "cpu").state_dict()))
        return d
    if not cand.endswith("_ckpt"): return build_unet("medgen" if impl == "medgen" else "monai", flash, "cpu")
    ours = DiffusionModelUNet(**flash, use_checkpointing=True)
    ours.load_state_dict(build_unet("monai", flash, "cpu").state_dict())  # MONAI's seeded weights, as the others
    return ours


# --- the tasks ---------------------------------------------------------------------------------------------------

def _out(y):
    "The tensor of a network output (diffusers wraps it in an output object)."
    return y.sample if hasattr(y, "sample") else y


def _kl_parts(cand: str, net):
    "encode: x -> (mu, sigma); decode: z -> x_hat, uniform over the three libraries."
    if cand == "diffusers":
        def enc(x):
            d = net.encode(x).latent_dist
            return d.mean, d.std
        return enc, lambda z: net.decode(z).sample
    return net.encode, net.decode


def _scheduler(cand: str):
    "DDIM with 1000 training steps, linear betas 1e-4..0.02, clipped x0, alpha_T = 1: each library's own."
    if cand.startswith("medgen"):
        from medgen.schedulers import DDIMScheduler
        return DDIMScheduler(num_train_timesteps=1000), lambda s, o, t, h: s.step(o, int(t), h)[0]
    if cand == "diffusers":
        from diffusers import DDIMScheduler
        return (DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True, set_alpha_to_one=True),
                lambda s, o, t, h: s.step(o, t, h).prev_sample)
    from monai.networks.schedulers import DDIMScheduler
    return DDIMScheduler(num_train_timesteps=1000), lambda s, o, t, h: s.step(o, int(t), h)[0]


def make_task(cand: str, case: dict, seed: int = 1):
    "A zero-argument callable running one unit of the case for candidate `cand` (a train step, an encode, a sampling)."
    net = build_net(cand, case)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(case["batch"], *case["shape"], generator=gen)
    kind = case["kind"]
    if kind.endswith("train"):
        opt = torch.optim.Adam(net.parameters(), lr=1e-5)
        net.train()
        if kind == "unet_train":
            t = torch.randint(0, 1000, (case["batch"],), generator=gen)
            noise = torch.randn(x.shape, generator=gen)
            loss_fn = lambda: torch.nn.functional.mse_loss(_out(net(x, t)), noise)  # noqa: E731
        else:
            enc, dec = _kl_parts(cand, net)

            def loss_fn():
                mu, sigma = enc(x)
                z = mu + sigma * torch.randn(mu.shape, generator=gen)
                kl = 0.5 * (mu.pow(2) + sigma.pow(2) - 2 * sigma.clamp_min(1e-8).log() - 1).mean()
                return torch.nn.functional.mse_loss(dec(z), x) + 1e-6 * kl

        cpu, precision = torch.device("cpu"), precision_of(cand)

        def step():  # as the Trainer: the forward and the loss under its autocast, the backward outside it
            opt.zero_grad(set_to_none=True)
            with _autocast(cpu, precision): loss = loss_fn()
            loss.backward()
            opt.step()
        return step
    net.eval()
    if kind in ("kl_encode", "kl_decode"):
        enc, dec = _kl_parts(cand, net)
        with torch.no_grad(): z = enc(x)[0]
        f, arg = (enc, x) if kind == "kl_encode" else (dec, z)
        return torch.no_grad()(lambda: f(arg))
    sched, step_fn = _scheduler(cand)
    sched.set_timesteps(case["steps"])

    @torch.no_grad()
    def sample():
        h = x.clone()
        for t in sched.timesteps:
            h = step_fn(sched, _out(net(h, torch.full((h.shape[0],), int(t), dtype=torch.long))), t, h)
        return h
    return sample


def make_task_by_name(cand: str, name: str, tiny: bool):
    "make_task from picklable arguments (for the fresh memory process); sampling: 2 steps (its peak is one step's)."
    case = cases(tiny)[name]
    if case["kind"] == "ddim": case = dict(case, steps=2)
    return make_task(cand, case)


def diffusers_unet_check(cfg: dict, shape: tuple) -> float:
    "Max abs difference between MONAI core's UNet and diffusers' UNet2DModel with the mapped weights."
    core = build_unet("monai", dict(cfg, use_flash_attention=True), "cpu").eval()
    d = diffusers_unet(cfg).eval()
    d.load_state_dict(monai_unet_to_diffusers(core.state_dict()))
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(2, *shape, generator=g), torch.tensor([10, 700])
    with torch.no_grad(): return (core(x, t) - d(x, t).sample).abs().max().item()


# --- the run -----------------------------------------------------------------------------------------------------

def _round_s(times: dict) -> float:
    "Seconds one round of all candidates took (median over the kept rounds)."
    import statistics
    return sum(statistics.median(v) for v in times.values())


def time_all(todo: dict, res: dict, threads: list[int], repeats: int | None, warmup: int, budget_s: float,
             max_repeats: int = 15, min_repeats: int = 3) -> None:
    """Interleaved timing of every case at every thread count. The networks are built once per case and kept, so a
    case is warmed up once (again at a new thread count only when a round is cheap, < 10 s). Without a fixed
    `repeats`, a case gets an equal share of what is left of `budget_s` (first all cases at the first thread count,
    then at the next), between `min_repeats` and `max_repeats` rounds; a case whose minimum no longer fits is skipped
    at the later thread counts and says so."""
    fns, round_s, t0 = {}, {}, time.time()
    items = [(th, name) for th in threads for name in todo]
    for i, (th, name) in enumerate(items):
        torch.set_num_threads(th)
        entry, left = res["cases"][name], budget_s - (time.time() - t0)
        if name not in fns:
            fns[name] = {c: make_task(c, todo[name]) for c in entry["candidates"]}
            w = warmup
        else:
            w = warmup if round_s[name] < 10 else 0
        if w:  # the warm-up round also measures what a round costs at this thread count
            round_s[name] = _round_s(interleaved(fns[name], 1, 0))
            w -= 1
        if repeats: n = repeats
        else:
            share = left / (len(items) - i)
            n = max(min_repeats, min(max_repeats, int(share / max(round_s[name], 1e-3)) - w))
            if th != threads[0] and (w + min_repeats) * round_s[name] > max(left, 0) + 0.05 * budget_s:
                entry["threads"][str(th)] = {"skipped": f"time budget: {left:.0f} s left, a round takes "
                                                        f"{round_s[name]:.1f} s"}
                print(f"[{th}t] {name}: skipped (budget)", flush=True)
                continue
            if th != threads[0]: n = max(min_repeats, min(n, int(max(left, 0) / round_s[name]) - w))
        times = interleaved(fns[name], n, w)
        round_s[name] = _round_s(times)
        r = {"times_s": {c: summary(v) for c, v in times.items()}, "times_raw_s": times,
             "ratios": {f"medgen/{c}": ratio(times["medgen"], times[c]) for c in times if c != "medgen"},
             "rounds": n, "warmup_rounds": w, "loadavg": list(os.getloadavg())}
        entry["threads"][str(th)] = r
        print(f"[{th}t] {name:18s} x{n} medgen {r['times_s']['medgen']['median']:.3f}s  "
              + "  ".join(f"{k} {fmt_ratio(v)}" for k, v in r["ratios"].items()), flush=True)
    torch.set_num_threads(threads[0])


def measure_memory(todo: dict, res: dict, which: str, tiny: bool) -> None:
    "Peak memory of one run per candidate and case, each in a fresh process (one thread)."
    for name, case in todo.items():
        if which == "none" or (which == "train" and case["kind"] in ("kl_encode", "kl_decode")): continue
        entry = res["cases"][name]
        mem = {c: peak_rss(make_task_by_name, (c, name, tiny), threads=1) for c in entry["candidates"]
               if c != "medgen_copy"}
        base = mem["medgen"]["peak_bytes"]
        entry["memory"] = mem
        entry["memory_ratios"] = {f"medgen/{c}": (base / m["peak_bytes"] if base and m["peak_bytes"] else None)
                                  for c, m in mem.items() if c != "medgen"}
        entry["memory_measured_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        print(f"memory {name:18s} " + "  ".join(
            f"{c} {m['peak_bytes'] / 2**20:.0f} MiB" if m["peak_bytes"] else f"{c} {m['note']}" for c, m in mem.items()),
            flush=True)


# 3D peak-memory goal entries: candidate -> (key suffix, what is compared against MONAI (flash) in fp32)
MEMORY_LINES = {"medgen": ("memory", "fp32, both at their fp32 settings; the issue's goal is with medgen's defaults"),
                "medgen_ckpt": ("memory_checkpointed",
                                "medgen with use_checkpointing=True against MONAI (flash), which has no checkpointing"),
                "medgen_auto": ("memory_medgen_auto", "medgen at the Trainer's default precision against MONAI (flash) in fp32"),
                "medgen_auto_ckpt": ("memory_medgen_auto_ckpt",
                                     "the Trainer's default precision and use_checkpointing=True against MONAI (flash)")}


def _time_goal(r: dict, cand: str, goal: float) -> dict:
    "A time goal on one thread count's rounds: the paired ratio cand / monai_flash, its quartiles, the noise line."
    rr = (r["ratios"]["medgen/monai_flash"] if cand == "medgen" else  # stored; others from the rounds, paired by position
          ratio(r["times_raw_s"][cand], r["times_raw_s"]["monai_flash"]))
    return {"goal": goal, "ratio": rr["median"], "q1": rr["q1"], "q3": rr["q3"],
            "noise": r["ratios"]["medgen/medgen_copy"], "met": rr["median"] <= goal, "met_beyond_noise": rr["q3"] <= goal}


def goals(results: dict) -> dict:
    "Each goal of issue 12 measured here: the ratio, whether its median and its upper quartile meet the goal."
    out, auto = {}, results["settings"].get("auto_precision")
    for name, c in results["cases"].items():
        for th, r in c["threads"].items():
            if "ratios" not in r: continue  # skipped for the time budget
            if name in GOALS: out[f"{name}@{th}t"] = _time_goal(r, "medgen", GOALS[name])
            if "medgen_auto" in r.get("times_raw_s", {}):  # as users run it: the Trainer's default precision (--defaults)
                out[f"{name}@{th}t:as_users_run_it"] = dict(_time_goal(r, "medgen_auto", USER_TRAIN_GOAL),
                                                            note=f"medgen_auto ({auto}) / monai_flash (fp32)")
        mem = c.get("memory", {})
        mo = mem.get("monai_flash", {}).get("peak_bytes")
        for cand, (key, note) in MEMORY_LINES.items():
            ours = mem.get(cand, {}).get("peak_bytes")
            if name.startswith("unet_train_3d") and ours and mo:
                out[f"{name}:{key}"] = {"goal": MEMORY_GOAL_3D, "ratio": ours / mo, "met": ours / mo <= MEMORY_GOAL_3D,
                                        "note": note}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny models, one round (seconds; for tests)")
    ap.add_argument("--repeats", type=int, default=None, help="kept rounds per case (default: from --budget; tiny 1)")
    ap.add_argument("--budget", type=float, default=None, help="seconds for all timing without --repeats (default 900)")
    ap.add_argument("--warmup", type=int, default=1, help="discarded rounds per case")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to run at")
    ap.add_argument("--cases", nargs="*", default=None, help="subset of the case names")
    ap.add_argument("--no-diffusers", action="store_true", help="leave diffusers out (also when not installed)")
    ap.add_argument("--no-timing", action="store_true", help="memory only")
    ap.add_argument("--memory", choices=["all", "train", "none"], default="train",
                    help="peak memory cases: all, the train/sampling cases (default), none")
    ap.add_argument("--memory-from", type=Path, default=None,
                    help="take the memory figures from this earlier output (peak RSS does not depend on the load)")
    ap.add_argument("--defaults", action="store_true",
                    help="train cases also as users run them: medgen at the Trainer's default precision")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    t_start = time.time()
    try:
        import diffusers  # noqa: F401
        with_diff = not a.no_diffusers
    except ImportError:
        with_diff = False
    repeats = a.repeats or (1 if a.tiny and a.budget is None else None)
    budget = a.budget or 900.0
    todo = {k: v for k, v in cases(a.tiny).items() if not a.cases or k in a.cases}
    res = {"benchmark": "medgen vs MONAI core (use_flash_attention=True) vs diffusers, fp32, one process"
                        + ("; train cases also medgen at the Trainer's default precision (medgen_auto*)" if a.defaults else ""),
           "machine": machine("cpu"),
           "settings": {"tiny": a.tiny, "repeats": repeats or f"from a {budget:.0f} s budget (3..15 per case)",
                        "warmup": a.warmup, "threads": a.threads, "dtype": "float32", "diffusers": with_diff,
                        "memory": a.memory if not a.memory_from else f"from {a.memory_from.name}",
                        "ratio": "median of per-round paired ratios medgen_i / peer_i, [q1, q3] their quartiles",
                        "noise": "medgen/medgen_copy: the same model twice; its spread is what noise alone gives",
                        "goals_meaningful": not a.tiny, "defaults": a.defaults,
                        "auto_precision": _resolve_precision(torch.device("cpu"), "auto")},
           "cases": {}}
    for name, case in todo.items():
        cands = candidates(case, with_diff, a.defaults)
        entry = {"config": dict(case), "candidates": cands, "threads": {},
                 "params": {c: n_params(build_net(c, case)) for c in cands if c != "medgen_copy"}}
        entry["weights"] = {"monai_flash": "same as medgen (MONAI's seeded init, loaded into medgen)"}
        if "diffusers" in cands:
            if case["kind"].startswith("kl"):
                entry["weights"]["diffusers"] = ("own seeded init at the matched configuration (no key mapping: one "
                                                 "more decoder resnet per level, a 2L->2L quant_conv): params differ")
            else:
                diff = diffusers_unet_check(case["net"], case["shape"])
                entry["weights"]["diffusers"] = f"same weights (key mapping); max abs output diff {diff:.2e}"
                entry["diffusers_max_abs_diff"] = diff
        res["cases"][name] = entry
        print(f"{name}: params " + ", ".join(f"{c} {n:,}" for c, n in entry["params"].items()), flush=True)
    if not a.no_timing: time_all(todo, res, a.threads, repeats, a.warmup, budget)
    if a.memory_from:
        old = json.loads(Path(a.memory_from).read_text())["cases"]
        for name, entry in res["cases"].items():
            for k in ("memory", "memory_ratios", "memory_measured_utc"):
                if k in old.get(name, {}): entry[k] = old[name][k]
    else: measure_memory(todo, res, a.memory, a.tiny)
    res["goals"] = goals(res)
    res["loadavg_at_end"] = list(os.getloadavg())
    res["wall_s"] = time.time() - t_start
    out = write_json(a.out or RESULTS / "peers_cpu.json", res)
    print(f"-> {out} ({res['wall_s']:.0f} s)")
    return res


if __name__ == "__main__":
    main()
