"""Feature-extraction throughput of the packaged ImageNet EfficientNet-Lite0 (medgen.features).

Tasks: `EfficientNetLite0Features` on 2D batches (3-channel 224x224, and grey 64x64 that the extractor resizes to
224), and 2.5D features of 32^3 volumes (`SliceFeatures`, 8 slices per orientation = 24 network images per volume).
Time: median of `repeats` timed runs after one warm-up, under torch.inference_mode; throughput = items / median
seconds (images/s, volumes/s for 2.5D). There is no MONAI counterpart of this network to compare with, so the
file records absolute numbers with the machine, the thread count and the load average at the start (other
processes on a shared CPU slow every number alike).

    python bench/bench_features.py --device cpu --quick     # -> bench/results/features_cpu.json
    python bench/bench_features.py --device cuda            # -> bench/results/features_cuda.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def tasks(quick: bool) -> dict[str, dict]:
    "Task name -> input shape (per item), batch size, and whether it is a 2.5D volume task."
    batches = (1, 8) if quick else (1, 8, 32, 128)
    out = {f"lite0_rgb224_b{b}": dict(shape=(3, 224, 224), batch=b, volume=False) for b in batches}
    out.update({f"lite0_grey64_b{b}": dict(shape=(1, 64, 64), batch=b, volume=False) for b in batches[1:]})
    out["lite0_25d_vol32_k8_b1"] = dict(shape=(1, 32, 32, 32), batch=1, volume=True)
    return out


def sync(device: str) -> None:
    if device == "cuda": torch.cuda.synchronize()


def time_task(extractor, x: torch.Tensor, device: str, repeats: int) -> list[float]:
    "Seconds of `repeats` runs of extractor(x) after one warm-up."
    times = []
    with torch.inference_mode():
        extractor(x); sync(device)
        for _ in range(repeats):
            t0 = time.perf_counter(); extractor(x); sync(device)
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="small batches and few repeats (CI-sized)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available(): raise SystemExit("--device cuda: no CUDA device here")
    from medgen.features import EfficientNetLite0Features, SliceFeatures

    repeats = args.repeats or (3 if args.quick else 10)
    lite0 = EfficientNetLite0Features().to(args.device)
    volumes = SliceFeatures(lite0, num_slices=8)
    g = torch.Generator().manual_seed(0)
    results = {}
    for name, t in tasks(args.quick).items():
        x = torch.rand((t["batch"], *t["shape"]), generator=g).to(args.device)
        times = time_task(volumes if t["volume"] else lite0, x, args.device, repeats)
        med = statistics.median(times)
        results[name] = dict(batch=t["batch"], item_shape=list(t["shape"]), unit="volumes/s" if t["volume"] else "images/s",
                             median_s=med, throughput=t["batch"] / med, times_s=times)
        print(f"{name:26s} {t['batch'] / med:9.1f} {results[name]['unit']}  (median {med * 1000:.1f} ms)")
    info = dict(device=args.device, torch=torch.__version__, threads=torch.get_num_threads(), python=platform.python_version(),
                machine=platform.machine(), processor=platform.processor() or platform.uname().machine,
                cpu_count=os.cpu_count(), loadavg_at_start=os.getloadavg() if hasattr(os, "getloadavg") else None,
                gpu=torch.cuda.get_device_name() if args.device == "cuda" else None, quick=args.quick, repeats=repeats)
    out = args.out or RESULTS / f"features_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(benchmark="feature extraction throughput", info=info, results=results), indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
