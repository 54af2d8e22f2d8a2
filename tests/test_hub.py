"""medgen.hub (chapter 61): pretrained directories, safe loading, downloads (no network needed)."""
import errno
import hashlib
import json
import os
import pickle
import urllib.error
import urllib.request

import pytest
import torch
import torch.nn as nn
from monai.networks.nets import DecoderOnlyTransformer, PatchDiscriminator

import medgen.training
from medgen.hub import (CONFIG_NAME, DownloadError, UnsafeWeightsError, cache_dir, capture_init_args,
                        download, from_pretrained, init_args, load_weights, save_pretrained)
from medgen.training import ChecksumError


@capture_init_args
class Net(nn.Module):
    def __init__(self, widths=(2, 3), scale: float = 1.0, norm: nn.Module | None = None):
        super().__init__()
        self.lin = nn.Linear(*widths)
        self.norm = norm or nn.Identity()
        self.scale = scale

    def forward(self, x): return self.norm(self.lin(x)) * self.scale


def test_monai_networks_rebuild_without_code(tmp_path):
    torch.manual_seed(0)
    args = {"num_tokens": 9, "max_seq_len": 6, "attn_layers_dim": 8, "attn_layers_depth": 1, "attn_layers_heads": 2}
    gpt = DecoderOnlyTransformer(**args).eval()
    d = PatchDiscriminator(2, channels=4, in_channels=1, num_layers_d=2).eval()
    save_pretrained(gpt, tmp_path / "gpt", config=args)
    save_pretrained(d, tmp_path / "d", config={"spatial_dims": 2, "channels": 4, "in_channels": 1, "num_layers_d": 2})
    tokens, img = torch.randint(0, 9, (2, 6)), torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(from_pretrained(tmp_path / "gpt").eval()(tokens), gpt(tokens))
        assert torch.equal(from_pretrained(tmp_path / "d").eval()(img)[-1], d(img)[-1])   # BatchNorm buffers too
    cfg = json.loads((tmp_path / "gpt" / CONFIG_NAME).read_text())
    assert cfg["class"] == "DecoderOnlyTransformer" and cfg["args"]["num_tokens"] == 9


def test_recorded_args_nested_module_and_overrides(tmp_path):
    net = Net((3, 4), scale=2.0, norm=nn.LayerNorm(4, eps=1e-3))
    assert init_args(net)["widths"] == (3, 4)
    save_pretrained(net, tmp_path / "net")
    back = from_pretrained(Net, tmp_path / "net")
    x = torch.randn(5, 3)
    with torch.no_grad(): assert torch.equal(back(x), net(x))
    assert isinstance(back.norm, nn.LayerNorm) and back.norm.eps == 1e-3 and back.scale == 2.0
    assert from_pretrained(Net, tmp_path / "net", scale=3.0).scale == 3.0
    with pytest.raises(ValueError, match="refusing to build test_hub.Net"):
        from_pretrained(tmp_path / "net")                                   # not in the allow-list


def test_config_cannot_name_arbitrary_code(tmp_path):
    save_pretrained(nn.Linear(2, 2, bias=False), tmp_path / "m", config={"in_features": 2, "out_features": 2, "bias": False})
    cfg = json.loads((tmp_path / "m" / CONFIG_NAME).read_text())
    for module, name in [("os", "system"), ("subprocess", "Popen"), ("torch", "load"), ("torch.hub", "load"),
                         ("medgen_evil", "X"), ("torch.nn.functional", "relu")]:
        (tmp_path / "m" / CONFIG_NAME).write_text(json.dumps({**cfg, "module": module, "class": name}))
        with pytest.raises(ValueError, match=f"refusing to build {module}.{name}"):
            from_pretrained(tmp_path / "m")
    nested = {**cfg, "args": {"x": {"__module__": {"module": "os", "class": "system", "args": {}}}}}
    (tmp_path / "m" / CONFIG_NAME).write_text(json.dumps(nested))
    with pytest.raises(ValueError, match="refusing to build os.system"):
        from_pretrained(tmp_path / "m")


class _Exploit:
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt"])
def test_malicious_pickle_is_refused(tmp_path, suffix):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    with open(path, "wb") as f: pickle.dump({"weight": torch.zeros(1), "x": _Exploit(marker)}, f)   # a raw pickle
    torch.save({"weight": torch.zeros(1), "x": _Exploit(marker)}, tmp_path / f"evil2{suffix}")       # torch's zip
    for p in (path, tmp_path / f"evil2{suffix}"):
        with pytest.raises(UnsafeWeightsError, match="refusing to load"):
            load_weights(p)
    assert not marker.exists()


def test_plain_state_dicts_load(tmp_path):
    lin = nn.Linear(2, 3)
    torch.save(lin.state_dict(), tmp_path / "w.pt")
    torch.save({"model": lin.state_dict(), "epoch": 1, "optimizer": {"lr": 0.1}}, tmp_path / "ckpt.pth")
    assert torch.equal(load_weights(tmp_path / "w.pt")["weight"], lin.weight.detach())
    assert torch.equal(load_weights(tmp_path / "ckpt.pth", key="model")["bias"], lin.bias.detach())
    with pytest.raises(ValueError, match="does not hold a state dict"):
        load_weights(tmp_path / "ckpt.pth")


def test_save_pretrained_is_atomic_on_full_disk(tmp_path, monkeypatch):
    net = Net()
    save_pretrained(net, tmp_path / "net")
    before = {p.name: p.read_bytes() for p in (tmp_path / "net").iterdir()}

    def full(*a, **k): raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(medgen.training._HashingWriter, "write", full)
    with pytest.raises(OSError, match="No space left"):
        save_pretrained(Net((2, 5)), tmp_path / "net")
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in (tmp_path / "net").iterdir()} == before   # untouched, no temp files


def test_download_local_file_and_file_url(tmp_path, monkeypatch):
    src = tmp_path / "src" / "weights.safetensors"
    src.parent.mkdir()
    src.write_bytes(b"\x00" * 1000 + b"medgen")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    monkeypatch.setenv("MEDGEN_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    a = download(src.as_uri(), sha256=digest)
    assert a == tmp_path / "cache" / "weights.safetensors" and a.read_bytes() == src.read_bytes()
    b = download(str(src), sha256=digest.upper(), filename="copy.safetensors")
    assert b.read_bytes() == src.read_bytes()
    with pytest.raises(ChecksumError, match="the file was not cached"):
        download(src, sha256="f" * 64, filename="wrong.safetensors")
    assert not (tmp_path / "cache" / "wrong.safetensors").exists()
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tmp")]


def test_download_offline_names_url_and_destination(tmp_path, monkeypatch):
    calls = []

    def offline(*args, **kwargs):
        calls.append(args[0])
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    url, digest = "https://models.example.org/medgen/vae.safetensors", "a" * 64
    with pytest.raises(DownloadError) as e:
        download(url, sha256=digest, cache=tmp_path)
    msg = str(e.value)
    assert url in msg and str(tmp_path / "vae.safetensors") in msg and digest in msg and "MEDGEN_CACHE" in msg
    assert isinstance(e.value, OSError) and calls == [url]
    (tmp_path / "vae.safetensors").write_bytes(b"placed by hand")                # the fix the message asks for
    assert download(url, cache=tmp_path).read_bytes() == b"placed by hand" and calls == [url]   # no new request
    with pytest.raises(DownloadError, match="could not download file:///unroutable/nowhere/x.pt"):
        monkeypatch.undo()
        download("file:///unroutable/nowhere/x.pt", cache=tmp_path)


# ---- a plain `pip install .` imports every module: no top-level import of a package only extras bring
def _declared_dependencies(root) -> set[str]:
    "Import names of pyproject's [project] dependencies (the distributions a plain install brings)."
    import re
    import tomllib
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    dists = {re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0].strip().lower() for d in deps}
    import_names = {"pytorch-ignite": "ignite"}
    return {import_names.get(d, d.replace("-", "_")) for d in dists}


def test_exported_modules_import_only_declared_dependencies(root):
    import ast
    import sys
    allowed = _declared_dependencies(root) | set(sys.stdlib_module_names) | {"medgen"}
    assert {"torch", "monai", "numpy", "safetensors", "ignite"} <= allowed
    bad = []
    for path in sorted((root / "medgen").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in _module_level(tree.body):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [] if node.level else [node.module])
            bad += [f"{path.name}: {n}" for n in names if n.split(".")[0] not in allowed]
    assert not bad, f"top-level imports of packages a plain install does not bring: {bad}"


def _module_level(body):
    "Import statements executed when a module is imported (top level, and inside top-level if/try/with/class)."
    import ast
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)): yield node
        elif isinstance(node, (ast.If, ast.Try, ast.With, ast.ClassDef)):
            for field in ("body", "orelse", "finalbody"): yield from _module_level(getattr(node, field, []))
            for h in getattr(node, "handlers", []): yield from _module_level(h.body)


# ---- every public network round-trips through save_pretrained / from_pretrained (GM's and MONAI core's names)
def _check_install():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "tools" / "check_install.py"
    spec = importlib.util.spec_from_file_location("check_install", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_CHECK = _check_install()


@pytest.mark.parametrize("ident,cls_name,kwargs,inputs", [pytest.param(*s, id=s[0]) for s in _CHECK.network_specs()])
def test_every_network_round_trips(tmp_path, one_thread, ident, cls_name, kwargs, inputs):
    n, diff = _CHECK.round_trip(cls_name, kwargs, inputs, tmp_path / ident)
    assert n >= 1 and diff == 0.0
    cfg = json.loads((tmp_path / ident / CONFIG_NAME).read_text())
    assert cfg["class"] == cls_name and cfg["module"].startswith("medgen.")


# ---- deployment: torch.export (the successor of TorchScript) traces every network; the exported program computes
# what the eager network computes (networks that sample get the same seed)
@pytest.mark.parametrize("ident,cls_name,kwargs,inputs", [pytest.param(*s, id=s[0]) for s in _CHECK.network_specs()])
def test_every_network_exports(one_thread, ident, cls_name, kwargs, inputs):
    import warnings
    import medgen
    torch.manual_seed(0)
    net = getattr(medgen, cls_name)(**kwargs).eval()
    args, kw = inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(net, args, kw)
    with torch.no_grad():
        torch.manual_seed(1); eager = _CHECK._flat(net(*args, **kw))
        torch.manual_seed(1); exported = _CHECK._flat(ep.module()(*args, **kw))
    assert len(eager) == len(exported)
    assert max((a - b).abs().max().item() for a, b in zip(eager, exported)) <= 1e-5


def _small_3d(name: str):
    "Small 3D networks and their inputs, for the deployment checks."
    import medgen
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 8, 8, 8, generator=g)
    if name == "DiffusionModelUNet-3d":
        net = medgen.DiffusionModelUNet(3, 1, 1, num_channels=(8, 16), attention_levels=(False, True), num_res_blocks=1,
                                        num_head_channels=8, norm_num_groups=4)
        return net, (x, torch.tensor([7]))
    net = medgen.AutoencoderKL(3, 1, 1, num_channels=(8, 16), latent_channels=2, attention_levels=(False, True),
                               num_res_blocks=1, norm_num_groups=4)
    return net, (x,)


@pytest.mark.parametrize("name", ["DiffusionModelUNet-3d", "AutoencoderKL-3d"])
def test_3d_networks_export(one_thread, name):
    "torch.export in 3D as well: the exported program gives the eager outputs (the autoencoder samples: same seed)."
    import warnings
    torch.manual_seed(0)
    net, args = _small_3d(name)
    net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(net, args)
    with torch.no_grad():
        torch.manual_seed(1); eager = _CHECK._flat(net(*args))
        torch.manual_seed(1); exported = _CHECK._flat(ep.module()(*args))
    assert len(eager) == len(exported) and max((a - b).abs().max().item() for a, b in zip(eager, exported)) <= 1e-5


_SCRIPTED = ["DiffusionModelUNet-gm", "DiffusionModelUNet-monai", "DiffusionModelUNet-cond", "ControlNet",
             "AutoencoderKL-gm", "AutoencoderKL-monai", "VQVAE-gm", "VQVAE-monai", "SPADEDiffusionModelUNet",
             "SPADEAutoencoderKL", "DiffusionModelUNet-3d", "AutoencoderKL-3d", "DecoderOnlyTransformer"]


def _scripting_case(ident: str):
    "(network with every parameter random, so no branch hides behind a zero init; args; kwargs), eval mode."
    import medgen
    from helpers import randomize
    if ident.endswith("-3d"):
        net, args = _small_3d(ident)
        return randomize(net, 3), args, {}
    spec = {s[0]: s for s in _CHECK.network_specs()}[ident]
    net = getattr(medgen, spec[1])(**spec[2])
    args, kw = spec[3]()
    return randomize(net, 3), args, kw


@pytest.mark.parametrize("ident", _SCRIPTED)
def test_torchscript_of_the_generative_networks(one_thread, tmp_path, ident):
    """GM's UNets script, and MONAI bundles deploy through TorchScript: `torch.jit.script` of every generative network
    computes what the eager network computes, also after `torch.jit.save` / `torch.jit.load`; the autoencoders sample
    the same posterior from the same generator."""
    import warnings
    net, args, kw = _scripting_case(ident)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13: TorchScript is deprecated (it still works)
        scripted = torch.jit.script(net)
        torch.jit.save(scripted, tmp_path / "net.pt")
        loaded = torch.jit.load(tmp_path / "net.pt")
    if "Autoencoder" in ident: kw = {**kw, "generator": None}
    with torch.no_grad():
        outs = []
        for m in (net, scripted, loaded):
            if "generator" in kw: kw["generator"] = torch.Generator().manual_seed(5)
            outs.append(_CHECK._flat(m(*args, **kw)))
    eager = outs[0]
    assert len(eager) >= 1 and all(len(o) == len(eager) for o in outs)
    assert max(e.abs().max().item() for e in eager) > 1e-3  # not a network that outputs zeros
    for o in outs[1:]:
        assert max((a - b).abs().max().item() for a, b in zip(eager, o)) <= 1e-5


def test_scripted_autoencoder_encodes_and_decodes(one_thread):
    "The methods a latent diffusion deployment calls, `encode` and `decode`, are exported to the scripted autoencoder."
    import warnings
    net, (x,), _ = _scripting_case("AutoencoderKL-gm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(net)
    with torch.no_grad():
        z_mu, z_sigma = net.encode(x)
        s_mu, s_sigma = scripted.encode(x)
        assert torch.allclose(z_mu, s_mu, atol=1e-6) and torch.allclose(z_sigma, s_sigma, atol=1e-6)
        assert torch.allclose(net.decode(z_mu), scripted.decode(z_mu), atol=1e-5)


def test_scripted_spade_norm_needs_its_label_map(one_thread):
    "Eager checks are skipped in a scripted network, but a SPADE layer given no label map still raises (TypeError)."
    import warnings
    import medgen
    norm = medgen.SPADE(label_nc=3, norm_nc=4, spatial_dims=2, hidden_channels=4).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(norm)
    x, seg = torch.randn(1, 4, 4, 4), torch.rand(1, 3, 8, 8)
    assert torch.allclose(scripted(x, seg), norm(x, seg), atol=1e-6)
    with pytest.raises(TypeError, match="seg"): norm(x, None)
    with pytest.raises(Exception, match="seg"): scripted(x, None)


def test_scripted_transformer_without_cross_attention_and_its_cache(one_thread):
    """The autoregressive transformer scripts with and without cross-attention (whole sequences: the same logits);
    a key/value cache made in Python would reach TorchScript as a copy and lose its updates, so it is refused."""
    import warnings
    import medgen
    from helpers import randomize
    net = randomize(medgen.DecoderOnlyTransformer(num_tokens=7, max_seq_len=8, attn_layers_dim=8, attn_layers_depth=2,
                                                  attn_layers_heads=2), 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(net)
    x = torch.randint(0, 7, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(x), atol=1e-5) and net(x).abs().max() > 1e-3
        with pytest.raises((RuntimeError, torch.jit.Error), match="incremental decoding runs in eager mode"):
            scripted(x[:, :4], None, net.init_cache())
