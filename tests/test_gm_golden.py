"""GM 0.2.3 checkpoints compute in medgen what they computed in GM: golden files made by GM's own code.

tests/golden/gm/*.safetensors are written by tools/make_gm_golden.py (run with monai-generative 0.2.3 installed, in a
side environment): a tiny GM network with every parameter drawn at random (the attention blocks' `proj_attn`, which
GM's forward never applies, included), its inputs and GM's outputs. Here medgen builds the same class with the same
(GM) constructor arguments, loads GM's state dict with `load_state_dict` and must give GM's outputs."""
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import medgen

GOLDEN = Path(__file__).resolve().parent / "golden" / "gm"
FILES = sorted(GOLDEN.glob("*.safetensors"))
TOL = 1e-5


def read_golden(path: Path) -> tuple[dict, dict, dict, dict]:
    "(metadata, GM state dict, inputs, outputs {call index: [tensors]}) of one golden file."
    with safe_open(path, "pt") as f:
        meta, t = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    state, flat, offset = {}, t["state"].float(), 0
    for key, shape in json.loads(meta["state_keys"]):
        n = int(torch.Size(shape).numel())
        state[key], offset = flat[offset:offset + n].view(shape).clone(), offset + n
    assert offset == flat.numel()
    state.update({k[len("state_int/"):]: v for k, v in t.items() if k.startswith("state_int/")})
    inputs = {k[len("input/"):]: v for k, v in t.items() if k.startswith("input/")}
    outputs = {}
    for k, v in t.items():
        if k.startswith("output/"):
            _, i, j = k.split("/")
            outputs.setdefault(int(i), {})[int(j)] = v
    return meta, state, inputs, {i: [o[j] for j in sorted(o)] for i, o in outputs.items()}


def _flat(out) -> list:
    if isinstance(out, torch.Tensor): return [out]
    return [t for o in out for t in _flat(o)]


def run_golden(path: Path) -> float:
    "Max |medgen - GM| over every output of every call of one golden file (AssertionError on a shape mismatch)."
    meta, state, inputs, outputs = read_golden(path)
    torch.manual_seed(0)
    net = getattr(medgen, meta["class"])(**json.loads(meta["kwargs"])).eval()
    net.load_state_dict(state)  # strict: GM's key set is recognised, nothing left over or missing
    worst = 0.0
    with torch.no_grad():
        for i, (method, args, kw) in enumerate(json.loads(meta["calls"])):
            out = _flat(getattr(net, method)(*(inputs[a] for a in args), **{k: inputs[v] for k, v in kw.items()}))
            assert len(out) == len(outputs[i]), f"{method}: {len(out)} outputs, GM gave {len(outputs[i])}"
            for ours, gm in zip(out, outputs[i]):
                assert ours.shape == gm.shape, f"{method}: shape {tuple(ours.shape)}, GM {tuple(gm.shape)}"
                worst = max(worst, (ours.float() - gm).abs().max().item())
    return worst


def test_golden_files_present():
    "Every network GM 0.2.3 has (but the fixed-size DiffusionModelEncoder head), in 2D and 3D where GM has both."
    names = {p.stem for p in FILES}
    classes = set()
    for p in FILES:
        with safe_open(p, "pt") as f: classes.add(f.metadata()["class"])
    assert {"DiffusionModelUNet", "AutoencoderKL", "VQVAE", "ControlNet", "SPADEDiffusionModelUNet", "SPADEAutoencoderKL",
            "SPADENet", "PatchDiscriminator", "MultiScalePatchDiscriminator", "DecoderOnlyTransformer",
            "SpatialRescaler"} <= classes
    assert sum(p.stat().st_size for p in FILES) < 600_000, "golden files should stay small"
    assert {n for n in names if "3d" in n} >= {"unet3d_attn", "aekl3d_attn", "controlnet3d_attn", "spade_unet3d_cross"}


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_gm_checkpoint_gives_gm_outputs(path, one_thread):
    assert run_golden(path) <= TOL


def test_gm_proj_attn_is_not_applied(one_thread):
    "The golden UNet's proj_attn is random and GM ignores it: medgen loads it as the identity, and says so in its state."
    meta, state, inputs, outputs = read_golden(GOLDEN / "unet2d_attn.safetensors")
    proj = [k for k in state if k.endswith("proj_attn.weight")]
    assert proj and all((state[k] - torch.eye(state[k].shape[0])).abs().max() > 0.1 for k in proj)
    net = medgen.DiffusionModelUNet(**json.loads(meta["kwargs"])).eval()
    net.load_state_dict(dict(state))
    for k in proj:
        out_proj = net.get_submodule(k[:-len(".proj_attn.weight")]).attn.out_proj
        assert torch.equal(out_proj.weight, torch.eye(out_proj.weight.shape[0]))
        assert torch.equal(out_proj.bias, torch.zeros_like(out_proj.bias))


@pytest.mark.parametrize("name", ["unet2d_attn", "spade_aekl2d_attn", "controlnet2d_attn"])
def test_gm_checkpoint_saved_by_medgen_still_computes_as_gm(name, tmp_path, one_thread):
    "Loaded from GM's keys, saved with save_pretrained (MONAI names), rebuilt with from_pretrained: still GM's outputs."
    meta, state, inputs, outputs = read_golden(GOLDEN / f"{name}.safetensors")
    net = getattr(medgen, meta["class"])(**json.loads(meta["kwargs"])).eval()
    net.load_state_dict(state)
    medgen.save_pretrained(net, tmp_path)
    back = medgen.from_pretrained(tmp_path).eval()
    assert not any("proj_attn" in k for k in back.state_dict())
    method, args, kw = json.loads(meta["calls"])[-1]
    with torch.no_grad():
        out = _flat(getattr(back, method)(*(inputs[a] for a in args), **{k: inputs[v] for k, v in kw.items()}))
    assert max((o - g).abs().max().item() for o, g in zip(out, outputs[len(json.loads(meta["calls"])) - 1])) <= TOL


def test_monai_core_checkpoint_applies_out_proj(one_thread):
    "MONAI core's key names keep MONAI's meaning: the output projection is applied (it is not GM's unused proj_attn)."
    from monai.networks.nets import DiffusionModelUNet as CoreUNet
    kw = dict(spatial_dims=2, in_channels=1, out_channels=1, channels=(4, 8), attention_levels=(False, True),
              num_res_blocks=1, num_head_channels=4, norm_num_groups=4)
    core = CoreUNet(**kw).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in core.parameters(): p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    ours = medgen.DiffusionModelUNet(**kw).eval()
    ours.load_state_dict(core.state_dict())
    x, t = torch.randn(2, 1, 8, 8, generator=g), torch.tensor([3, 500])
    with torch.no_grad(): assert (ours(x, t) - core(x, t)).abs().max() <= TOL
