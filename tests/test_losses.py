"Perceptual and spectral losses (medgen.losses): closed forms, invariants, MONAI core parity, weights, error paths."
import pickle
import warnings
from unittest import mock

import monai.losses.perceptual as core_perceptual
import pytest
import torch
from monai.losses import JukeboxLoss as CoreJukeboxLoss
from monai.utils import LossReduction

import medgen.losses as L
from medgen.hub import UnsafeWeightsError, from_pretrained, save_pretrained
from medgen.losses import (LPIPS, LPIPS_NETWORKS, PERCEPTUAL_NETWORKS, EfficientNetLPIPS, JukeboxLoss, PerceptualLoss,
                           WeightsNotFoundError, lpips_distance, normalize_tensor)
from medgen.phantoms import gaussian_blur


def rand(*shape, seed=0, lo=0.0, hi=1.0):
    return lo + (hi - lo) * torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def hub_returns(net):
    "torch.hub.load returning `net`: MONAI core's similarity modules built offline with medgen's trunk."
    return mock.patch.object(torch.hub, "load", lambda *a, **k: net)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    "No weights anywhere: empty $MEDGEN_WEIGHTS and torch.hub dir, no lpips package."
    monkeypatch.setenv("MEDGEN_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(L, "_lpips_package_file", lambda net: None)
    return tmp_path


# --- the distance -----------------------------------------------------------------------------------------------

def test_normalize_and_distance_closed_forms():
    f0, f1 = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1), torch.tensor([-4.0, 3.0]).view(1, 2, 1, 1)
    torch.testing.assert_close(normalize_tensor(f0).flatten(), torch.tensor([0.6, 0.8]))
    assert lpips_distance([f0], [f1]).item() == pytest.approx(2.0)       # orthogonal unit vectors
    assert lpips_distance([f0], [-f0]).item() == pytest.approx(4.0)      # opposite: the maximum
    assert lpips_distance([f0], [7 * f0]).item() == pytest.approx(0.0, abs=1e-7)  # scale-free
    assert lpips_distance([f0, f0], [f1, -f0]).item() == pytest.approx(6.0)        # summed over layers
    x = rand(2, 5, 3, 3)
    torch.testing.assert_close(normalize_tensor(x), core_perceptual.normalize_tensor(x), atol=1e-7, rtol=0)
    head = torch.nn.ModuleList([torch.nn.Conv2d(2, 1, 1, bias=False)])
    with torch.no_grad(): head[0].weight.copy_(torch.tensor([2.0, 0.5]).view(1, 2, 1, 1))
    d = (normalize_tensor(f0) - normalize_tensor(f1)) ** 2                 # w . (n0 - n1)^2
    assert lpips_distance([f0], [f1], head).item() == pytest.approx((2 * d[0, 0] + 0.5 * d[0, 1]).item())


def test_zero_features_have_finite_gradients():
    z = torch.zeros(1, 3, 2, 2, requires_grad=True)
    lpips_distance([z], [torch.ones(1, 3, 2, 2)]).sum().backward()
    assert torch.isfinite(z.grad).all()


# --- LPIPS ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("net,params", [("alex", 2_469_696), ("vgg", 14_714_688), ("squeeze", 722_496)])
def test_lpips_backbones_match_torchvision_layout(net, params):
    lp = LPIPS(net)
    assert sum(p.numel() for p in lp.net.parameters()) == params        # torchvision's `.features`
    feats = lp.net(torch.zeros(1, 3, 32, 32))
    assert [f.shape[1] for f in feats] == list(LPIPS_NETWORKS[net][2])
    assert sum(p.numel() for p in lp.heads.parameters()) == sum(LPIPS_NETWORKS[net][2])
    keys = set(lp.state_dict())
    assert "net.features.0.weight" in keys and "lin0.model.1.weight" in keys
    assert (net != "squeeze") or "net.features.12.expand3x3.weight" in keys


@pytest.mark.parametrize("net", list(LPIPS_NETWORKS))
def test_lpips_identity_symmetry_bounds(net):
    lp = LPIPS(net)
    x, y = rand(2, 3, 32, 32, seed=1, lo=-1), rand(2, 3, 32, 32, seed=2, lo=-1)
    assert torch.equal(lp(x, x), torch.zeros(2, 1, 1, 1))
    torch.testing.assert_close(lp(x, y), lp(y, x), atol=1e-6, rtol=0)
    assert (lp(x, y) > 0).all() and (lp(x, y) <= sum(4 * h.model[1].weight.max() for h in lp.heads)).all()
    g = x[:, :1]  # a grey image broadcasts to RGB, as with lpips.LPIPS
    torch.testing.assert_close(lp(g, y[:, :1]), lp(g.expand(-1, 3, -1, -1), y[:, :1].expand(-1, 3, -1, -1)))
    lp.train()
    assert not lp.training and not any(p.requires_grad for p in lp.parameters())


# --- JukeboxLoss ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("size", [None, "crop", "pad"])
def test_jukebox_matches_monai(spatial_dims, reduction, size):
    s = None if size is None else ((1,) + (6,) * spatial_dims if size == "crop" else (2,) + (12,) * spatial_dims)
    x, y = rand(2, 2, *(8,) * spatial_dims, seed=3, lo=-1), rand(2, 2, *(8,) * spatial_dims, seed=4, lo=-1)
    ours = JukeboxLoss(spatial_dims, s, reduction=reduction)(x, y)
    core = CoreJukeboxLoss(spatial_dims, s, reduction=reduction)(x, y)
    assert ours.shape == core.shape
    assert (ours - core).abs().max().item() <= 1e-5 * max(1.0, core.abs().max().item())


def test_jukebox_invariants_and_errors():
    jl = JukeboxLoss(2)
    x = rand(1, 1, 16, 16, seed=5)
    assert jl(x, x.roll((3, 5), (-2, -1))).item() == pytest.approx(0.0, abs=1e-10)  # blind to circular shifts
    assert jl.amplitude(x).pow(2).sum().item() == pytest.approx(x.pow(2).sum().item(), rel=1e-5)  # Parseval, ortho
    assert jl(x, gaussian_blur(x, 1.0, 2)).item() > 0
    assert JukeboxLoss(2, reduction=LossReduction.SUM).reduction == "sum"
    z = torch.zeros(1, 1, 8, 8, requires_grad=True)
    JukeboxLoss(2)(z, rand(1, 1, 8, 8)).backward()
    assert torch.isfinite(z.grad).all()
    with pytest.raises(ValueError, match="reduction must be"): JukeboxLoss(2, reduction="max")
    with pytest.raises(ValueError, match="fft_norm must be"): JukeboxLoss(2, fft_norm="unitary")


# --- MONAI core parity of the medical networks and of the wrapper -------------------------------------------

@pytest.mark.parametrize("channel_wise", [False, True])
def test_medicalnet_matches_monai(channel_wise):
    ours = PerceptualLoss(3, "medicalnet_resnet10_23datasets", is_fake_3d=False, pretrained=False, channel_wise=channel_wise)
    with hub_returns(ours.perceptual_function.net), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        core = core_perceptual.PerceptualLoss(3, "medicalnet_resnet10_23datasets", is_fake_3d=False, channel_wise=channel_wise)
    x, y = rand(2, 2, 16, 16, 16, seed=6), rand(2, 2, 16, 16, 16, seed=7)
    out = ours(x, y)
    assert out.shape == ((2,) if channel_wise else ())
    torch.testing.assert_close(out, core(x, y), atol=1e-5, rtol=0)
    assert ours(x, x).abs().max().item() < 1e-6


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_radimagenet_matches_monai(spatial_dims):  # 3D: 2.5D with every slice (the random draw cancels in the mean)
    ours = PerceptualLoss(spatial_dims, "radimagenet_resnet50", fake_3d_ratio=1.0, pretrained=False)
    with hub_returns(ours.perceptual_function.net):
        core = core_perceptual.PerceptualLoss(spatial_dims, "radimagenet_resnet50", fake_3d_ratio=1.0)
    shape = (2, 1, 32, 32) if spatial_dims == 2 else (1, 1, 16, 16, 16)
    x, y = rand(*shape, seed=8), rand(*shape, seed=9)
    torch.testing.assert_close(ours(x, y), core(x.clone(), y.clone()), atol=1e-5, rtol=0)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_lpips_wrapper_matches_monai(spatial_dims):  # MONAI core's PerceptualLoss around medgen's LPIPS
    ours = PerceptualLoss(spatial_dims, "squeeze", fake_3d_ratio=1.0, pretrained=False)
    with mock.patch.object(core_perceptual, "LPIPS", lambda **k: ours.perceptual_function):
        core = core_perceptual.PerceptualLoss(spatial_dims, "squeeze", fake_3d_ratio=1.0)
    shape = (2, 1, 32, 32) if spatial_dims == 2 else (1, 1, 32, 32, 32)
    x, y = rand(*shape, seed=10, lo=-1), rand(*shape, seed=11, lo=-1)
    torch.testing.assert_close(ours(x, y), core(x, y), atol=1e-5, rtol=0)


def test_resnet50_preprocessing_matches_monai():
    x = rand(2, 1, 8, 8, seed=12)
    torch.testing.assert_close(L._imagenet_input(x), core_perceptual.torchvision_zscore_norm(x.expand(-1, 3, -1, -1).clone()))
    torch.testing.assert_close(L._radimagenet_input(x), core_perceptual.subtract_mean(x.expand(-1, 3, -1, -1).flip(1).clone()))


# --- 2.5D ---------------------------------------------------------------------------------------------------------

def test_fake_3d_is_sum_of_per_axis_means_by_hand():
    x, y = rand(2, 1, 12, 10, 8, seed=13), rand(2, 1, 12, 10, 8, seed=14)
    loss = PerceptualLoss(3, "efficientnet_lite0", fake_3d_ratio=0.5, generator=torch.Generator().manual_seed(3))
    net, g, hand = loss.perceptual_function, torch.Generator().manual_seed(3), 0.0
    for axis in (2, 3, 4):
        s0, s1 = x.movedim(axis, 1).flatten(0, 1), y.movedim(axis, 1).flatten(0, 1)   # slices, volume-major
        idx = torch.randperm(len(s0), generator=g)[:len(s0) // 2]
        hand = hand + torch.stack([net(s0[i:i + 1], s1[i:i + 1]).squeeze() for i in idx]).mean()
    torch.testing.assert_close(loss(x, y), hand, atol=1e-5, rtol=0)
    # reproducible: a fresh loss (default seed) gives the same sequence of values
    a, b = PerceptualLoss(3, "efficientnet_lite0"), PerceptualLoss(3, "efficientnet_lite0")
    assert [a(x, y).item() for _ in range(2)] == [b(x, y).item() for _ in range(2)]
    assert a(x, x).item() == 0.0


def test_efficientnet_distance_offline():
    loss = PerceptualLoss(2, "efficientnet_lite0")  # the packaged ImageNet weights, no download
    x = rand(2, 1, 32, 32, seed=15)
    blurred = [loss(x, gaussian_blur(x, s, 2)).item() for s in (0.5, 1.0, 2.0)]
    assert loss(x, x).item() == 0.0 and blurred == sorted(blurred) and blurred[0] > 0
    assert loss(x, x.flip(-1)).item() == pytest.approx(loss(x.flip(-1), x).item(), rel=1e-5)
    recon = x.clone().requires_grad_()
    loss(recon, rand(2, 1, 32, 32, seed=16)).backward()
    assert recon.grad.abs().sum() > 0 and all(p.grad is None for p in loss.parameters())
    assert isinstance(loss.perceptual_function, EfficientNetLPIPS)


# --- errors ---------------------------------------------------------------------------------------------------

def test_argument_errors():
    with pytest.raises(ValueError, match="network_type must be one of") as e: PerceptualLoss(2, "lpips", pretrained=False)
    assert all(n in str(e.value) for n in PERCEPTUAL_NETWORKS)
    with pytest.raises(ValueError, match="is a 2D network"): PerceptualLoss(3, "alex", is_fake_3d=False, pretrained=False)
    with pytest.raises(NotImplementedError, match="only in 2D and 3D"): PerceptualLoss(1, pretrained=False)
    with pytest.raises(ValueError, match="MedicalNet"): PerceptualLoss(2, "medicalnet_resnet10_23datasets", pretrained=False)
    with pytest.raises(ValueError, match="MedicalNet"): PerceptualLoss(3, "medicalnet_resnet50_23datasets", pretrained=False)
    with pytest.raises(ValueError, match="channel_wise"): PerceptualLoss(2, "squeeze", pretrained=False, channel_wise=True)
    with pytest.raises(ValueError, match="fake_3d_ratio"): PerceptualLoss(3, "squeeze", fake_3d_ratio=0.0, pretrained=False)
    loss = PerceptualLoss(2, "efficientnet_lite0")
    with pytest.raises(ValueError, match="differing shape"): loss(rand(1, 1, 16, 16), rand(1, 1, 16, 8))
    with pytest.raises(ValueError, match="input must have shape"): loss(rand(1, 1, 8, 8, 8), rand(1, 1, 8, 8, 8))
    assert PerceptualLoss(2, "SQUEEZE", pretrained=False).network_type == "squeeze"


@pytest.mark.parametrize("network,files", [
    ("alex", ["alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
              "lpips_v0.1_alex.pth", "lpips/weights/v0.1/alex.pth"]),
    ("vgg", ["vgg16-397923af.pth", "lpips_v0.1_vgg.pth"]),
    ("squeeze", ["squeezenet1_1-b8a52dc0.pth", "lpips_v0.1_squeeze.pth"]),
    ("radimagenet_resnet50", ["RadImageNet-ResNet50_notop.pth"]),
    ("resnet50", ["resnet50-11ad3fa6.pth"]),
])
def test_missing_weights_name_the_files(offline, network, files):
    with pytest.raises(WeightsNotFoundError) as e: PerceptualLoss(2, network, cache_dir=offline / "mine")
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, ValueError)
    msg = str(e.value)
    assert all(f in msg for f in files) and str(offline / "mine") in msg and "pretrained_path" in msg


def test_missing_medicalnet_weights(offline):
    with pytest.raises(WeightsNotFoundError, match="resnet_10_23dataset.pth"):
        PerceptualLoss(3, "medicalnet_resnet10_23datasets", is_fake_3d=False)


# --- weight files -----------------------------------------------------------------------------------------------

def _lpips_package_layout(lp):
    "medgen keys -> the lpips package's (net.slice{k}.{i}.*, lins.{l}.* duplicates, scaling_layer buffers)."
    taps, out = LPIPS_NETWORKS[lp.net_name][1], {}
    for k, v in lp.state_dict().items():
        if k.startswith("net.features."):
            i = int(k.split(".")[2])
            k = f"net.slice{1 + sum(i > t for t in taps)}." + k.removeprefix("net.features.")
        elif k.startswith("lin"): out["lins." + k[3:]] = v
        out[k] = v
    out["scaling_layer.shift"] = lp.shift.view(1, 3, 1, 1)
    return out


def test_fake_weights_load_through_pretrained_path(offline):
    src = PerceptualLoss(2, "squeeze", pretrained=False)
    lp = src.perceptual_function
    with torch.no_grad():
        for p in lp.parameters(): p.mul_(1.5)   # differs from any fresh init
    torch.save({"state_dict": _lpips_package_layout(lp), "epoch": 3}, offline / "lpips_squeeze.pth")
    loaded = PerceptualLoss(2, "squeeze", pretrained_path=str(offline / "lpips_squeeze.pth"), pretrained_state_dict_key="state_dict")
    x, y = rand(2, 1, 32, 32, seed=17, lo=-1), rand(2, 1, 32, 32, seed=18, lo=-1)
    assert torch.equal(loaded(x, y), src(x, y))
    # torchvision trunk (with its classifier) + LPIPS heads as two files found through cache_dir
    trunk = {k.removeprefix("net."): v for k, v in lp.state_dict().items() if k.startswith("net.")}
    torch.save({**trunk, "classifier.1.weight": torch.zeros(1000, 512, 1, 1)}, offline / "squeezenet1_1-b8a52dc0.pth")
    torch.save({k: v for k, v in lp.state_dict().items() if k.startswith("lin")}, offline / "lpips_v0.1_squeeze.pth")
    assert torch.equal(PerceptualLoss(2, "squeeze", cache_dir=str(offline))(x, y), src(x, y))
    # the wrong network's file does not load
    with pytest.raises(KeyError, match="missing keys"):
        PerceptualLoss(2, "alex", pretrained_path=str(offline / "lpips_squeeze.pth"), pretrained_state_dict_key="state_dict")


def test_medicalnet_checkpoint_layout_loads(offline):  # Tencent's file: {'state_dict': {'module.conv1.weight', ..., 'module.conv_seg...'}}
    src = PerceptualLoss(3, "medicalnet_resnet10_23datasets", is_fake_3d=False, pretrained=False)
    sd = {"module." + k.removeprefix("net."): v * 1.1 for k, v in src.perceptual_function.state_dict().items()}
    sd["module.conv_seg.0.weight"] = torch.zeros(2, 512, 1, 1, 1)
    torch.save({"state_dict": sd}, offline / "resnet_10_23dataset.pth")
    with pytest.raises(ValueError, match="does not hold a state dict"):   # the wrapper needs its key
        PerceptualLoss(3, "medicalnet_resnet10_23datasets", is_fake_3d=False, pretrained_path=str(offline / "resnet_10_23dataset.pth"))
    loss = PerceptualLoss(3, "medicalnet_resnet10_23datasets", is_fake_3d=False,
                          pretrained_path=str(offline / "resnet_10_23dataset.pth"), pretrained_state_dict_key="state_dict")
    w = loss.perceptual_function.net.conv1.weight
    assert torch.equal(w, sd["module.conv1.weight"])


class _Exploit:
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (open, (str(self.marker), "w"))


def test_malicious_pickle_is_refused(offline):
    marker, path = offline / "pwned", offline / "evil.pth"
    torch.save({"net.features.0.weight": torch.zeros(1), "x": _Exploit(marker)}, path)
    raw = offline / "evil_raw.pth"
    with open(raw, "wb") as f: pickle.dump({"x": _Exploit(marker)}, f)
    for p in (path, raw):
        with pytest.raises(UnsafeWeightsError, match="refusing to load"): PerceptualLoss(2, "squeeze", pretrained_path=str(p))
    assert not marker.exists()


def test_save_and_from_pretrained(tmp_path):
    loss = PerceptualLoss(2, "squeeze", pretrained=False)
    save_pretrained(loss, tmp_path / "loss")
    again = from_pretrained(tmp_path / "loss")
    x, y = rand(1, 1, 32, 32, seed=19, lo=-1), rand(1, 1, 32, 32, seed=20, lo=-1)
    assert isinstance(again, PerceptualLoss) and torch.equal(again(x, y), loss(x, y))
