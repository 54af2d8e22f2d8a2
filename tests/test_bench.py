"""The benchmarks in bench/ run in their tiny modes and write the JSON they promise; their helpers compute what they say."""
import json
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import _common  # noqa: E402


def test_ratio_and_summary_closed_form():
    r = _common.ratio([2.0, 4.0, 6.0, 8.0, 10.0], [1.0, 2.0, 2.0, 4.0, 10.0])
    assert r["median"] == 2.0 and r["min"] == 1.0 and r["max"] == 3.0 and r["n"] == 5
    assert r["of_medians"] == 6.0 / 2.0 and (r["q1"], r["q3"]) == (2.0, 2.0)
    s = _common.summary([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (s["median"], s["q1"], s["q3"], s["rel_iqr"]) == (3.0, 2.0, 4.0, 2.0 / 3.0)


def test_interleaved_rotates_and_counts():
    calls = []
    times = _common.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]  # order rotates every round
    assert [len(v) for v in times.values()] == [3, 3] and all(t >= 0 for v in times.values() for t in v)


def test_peak_rss_sees_a_known_allocation():
    mib = 2**20
    r = _common.peak_rss(_common.calibration_task, (96 * mib,))
    if r["peak_bytes"] is None: pytest.skip(r["note"])  # not Linux
    assert 90 * mib <= r["peak_bytes"] <= 140 * mib


def test_attention_tiny(tmp_path, one_thread):
    import bench_attention
    out = tmp_path / "a.json"
    bench_attention.main(["--tiny", "--out", str(out)])
    res = json.loads(out.read_text())
    assert res["machine"]["versions"]["torch"] and res["table"]
    assert len(res["shapes"]) == 4
    for r in res["shapes"]:
        assert set(r["paths"]) == {"plain", "sdpa_default", "sdpa_math", "sdpa_flash"}
        for p in r["paths"].values():
            assert p["exactness_vs_fp64"]["out_max_abs_diff"] < 1e-5 and p["exactness_vs_fp64"]["grad_max_abs_diff"] < 1e-5
            assert p["fwd_s"]["median"] > 0 and p["fwdbwd_s"]["median"] > 0
        assert r["fastest_fwd"] in r["paths"] and r["fastest_fwdbwd"] in r["paths"]
    assert [p["L"] for p in res["projections"]] == [16, 64]
    for p in res["projections"]:  # the three ways of projecting q, k, v compute the same
        assert set(p["paths"]) == {"three_linears", "one_linear_3c", "concat_at_run_time"}
        assert max(p["max_abs_diff_vs_three_linears"].values()) < 1e-5
        assert p["fwd_time_vs_three_linears"]["three_linears"] == 1.0


def test_peers_tiny(tmp_path, one_thread):
    import bench_peers
    out = tmp_path / "p.json"
    bench_peers.main(["--tiny", "--threads", "1", "--memory", "none", "--out", str(out), "--defaults",
                      "--cases", "unet_train_2d_64", "unet_train_3d_32", "kl_decode_2d_64", "ddim50_2d_64"])
    res = json.loads(out.read_text())
    assert res["machine"]["versions"]["monai"] == "1.6.1" and not res["settings"]["goals_meaningful"]
    for name, c in res["cases"].items():
        assert c["params"]["medgen"] == c["params"]["monai_flash"] > 0
        r = c["threads"]["1"]["ratios"]
        assert {"medgen/medgen_copy", "medgen/monai_flash"} <= set(r) and all(v["median"] > 0 for v in r.values())
        if "diffusers" in c["candidates"] and not name.startswith("kl"):  # same weights through the key mapping
            assert c["params"]["diffusers"] == c["params"]["medgen"] and c["diffusers_max_abs_diff"] < 1e-5
    assert "diffusers" not in res["cases"]["unet_train_3d_32"]["candidates"]  # no 3D UNet in diffusers
    c3 = res["cases"]["unet_train_3d_32"]  # medgen with gradient checkpointing: same network, its own timing line
    assert "medgen_ckpt" in c3["candidates"] and c3["params"]["medgen_ckpt"] == c3["params"]["medgen"]
    assert c3["threads"]["1"]["ratios"]["medgen/medgen_ckpt"]["median"] > 0
    assert "medgen_ckpt" not in res["cases"]["unet_train_2d_64"]["candidates"]
    # --defaults: the train cases also run as users run them (the Trainer's default precision), 3D also checkpointed
    assert res["settings"]["auto_precision"] in ("bf16", "fp32")
    for name, c in res["cases"].items():
        train = c["config"]["kind"].endswith("train")
        assert ("medgen_auto" in c["candidates"]) == train
        assert ("medgen_auto_ckpt" in c["candidates"]) == (name == "unet_train_3d_32")
    train_cases = [n for n, c in res["cases"].items() if c["config"]["kind"].endswith("train")]
    assert set(res["goals"]) == {f"{n}@1t" for n in res["cases"]} | {f"{n}@1t:as_users_run_it" for n in train_cases}
    g = res["goals"]["unet_train_2d_64@1t:as_users_run_it"]
    raw = res["cases"]["unet_train_2d_64"]["threads"]["1"]["times_raw_s"]  # one round: the ratio of the two times
    assert g["goal"] == 0.75 and abs(g["ratio"] - raw["medgen_auto"][0] / raw["monai_flash"][0]) < 1e-12


def test_peers_auto_candidate_trains_in_the_trainers_precision(monkeypatch, one_thread):
    "medgen_auto's step runs under the Trainer's autocast for 'auto'; the fp32 candidates without it."
    import torch

    import bench_peers
    from medgen.training import _resolve_precision
    assert bench_peers.precision_of("medgen_auto") == bench_peers.precision_of("medgen_auto_ckpt") == "auto"
    assert {bench_peers.precision_of(c) for c in ("medgen", "medgen_copy", "medgen_ckpt", "monai_flash")} == {"fp32"}
    case, build, seen = bench_peers.cases(tiny=True)["unet_train_2d_64"], bench_peers.build_net, {}
    for cand in ("medgen", "medgen_auto"):
        net = build(cand, case)
        net.conv_in.register_forward_hook(lambda m, i, o, cand=cand: seen.update({cand: o.dtype}) and None)
        monkeypatch.setattr(bench_peers, "build_net", lambda c, k, net=net: net)  # make_task builds this network
        bench_peers.make_task(cand, case)()
    auto = torch.bfloat16 if _resolve_precision(torch.device("cpu"), "auto") == "bf16" else torch.float32
    assert seen == {"medgen": torch.float32, "medgen_auto": auto}


def test_gpu_check_dry_run(tmp_path, one_thread):
    import gpu_check
    out = tmp_path / "g.json"
    gpu_check.main(["--dry-run", "--out", str(out)])
    res = json.loads(out.read_text())
    assert not res["errors"] and res["settings"]["tiny"]
    m = res["parts"]["mfu_unet2d"]
    assert m["flops_per_step"] > 0 and m["step_s"] > 0 and (m["mfu"] is None) == (m["peak_tflops"] is None)
    s = res["parts"]["ldm3d_sample"]
    assert s["unet_flops_per_step"] > 0 and s["decode_s"] > 0 and s["medgen_ddim3"]["steps"] == 3
    assert "skipped" in res["parts"]["cascade_sr"] or res["parts"]["cascade_sr"]["finite"]
    assert s["medgen_ddim3_plus_decode_s"] == pytest.approx(s["medgen_ddim3"]["s"] + s["decode_s"])
    p = res["parts"]["peers_train_2d"]  # interleaved: every candidate timed every round, ratios paired
    assert {len(v) for v in p["round_s"].values()} == {2} and p["medgen_vs_monai_flash"]["n"] == 2
    assert p["medgen_vs_monai_flash"]["median"] > 0 and p["noise_medgen_vs_copy"]["median"] > 0
    f = res["parts"]["forward_launches"]  # on a CPU: no device kernels, but the aten ops and host time are there
    assert all(f[i]["device_kernels"] == 0 and f[i]["aten_ops"] > 100 and f[i]["host_ms_per_forward"] > 0
               for i in ("medgen", "monai_flash"))


def test_gpu_check_parts_are_checked(tmp_path, one_thread):
    import gpu_check
    with pytest.raises(SystemExit, match="unknown \\['nope'\\]"):
        gpu_check.main(["--dry-run", "--parts", "nope", "--out", str(tmp_path / "g.json")])
    res = gpu_check.main(["--dry-run", "--parts", "cascade_sr", "--out", str(tmp_path / "g.json")])
    assert list(res["parts"]) == ["cascade_sr"] and res["settings"]["parts"] == ["cascade_sr"]


def test_gpu_results_are_what_chapter_13_says():
    "The committed H200 run (bench/results/gpu_nvidia_h200.json) against the numbers chapter 13 and 70 quote."
    res = json.loads((ROOT / "bench/results/gpu_nvidia_h200.json").read_text())
    p = res["parts"]
    assert res["machine"]["gpu"] == "NVIDIA H200" and not res["errors"]
    ratios = {k: round(p[k]["medgen_vs_monai_flash"]["median"], 2) for k in p if k.startswith("peers_train")}
    assert ratios == {"peers_train_2d128_bf16": 0.97, "peers_train_2d128_fp32": 0.99,
                      "peers_train_3d_bundle_bf16": 0.95, "peers_train_3d_bundle_fp32": 1.05}
    for k in ("mfu_unet2d", "mfu_unet3d_bundle"):  # MFU is FLOPs / time / peak
        assert p[k]["mfu"] == pytest.approx(p[k]["flops_per_step"] / p[k]["step_s"] / 989e12)
    assert (round(p["mfu_unet2d"]["mfu"], 2), round(p["mfu_unet3d_bundle"]["mfu"], 3)) == (0.22, 0.057)
    s = p["ldm3d_sample"]
    assert (round(s["medgen_ddim200_plus_decode_s"], 1), round(s["medgen_ddim200_graph_plus_decode_s"], 2),
            round(s["medgen_dpmpp20_graph_plus_decode_s"], 2)) == (8.0, 1.76, 0.31)
    for k in ("medgen_ddim200", "medgen_dpmpp20", "monai_flash_ddim200"):  # the CUDA graph computes what eager does
        assert s[f"{k}_graph"]["final_std"] == pytest.approx(s[k]["final_std"], rel=1e-3)
    assert s["medgen_ddim200"]["final_std"] == pytest.approx(s["monai_flash_ddim200"]["final_std"], rel=1e-3)
    f = p["forward_launches"]
    assert (f["medgen"]["device_kernels"], round(f["medgen"]["device_busy_ms"], 1), round(f["medgen"]["host_ms_per_forward"], 1)) == (717, 7.2, 37.5)


def test_peak_flops_table():
    import gpu_check
    assert gpu_check.peak_flops("NVIDIA H200") == gpu_check.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu_check.peak_flops("cpu") is None


def test_sampling_tiny(tmp_path, one_thread):
    import bench_sampling
    out = tmp_path / "s.json"
    res = bench_sampling.main(["--tiny", "--out", str(out)])
    assert json.loads(out.read_text())["runs"].keys() == res["runs"].keys() == bench_sampling.TINY_STEPS.keys()
    ref = res["reference"]
    assert ref["sampler"] == "DDIM (clip_sample=False)" and ref["steps"] == 4 and ref["fid"] > 0 and ref["noise_floor_rel"] >= 0
    for name, runs in res["runs"].items():
        assert [r["steps"] for r in runs] == list(bench_sampling.TINY_STEPS[name])
        assert all(r["fid"] > 0 and r["seconds_per_sample"] > 0 for r in runs)
        m = res["matched"][name]  # the fewest steps within the tolerance of the reference, or None
        ok = [r["steps"] for r in runs if r["fid"] <= ref["fid"] * (1 + res["tolerance_rel"])]
        assert (m is None) == (not ok) and (m is None or m["steps"] == min(ok))
    assert res["matched"]["DDIM"]["steps"] <= 4  # the reference itself qualifies


def test_precision_tiny(tmp_path, one_thread):
    "bench_precision in its tiny mode: a run per precision, the loss curve, FID and time, and a verdict for bf16."
    import bench_precision
    out = tmp_path / "prec.json"
    res = bench_precision.main(["--tiny", "--out", str(out)])
    assert json.loads(out.read_text())["settings"]["tiny"]
    assert [r["precision"] for r in res["runs"]] == ["fp32", "bf16"]
    for r in res["runs"]:
        assert r["loss_curve"] and all(v > 0 for v in r["loss_curve"]) and r["fid"] > 0 and r["train_s"] > 0
    v = res["verdict"]["bf16"]
    assert v["fid"]["fp32_range"][0] == v["fid"]["fp32_range"][1] == res["runs"][0]["fid"]  # one fp32 seed
    assert isinstance(v["final_loss"]["within"], bool) and isinstance(v["fid"]["no_worse"], bool)
    assert len(v["fid"]["paired_minus_fp32"]) == 1 and v["train_time_ratio"] > 0
