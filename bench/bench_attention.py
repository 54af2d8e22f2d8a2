"""Attention paths on CPU, per shape: SDPA's math and flash backends (torch.nn.attention.sdpa_kernel), SDPA as torch
picks (default), and a plain matmul-softmax path, forward (no grad, as in sampling) and forward+backward (training).

Shapes: head dim 32/64/128 at sequence lengths 64..4096 (heads * head dim = 64, one head at 128), and the token counts of the
attention levels of bench_peers' UNets (64 channels, 32 per head: 2D 64^2 and 128^2, 3D 32^3 and 48^3). Exactness:
max abs difference of each path's output and gradients from a float64 reference. Time: median of interleaved rounds
(paths rotating), each round timing enough calls to last >= --min-s. A path whose score matrix would not fit
(--max-gib) is skipped and says so. This is the table a per-shape choice of path is made from. Then the q/k/v
projections: three Linear layers, one fused Linear(C, 3C), or the three weights concatenated at run time.

    python bench/bench_attention.py                  # -> bench/results/attention_cpu.json, and a table
    python bench/bench_attention.py --tiny --out /tmp/a.json
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, summary, write_json  # noqa: E402


def plain(q, k, v):
    "softmax(q k^T / sqrt(d)) v with explicit matmuls."
    return torch.softmax(q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5), dim=-1) @ v


def _sdpa(backend):
    def f(q, k, v):
        with sdpa_kernel([backend]): return F.scaled_dot_product_attention(q, k, v)
    return f


PATHS = {"plain": plain, "sdpa_default": F.scaled_dot_product_attention, "sdpa_math": _sdpa(SDPBackend.MATH),
         "sdpa_flash": _sdpa(SDPBackend.FLASH_ATTENTION)}
MATERIALISE = ("plain", "sdpa_math")  # paths that hold the (B, h, L, L) score matrix (and its gradient)


def shapes(tiny: bool) -> list[dict]:
    "The measured shapes: (batch, heads, L, d) and a label."
    if tiny:
        return [dict(label="generic", batch=1, heads=2, L=L, d=d) for d in (32, 64) for L in (16, 64)]
    out = [dict(label="generic", batch=1, heads=max(1, 64 // d), L=L, d=d) for d in (32, 64, 128) for L in (64, 256, 1024, 4096)]
    unet = [("2D 64^2 level 1 (32^2)", 1024), ("2D 64^2 level 2 (16^2)", 256), ("2D 128^2 level 1 (64^2)", 4096),
            ("3D 32^3 level 1 (16^3)", 4096), ("3D 32^3 level 2 (8^3)", 512), ("3D 48^3 level 1 (24^3)", 13824),
            ("3D 48^3 level 2 (12^3)", 1728)]
    return out + [dict(label=lab, batch=1, heads=2, L=L, d=32) for lab, L in unet]


def _inputs(s: dict, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shp = (s["batch"], s["heads"], s["L"], s["d"])
    return [torch.randn(shp, generator=g, dtype=torch.float64).to(dtype) for _ in range(3)]


def reference(s: dict) -> dict:
    "The float64 plain path's output and gradients (dq, dk, dv) on the shape's inputs, and the output gradient used."
    q, k, v = (t.double().requires_grad_() for t in _inputs(s))
    g = torch.randn(q.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = plain(q, k, v)
    y.backward(g)
    return {"y": y.detach(), "grads": (q.grad, k.grad, v.grad), "g": g}


def exactness(s: dict, path, ref: dict) -> dict:
    "Max abs difference of the output and of dq, dk, dv from the float64 reference on the same inputs."
    q, k, v = (t.requires_grad_() for t in _inputs(s))
    y = path(q, k, v)
    y.backward(ref["g"].float())
    grad = max((a.grad.double() - b).abs().max().item() for a, b in zip((q, k, v), ref["grads"]))
    return {"out_max_abs_diff": (y.double() - ref["y"]).abs().max().item(), "grad_max_abs_diff": grad}


def _timer(fn, min_s: float):
    "A callable returning seconds per call, averaged over enough calls to last min_s (calibrated once)."
    t0 = time.perf_counter(); fn(); one = time.perf_counter() - t0
    n = max(1, math.ceil(min_s / max(one, 1e-6)))

    def run():
        t0 = time.perf_counter()
        for _ in range(n): fn()
        return (time.perf_counter() - t0) / n
    return run


def _rotate(timers: dict, rounds: int) -> dict[str, tuple[list, list]]:
    "Interleaved rounds of (forward, forward+backward) timers, the order rotating each round: name -> (fwd, fwdbwd) times."
    times, names = {n: ([], []) for n in timers}, list(timers)
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            times[n][0].append(timers[n][0]()); times[n][1].append(timers[n][1]())
    return times


def measure(s: dict, rounds: int, min_s: float, max_gib: float) -> dict:
    "Exactness and interleaved forward / forward+backward times of every path on shape `s`."
    score_gib = s["batch"] * s["heads"] * s["L"] ** 2 * 4 / 2**30
    out = {"shape": s, "score_matrix_gib": score_gib, "paths": {},
           "exactness": "vs float64 plain path" if s["L"] <= 4096 else "not checked (L > 4096: float64 reference too big)"}
    q, k, v = _inputs(s)
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    go = torch.randn(q.shape, generator=torch.Generator().manual_seed(2))
    timers, ref = {}, (reference(s) if s["L"] <= 4096 else None)
    for name, f in PATHS.items():
        if name in MATERIALISE and 3 * score_gib > max_gib:  # scores, probabilities and a gradient at once
            out["paths"][name] = {"skipped": f"score matrix {score_gib:.2f} GiB: over --max-gib {max_gib} x 1/3"}
            continue
        try:
            ex = exactness(s, f, ref) if ref is not None else None
        except RuntimeError as e:  # a backend that does not take this shape
            out["paths"][name] = {"skipped": repr(e)[:200]}
            continue

        def fwd(f=f):
            with torch.no_grad(): f(q, k, v)

        def fwdbwd(f=f):
            f(qg, kg, vg).backward(go)
            qg.grad = kg.grad = vg.grad = None
        timers[name] = (_timer(fwd, min_s), _timer(fwdbwd, min_s))
        out["paths"][name] = {"exactness_vs_fp64": ex}
    for n, (tf, tb) in _rotate(timers, rounds).items():
        out["paths"][n].update(fwd_s=summary(tf), fwdbwd_s=summary(tb))
    for key in ("fwd_s", "fwdbwd_s"):
        timed = {n: p[key]["median"] for n, p in out["paths"].items() if key in p}
        best = min(timed, key=timed.get)
        out[f"fastest_{key[:-2]}"] = best
        out[f"{key[:-2]}_speedup_best_vs_default"] = timed["sdpa_default"] / timed[best] if "sdpa_default" in timed else None
        out[f"{key[:-2]}_time_vs_flash"] = ({n: t / timed["sdpa_flash"] for n, t in timed.items()}
                                            if "sdpa_flash" in timed else None)
    return out


def measure_projections(L: int, C: int, rounds: int, min_s: float, seed: int = 0) -> dict:
    """The q/k/v projections of a self-attention layer on (1, L, C) tokens, three ways: three Linear(C, C) (medgen's and
    GM's layout), one Linear(C, 3C) (MONAI's `use_combined_linear`), and the three weights concatenated at run time into
    one matrix product (what medgen could do without changing its checkpoints). Forward and forward+backward times."""
    g = torch.Generator().manual_seed(seed)
    w, b = (torch.randn(3 * C, C, generator=g) * C ** -0.5), torch.randn(3 * C, generator=g) * 0.1
    x = torch.randn(1, L, C, generator=g)
    sep = [torch.nn.Linear(C, C) for _ in range(3)]
    fused = torch.nn.Linear(C, 3 * C)
    with torch.no_grad():
        for i, lin in enumerate(sep): lin.weight.copy_(w[i * C:(i + 1) * C]); lin.bias.copy_(b[i * C:(i + 1) * C])
        fused.weight.copy_(w); fused.bias.copy_(b)
    paths = {"three_linears": lambda t: [lin(t) for lin in sep],
             "one_linear_3c": lambda t: fused(t).chunk(3, -1),
             "concat_at_run_time": lambda t: torch.nn.functional.linear(
                 t, torch.cat([lin.weight for lin in sep]), torch.cat([lin.bias for lin in sep])).chunk(3, -1)}
    with torch.no_grad():
        ref = paths["three_linears"](x)
        exact = {n: max((a - r).abs().max().item() for a, r in zip(f(x), ref)) for n, f in paths.items()}
    xg = x.clone().requires_grad_()

    def timers(f):
        def fwd():
            with torch.no_grad(): f(x)

        def fwdbwd():
            sum(o.sum() for o in f(xg)).backward()
            xg.grad = None
        return _timer(fwd, min_s), _timer(fwdbwd, min_s)
    out = {"L": L, "C": C, "max_abs_diff_vs_three_linears": exact, "paths": {}}
    for n, (tf, tb) in _rotate({n: timers(f) for n, f in paths.items()}, rounds).items():
        out["paths"][n] = {"fwd_s": summary(tf), "fwdbwd_s": summary(tb)}
    for key in ("fwd_s", "fwdbwd_s"):
        base = out["paths"]["three_linears"][key]["median"]
        out[f"{key[:-2]}_time_vs_three_linears"] = {n: p[key]["median"] / base for n, p in out["paths"].items()}
    return out


def table(rows: list[dict]) -> str:
    "A short text table: per shape, forward and forward+backward milliseconds of each path, and the fastest."
    names = list(PATHS)
    head = f"{'shape':34s} {'d':>4s} {'L':>6s} | " + " ".join(f"{n[-7:]:>8s}" for n in names) + " | fastest (fwd / fwd+bwd)"
    lines = [head, "-" * len(head)]
    for r in rows:
        s = r["shape"]
        for key in ("fwd_s", "fwdbwd_s"):
            cells = " ".join(f"{r['paths'][n][key]['median'] * 1e3:8.2f}" if key in r["paths"].get(n, {}) else f"{'-':>8s}"
                             for n in names)
            lab = s["label"] if key == "fwd_s" else "  (fwd+bwd)"
            lines.append(f"{lab:34s} {s['d']:4d} {s['L']:6d} | {cells} | "
                         + (f"{r['fastest_fwd']} / {r['fastest_fwdbwd']}" if key == "fwd_s" else ""))
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="four small shapes, one round (seconds; for tests)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds per shape (default 5, 3 from L = 4096 on; tiny 1)")
    ap.add_argument("--min-s", type=float, default=None, help="each timing lasts at least this (default 0.05 s)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-gib", type=float, default=4.0, help="memory allowed to a path's score matrices")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.time()
    rounds, min_s = a.rounds or (1 if a.tiny else 5), a.min_s or (0.002 if a.tiny else 0.05)
    res = {"benchmark": "attention paths on CPU: plain matmul-softmax vs SDPA (default / math / flash)",
           "machine": machine("cpu"), "settings": {"tiny": a.tiny, "rounds": rounds, "min_s": min_s,
                                                   "threads": a.threads, "dtype": "float32", "max_gib": a.max_gib},
           "shapes": []}
    out = a.out or RESULTS / "attention_cpu.json"
    for s in shapes(a.tiny):
        r = measure(s, rounds if s["L"] < 4096 else min(rounds, 3), min_s, a.max_gib)
        r["loadavg"] = list(os.getloadavg())
        res["shapes"].append(r)
        print(f"{s['label']:26s} d={s['d']:3d} L={s['L']:5d}: fastest fwd {r['fastest_fwd']}, "
              f"fwd+bwd {r['fastest_fwdbwd']}", flush=True)
        write_json(out, dict(res, partial=True))  # a stopped run keeps the shapes it measured
    # the q/k/v projections at the token counts of the UNets' attention levels (64 channels; tiny: 16)
    res["projections"] = [measure_projections(L, 16 if a.tiny else 64, rounds, min_s)
                          for L in ((16, 64) if a.tiny else (256, 512, 1024, 1728, 4096, 13824))]
    for p in res["projections"]:
        print(f"q/k/v projections L={p['L']:5d} C={p['C']}: time vs three Linears, fwd "
              + ", ".join(f"{n} {v:.2f}" for n, v in p["fwd_time_vs_three_linears"].items()) + "; fwd+bwd "
              + ", ".join(f"{n} {v:.2f}" for n, v in p["fwdbwd_time_vs_three_linears"].items()), flush=True)
    res["partial"], res["table"] = False, table(res["shapes"])
    res["loadavg_at_end"] = list(os.getloadavg())
    res["wall_s"] = time.time() - t0
    print(res["table"])
    out = write_json(out, res)
    print(f"-> {out} ({res['wall_s']:.0f} s)")
    return res


if __name__ == "__main__":
    main()
