"""Helpers shared by the benchmarks in bench/: machine description, interleaved timing, ratios with their noise,
peak memory of one run in a fresh process, JSON output.

Timing protocol: every candidate of a case runs once per round, the order rotating from round to round so that load
on the machine hits all alike; after `warmup` rounds, `repeats` rounds are kept. A ratio a/b is summarised by the
median of the per-round ratios a_i/b_i (paired: the two ran seconds apart) and their quartiles; the self-vs-self ratio
(a candidate against an identical second copy of itself) shows how far from 1 pure noise moves a ratio.
"""
from __future__ import annotations

import gc
import json
import multiprocessing as mp
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def sync(device: str) -> None:
    "Wait for the device's queued work (CUDA); nothing on CPU."
    if str(device).startswith("cuda"): torch.cuda.synchronize()


def _cpu_model() -> dict:
    "CPU model name and the instruction-set flags that matter for fp32/bf16 speed (Linux /proc/cpuinfo)."
    info = {"model": platform.processor() or platform.machine(), "flags": []}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        if line.startswith("model name"): info["model"] = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            info["flags"] = sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma")))
            break
    return info


def versions() -> dict:
    "Versions of the packages the benchmarks compare (None where not installed)."
    import importlib.metadata as md
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("medgen", "monai", "diffusers"):
        try: out[name] = md.version(name)
        except md.PackageNotFoundError: out[name] = None
    return out


def machine(device: str = "cpu") -> dict:
    "Where the numbers come from: CPU, cores, load, torch threads, GPU if any, package versions."
    m = {"device": device, "platform": platform.platform(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
         "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
         "torch_threads": torch.get_num_threads(), "versions": versions(),
         "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        m["gpu"] = torch.cuda.get_device_name()
        m["cuda"] = torch.version.cuda
    return m


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1, device: str = "cpu") -> dict:
    "Seconds per call of each candidate: `warmup` + `repeats` rounds, each calling every candidate once, order rotating."
    names = list(fns)
    times = {n: [] for n in names}
    for i in range(warmup + repeats):
        k = i % len(names)
        for n in names[k:] + names[:k]:
            sync(device); t0 = time.perf_counter(); fns[n](); sync(device)
            if i >= warmup: times[n].append(time.perf_counter() - t0)
    return times


def _quantiles(v: list[float]) -> tuple[float, float]:
    "Lower and upper quartile (the values themselves when fewer than 4)."
    if len(v) < 4: return min(v), max(v)
    q = statistics.quantiles(v, n=4, method="inclusive")
    return q[0], q[2]


def summary(v: list[float]) -> dict:
    "Median, quartiles, extremes and relative spread ((q3 - q1) / median) of a list of times."
    med = statistics.median(v)
    lo, hi = _quantiles(v)
    return {"median": med, "q1": lo, "q3": hi, "min": min(v), "max": max(v), "rel_iqr": (hi - lo) / med,
            "n": len(v), "runs": [round(x, 5) for x in v]}


def ratio(a: list[float], b: list[float]) -> dict:
    "a/b from paired rounds: the median of a_i/b_i with its quartiles, and the ratio of the medians."
    r = [x / y for x, y in zip(a, b)]
    lo, hi = _quantiles(r)
    return {"median": statistics.median(r), "q1": lo, "q3": hi, "min": min(r), "max": max(r),
            "of_medians": statistics.median(a) / statistics.median(b), "n": len(r)}


def fmt_ratio(r: dict | None) -> str:
    "'0.97 [0.95-0.99]': median of the paired ratios [quartiles]."
    return "-" if r is None else f"{r['median']:.2f} [{r['q1']:.2f}-{r['q3']:.2f}]"


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _status_bytes(key: str) -> int:
    "A memory figure of this process from /proc/self/status (VmRSS: now, VmHWM: peak since the last reset)."
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def _peak_child(make: Callable, args: tuple, threads: int, q) -> None:
    "In a fresh process: growth of the resident set at its peak during one run of make(*args)(), after a warm-up run."
    import ctypes
    try:
        torch.set_num_threads(threads)
        fn = make(*args)
        fn()                                     # warm-up: one-time caches and kernels
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap memory back, so the run's own peak shows
        base = _status_bytes("VmRSS:")
        with open("/proc/self/clear_refs", "w") as f: f.write("5")  # reset the peak (VmHWM) to the current RSS
        fn()
        q.put(("ok", _status_bytes("VmHWM:") - base, base))
    except OSError as e:  # not Linux: no peak to reset
        q.put(("unmeasurable", repr(e), None))
    except Exception as e:  # report, do not hang the parent
        q.put(("error", repr(e), None))


def peak_rss(make: Callable, args: tuple = (), threads: int = 1, timeout: float = 900) -> dict:
    """Peak resident-set growth (bytes) of one call of `make(*args)()` in a fresh (spawned) process, above what the
    process held before the call (model, optimizer, inputs); `make` must be a module-level function."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_peak_child, args=(make, args, threads, q))
    p.start()
    try:
        status, value, base = q.get(timeout=timeout)
    except Exception as e:
        status, value, base = "error", repr(e), None
    p.join(timeout=30)
    if p.is_alive(): p.kill()
    if status != "ok": return {"peak_bytes": None, "note": f"{status}: {value}"}
    return {"peak_bytes": value, "base_rss_bytes": base}


def calibration_task(nbytes: int) -> Callable[[], None]:
    "A task whose peak is known: allocate and touch `nbytes` of float32, then free them (checks `peak_rss`)."
    def run():
        x = torch.ones(nbytes // 4)
        del x
    return run


def write_json(path: Path, obj: dict) -> Path:
    "Write `obj` as indented JSON (creating the folder)."
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=str))
    return path
