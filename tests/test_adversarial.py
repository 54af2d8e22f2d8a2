"medgen.adversarial against MONAI core on the same weights (float32, max abs diff <= 1e-5), closed forms, GM errors."
import inspect
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from monai.losses import PatchAdversarialLoss as CoreLoss
from monai.networks.nets import MultiScalePatchDiscriminator as CoreMultiScale
from monai.networks.nets import PatchDiscriminator as CorePatch
from torch import nn

from medgen.adversarial import (ADVERSARIAL_CRITERIA, MultiScalePatchDiscriminator, PatchAdversarialLoss,
                                PatchDiscriminator, patch_receptive_field)
from medgen.hub import from_pretrained, save_pretrained

TOL = 1e-5
PATCH_CONFIGS = {
    "default": {},
    "k_last-1-bias-2out": dict(last_conv_kernel_size=1, bias=True, out_channels=2),
    "prelu-instance-k3": dict(activation="PRELU", norm="INSTANCE", kernel_size=3),
    "group-2layers-dropout": dict(norm=("GROUP", {"num_groups": 2}), num_layers_d=2, dropout=0.2),
    "elu-batch-1layer": dict(activation=("ELU", {"alpha": 0.5}), num_layers_d=1, padding=2),
}


def randomize(m: nn.Module, seed: int = 0, std: float = 0.2) -> nn.Module:
    "Seeded parameters and BatchNorm running statistics."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters(): p.copy_(torch.randn(p.shape, generator=g) * std)
        for name, b in m.named_buffers():
            if name.endswith("running_mean"): b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            if name.endswith("running_var"): b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return m


def max_diff(a, b) -> float:
    if isinstance(a, (list, tuple)): return max(max_diff(x, y) for x, y in zip(a, b, strict=True))
    return (a.float() - b.float()).abs().max().item()


def compare(core: nn.Module, ours: nn.Module, x: torch.Tensor) -> float:
    "Strict load of core's weights, then outputs in eval and train mode (dropout off), and the updated buffers."
    ours.load_state_dict(core.state_dict())
    assert list(ours.state_dict()) == list(core.state_dict())
    diffs = []
    for train in (False, True):
        core.train(train); ours.train(train)
        for m in (*core.modules(), *ours.modules()):
            if isinstance(m, nn.Dropout): m.eval()  # same weights, different dropout masks otherwise
        with torch.no_grad(): diffs.append(max_diff(core(x), ours(x)))
    diffs += [max_diff(a, b) for a, b in zip(core.buffers(), ours.buffers(), strict=True)]
    return max(diffs)


def x_for(sd: int, channels: int = 2, batch: int = 3, size2d: int = 32, size3d: int = 24, seed: int = 2):
    return torch.randn(batch, channels, *[size2d if sd == 2 else size3d] * sd, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- PatchDiscriminator
@pytest.mark.parametrize("sd", [2, 3])
@pytest.mark.parametrize("name", list(PATCH_CONFIGS))
def test_patch_discriminator_parity(sd, name):
    kw = PATCH_CONFIGS[name]
    core = randomize(CorePatch(spatial_dims=sd, channels=4, in_channels=2, **kw))
    assert compare(core, PatchDiscriminator(sd, 4, 2, **kw), x_for(sd)) <= TOL


def test_patch_discriminator_monai_core_keywords_and_1d():
    core = randomize(CorePatch(spatial_dims=1, channels=4, in_channels=1, num_layers_d=2))
    ours = PatchDiscriminator(spatial_dims=1, channels=4, in_channels=1, num_layers_d=2)
    assert ours.num_channels == ours.channels == 4
    assert compare(core, ours, torch.randn(3, 1, 40)) <= TOL


def test_patch_discriminator_structure_and_shapes():
    d = PatchDiscriminator(2, 8, 1)
    names = [n for n, _ in d.named_children()]
    assert names == ["initial_conv", "0", "1", "2", "final_conv"]
    assert isinstance(d, nn.Sequential)
    outs = d(torch.randn(2, 1, 64, 64))
    assert [tuple(o.shape[1:]) for o in outs] == [(8, 32, 32), (16, 16, 16), (32, 8, 8), (64, 7, 7), (1, 6, 6)]
    assert d.initial_conv.conv.bias is not None and d[1].conv.bias is None and d.final_conv.conv.bias is not None
    assert not hasattr(d.final_conv, "adn") and not hasattr(d.initial_conv.adn, "N")


def test_gm_checkpoint_keys_are_monai_core_keys():
    "GM and MONAI core build both discriminators from MONAI's Convolution blocks: one key layout, loaded as is."
    for sd in (2, 3):
        core = CorePatch(spatial_dims=sd, channels=4, in_channels=1, activation="PRELU")
        assert list(PatchDiscriminator(sd, 4, 1, activation="PRELU").state_dict()) == list(core.state_dict())
        assert "initial_conv.adn.A.weight" in core.state_dict() and "0.adn.N.running_mean" in core.state_dict()


def test_initialise_weights_statistics():
    "GM's init: conv weights N(0, 0.02^2), BatchNorm weights N(1, 0.02^2) and biases 0; conv biases untouched."
    d = PatchDiscriminator(3, 16, 4, num_layers_d=3)
    g = torch.Generator().manual_seed(0)
    d.apply(lambda m: d.initialise_weights(m, generator=g))
    w = torch.cat([m.weight.flatten() for m in d.modules() if isinstance(m, nn.Conv3d)])
    assert w.numel() > 100_000
    assert abs(w.mean().item()) < 5e-4 and abs(w.std().item() - 0.02) < 2e-4
    bn = [m for m in d.modules() if isinstance(m, nn.BatchNorm3d)]
    bw = torch.cat([m.weight for m in bn])
    assert abs(bw.mean().item() - 1) < 0.01 and abs(bw.std().item() - 0.02) < 0.006
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in bn)
    # PyTorch's default conv bias, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as in GM (MONAI core's normal_init zeroes it)
    b = d.initial_conv.conv.bias
    assert b.abs().max() <= 1 / math.sqrt(4 * 4 ** 3) and b.abs().sum() > 0
    g = torch.Generator().manual_seed(0)
    e = PatchDiscriminator(3, 16, 4, num_layers_d=3)
    e.apply(lambda m: e.initialise_weights(m, generator=g))
    assert all(torch.equal(p, q) for p, q in zip(d.parameters(), e.parameters()) if p.ndim > 1)
    # the constructor applies it too (global RNG)
    c = PatchDiscriminator(2, 64, 4)
    wc = torch.cat([m.weight.flatten() for m in c.modules() if isinstance(m, nn.Conv2d)])
    assert abs(wc.std().item() - 0.02) < 5e-4


# ---------------------------------------------------------------- receptive field
@pytest.mark.parametrize("n,k,k_last", [(1, 4, None), (2, 4, None), (3, 4, None), (3, 4, 1), (2, 3, 3), (2, 5, 1)])
def test_receptive_field_closed_form_and_gradient_probe(n, k, k_last):
    kl = k if k_last is None else k_last
    r = patch_receptive_field(n, k, k_last)
    assert r == 1 + (k - 1) * (2 ** (n + 1) - 1) + (kl - 1) * 2 ** n
    d = PatchDiscriminator(2, 2, 1, num_layers_d=n, kernel_size=k, padding=(k - 1) // 2, last_conv_kernel_size=k_last).eval()
    x = torch.randn(1, 1, 4 * r, 4 * r, requires_grad=True)
    logits = d(x)[-1]
    logits[0, 0, logits.shape[2] // 2, logits.shape[3] // 2].backward()
    nz = x.grad[0, 0].ne(0)
    assert int(nz.any(1).sum()) == r and int(nz.any(0).sum()) == r


def test_receptive_field_default_is_pix2pix_70():
    assert patch_receptive_field() == 70
    assert patch_receptive_field(3, 4, 1) == 46


# ---------------------------------------------------------------- MultiScalePatchDiscriminator
@pytest.mark.parametrize("sd", [2, 3])
@pytest.mark.parametrize("kw", [{}, dict(last_conv_kernel_size=3, norm="INSTANCE", out_channels=2)], ids=["default", "k3-inst"])
def test_multiscale_parity(sd, kw):
    core = randomize(CoreMultiScale(num_d=2, num_layers_d=1, spatial_dims=sd, channels=4, in_channels=1,
                                    minimum_size_im=16, **kw))
    ours = MultiScalePatchDiscriminator(2, 1, sd, 4, 1, minimum_size_im=16, **kw)
    assert ours.num_layers_d == [1, 2]
    assert compare(core, ours, x_for(sd, channels=1, size3d=16)) <= TOL


def test_multiscale_outputs():
    m = MultiScalePatchDiscriminator(3, 1, 2, 4, 1, minimum_size_im=64)
    logits, feats = m(torch.randn(2, 1, 64, 64))
    assert [tuple(lg.shape) for lg in logits] == [(2, 1, 31, 31), (2, 1, 15, 15), (2, 1, 7, 7)]
    assert [len(f) for f in feats] == [2, 3, 4]
    for i, d in enumerate(m):  # each scale is a PatchDiscriminator with n(i + 1) layers, on the same input
        assert isinstance(d, PatchDiscriminator) and d.num_layers_d == i + 1


def test_multiscale_pooling():
    "GM 2024: with pooling_method, discriminator i sees the input pooled i times (stride 2) and all have n layers."
    m = MultiScalePatchDiscriminator(3, 2, 2, 4, 1, pooling_method="avg", minimum_size_im=64).eval()
    assert m.num_layers_d == [2, 2, 2]
    x = torch.randn(2, 1, 64, 64)
    logits, _ = m(x)
    pool = nn.AvgPool2d(4, stride=2, padding=1)
    with torch.no_grad():
        assert torch.equal(logits[2], m.discriminator_2[2](pool(pool(x)))[-1])
        assert torch.equal(logits[0], m.discriminator_0(x)[-1])
    assert "discriminator_1.1.initial_conv.conv.weight" in m.state_dict()
    mx = MultiScalePatchDiscriminator(2, [1, 2], 3, 4, 1, pooling_method="MAX")
    assert isinstance(mx.discriminator_1[0], nn.MaxPool3d) and mx.num_layers_d == [1, 2]


class _GMPooledMultiScale(nn.Sequential):
    "GM's (2024) pooled MultiScalePatchDiscriminator composed of MONAI core parts: scale i = (pool) * i + PatchDiscriminator."
    def __init__(self, num_d, num_layers_d, spatial_dims, num_channels, in_channels, pooling_method, kernel_size=4,
                 **kw):
        from monai.networks.layers import get_pool_layer
        super().__init__()
        padding = tuple([int((kernel_size - 1) / 2)] * spatial_dims)
        pool = get_pool_layer((pooling_method, {"kernel_size": kernel_size, "stride": 2, "padding": padding}),
                              spatial_dims=spatial_dims)
        for i in range(num_d):
            d = CorePatch(spatial_dims=spatial_dims, channels=num_channels, in_channels=in_channels,
                          num_layers_d=num_layers_d, kernel_size=kernel_size, padding=padding, **kw)
            self.add_module(f"discriminator_{i}", d if i == 0 else nn.Sequential(*[pool] * i, d))

    def forward(self, x):
        outs = [d(x) for d in self.children()]
        return [o[-1] for o in outs], [o[:-1] for o in outs]


@pytest.mark.parametrize("sd,method", [(2, "avg"), (2, "max"), (3, "avg")])
def test_multiscale_pooling_parity_with_gm_layout(sd, method):
    "Same keys as GM's pooled layout (discriminator_i.i.*), same outputs on the same weights, eval and train."
    ref = randomize(_GMPooledMultiScale(3, 1, sd, 4, 1, method, last_conv_kernel_size=1))
    ours = MultiScalePatchDiscriminator(3, 1, sd, 4, 1, pooling_method=method, minimum_size_im=16)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 1, *[16] * sd)
    for train in (False, True):
        ref.train(train); ours.train(train)
        assert max_diff(ours(x), ref(x)) <= TOL


def test_multiscale_errors_match_gm():
    with pytest.raises(AssertionError, match="too small to take in up to 2 discriminators with num_layers = 9"):
        MultiScalePatchDiscriminator(3, 3, 2, 8, 1, minimum_size_im=128)
    with pytest.raises(AssertionError):  # GM / MONAI raise the same type
        CoreMultiScale(3, 3, 2, 8, 1, minimum_size_im=128)
    MultiScalePatchDiscriminator(3, 3, 2, 8, 1, minimum_size_im=512)  # 512 / 2^9 = 1: allowed
    with pytest.raises(AssertionError, match="num_d=2"):
        MultiScalePatchDiscriminator(2, [2, 3, 4], 2, 8, 1)
    with pytest.raises(ValueError, match="pooling_method=1"):
        MultiScalePatchDiscriminator(2, 2, 2, 8, 1, 1)  # MONAI core's positional out_channels
    with pytest.raises(ValueError, match="num_d=0"):
        MultiScalePatchDiscriminator(0, 2, 2, 8, 1)


# ---------------------------------------------------------------- errors and signatures
def test_discriminator_errors():
    with pytest.raises(ValueError, match="spatial_dims=4"): PatchDiscriminator(4, 4, 1)
    with pytest.raises(ValueError, match="num_channels=0"): PatchDiscriminator(2, 0, 1)
    with pytest.raises(ValueError, match="in_channels=None"): PatchDiscriminator(2, 4, None)
    with pytest.raises(ValueError, match="num_layers_d=-1"): PatchDiscriminator(2, 4, 1, num_layers_d=-1)
    with pytest.raises(ValueError, match="norm='BATCHY'"): PatchDiscriminator(2, 4, 1, norm="BATCHY")
    with pytest.raises(ValueError, match="activation='SWISHY'"): PatchDiscriminator(2, 4, 1, activation="SWISHY")
    with pytest.raises(TypeError, match="name, "): PatchDiscriminator(2, 4, 1, norm=("BATCH", 3))
    with pytest.raises(ValueError, match="num_channels=4 and channels=8"): PatchDiscriminator(2, 4, 1, channels=8)
    with pytest.raises(ValueError, match="num_channels=4 and channels=8"):
        MultiScalePatchDiscriminator(2, 1, 2, num_channels=4, in_channels=1, channels=8)
    with pytest.raises(TypeError): PatchDiscriminator(2, in_channels=1)  # num_channels is required, as in GM


def test_signatures_are_gm():
    p = inspect.signature(PatchDiscriminator.__init__).parameters
    assert list(p)[1:13] == ["spatial_dims", "num_channels", "in_channels", "out_channels", "num_layers_d", "kernel_size",
                             "activation", "norm", "bias", "padding", "dropout", "last_conv_kernel_size"]
    assert p["num_channels"].default is inspect.Parameter.empty and p["channels"].kind is inspect.Parameter.KEYWORD_ONLY
    assert p["activation"].default == ("LEAKYRELU", {"negative_slope": 0.2}) and p["norm"].default == "BATCH"
    q = inspect.signature(MultiScalePatchDiscriminator.__init__).parameters
    assert list(q)[1:15] == ["num_d", "num_layers_d", "spatial_dims", "num_channels", "in_channels", "pooling_method",
                             "out_channels", "kernel_size", "activation", "norm", "bias", "dropout", "minimum_size_im",
                             "last_conv_kernel_size"]
    assert q["minimum_size_im"].default == 256 and q["last_conv_kernel_size"].default == 1
    r = inspect.signature(PatchAdversarialLoss.__init__).parameters
    assert [(k, v.default) for k, v in list(r.items())[1:]] == [("reduction", "mean"), ("criterion", "least_squares"),
                                                                ("no_activation_leastsq", False)]


# ---------------------------------------------------------------- PatchAdversarialLoss
@pytest.mark.parametrize("criterion", ADVERSARIAL_CRITERIA)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("multi", [False, True], ids=["single", "list"])
@pytest.mark.parametrize("sd", [2, 3])
def test_loss_parity(criterion, reduction, multi, sd):
    "Values and gradients equal MONAI core's for every side and target."
    g = torch.Generator().manual_seed(4)
    maps = [torch.randn(2, 1, *[5] * sd, generator=g) * 3 for _ in range(2 if multi else 1)]
    for target_is_real in (True, False):
        for for_discriminator in (True, False):
            results = []
            for cls in (CoreLoss, PatchAdversarialLoss):
                xs = [m.clone().requires_grad_(True) for m in maps]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out = cls(reduction=reduction, criterion=criterion)(xs if multi else xs[0], target_is_real,
                                                                       for_discriminator)
                (sum(o.sum() for o in out) if isinstance(out, list) else out).backward()
                results.append((out if isinstance(out, list) else [out], [x.grad for x in xs]))
            (vc, gc), (vo, go) = results
            assert len(vc) == len(vo) and all(a.shape == b.shape for a, b in zip(vc, vo))
            assert max_diff(vc, vo) <= TOL and max_diff(gc, go) <= TOL


def test_loss_parity_no_activation_leastsq():
    x = torch.randn(2, 1, 6, 6) * 2
    for real in (True, False):
        a = CoreLoss(criterion="least_squares", no_activation_leastsq=True)(x, real, True)
        b = PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)(x, real, True)
        assert abs(a.item() - b.item()) <= TOL
        assert abs(b.item() - ((x - float(real)) ** 2).mean().item()) <= TOL


def test_loss_closed_forms():
    x = torch.tensor([[[[0.7, -1.3, 2.0]]]])
    s, t, lk = torch.sigmoid(x), torch.tanh(x), F.leaky_relu(x, 0.05)
    close = lambda a, b: abs(a.item() - b.item()) <= 1e-6  # noqa: E731
    assert close(PatchAdversarialLoss(criterion="bce")(x, True, True), -torch.log(s).mean())
    assert close(PatchAdversarialLoss(criterion="bce")(x, False, True), -torch.log(1 - s).mean())
    assert close(PatchAdversarialLoss(criterion="bce")(x, True, True),
                 F.binary_cross_entropy_with_logits(x, torch.ones_like(x)))  # = BCE with logits, unsaturated
    assert close(PatchAdversarialLoss()(x, True, True), ((lk - 1) ** 2).mean())
    assert close(PatchAdversarialLoss()(x, False, True), (lk ** 2).mean())
    assert close(PatchAdversarialLoss(criterion="hinge")(x, True, True), (1 - t).mean())   # tanh < 1: hinge always on
    assert close(PatchAdversarialLoss(criterion="hinge")(x, False, True), (1 + t).mean())
    assert close(PatchAdversarialLoss(criterion="hinge")(x, True, False), (1 - t).mean())
    # GM's BCE is sigmoid + BCELoss: where float32's sigmoid rounds to 1, BCELoss's log clamp (-100) takes over
    big = torch.full((1, 1, 2, 2), 40.0, requires_grad=True)
    bce = PatchAdversarialLoss(criterion="bce")(big, False, True)
    bce.backward()
    assert bce.item() == 100.0 and big.grad.abs().max() == 0  # BCE with logits: 40, gradient 1/4 per element
    # perfect discriminator outputs: zero loss for least squares
    assert PatchAdversarialLoss(no_activation_leastsq=True)(torch.ones(1, 1, 3, 3), True, True).item() == 0


def test_loss_generator_side_and_reductions():
    x = torch.randn(2, 1, 4, 4)
    loss = PatchAdversarialLoss(criterion="least_squares")
    with pytest.warns(UserWarning, match="target_is_real"):
        assert torch.equal(loss(x, False, False), loss(x, True, False))  # the generator always aims at "real"
    assert torch.equal(loss(x, True, False), loss(x, True, True))
    none = PatchAdversarialLoss(reduction="none")([x, 2 * x], True, True)
    assert isinstance(none, list) and [v.shape for v in none] == [x.shape] * 2
    assert torch.allclose(PatchAdversarialLoss(reduction="mean")([x, 2 * x], True, True), (none[0].mean() + none[1].mean()) / 2)
    assert torch.allclose(PatchAdversarialLoss(reduction="sum")([x, 2 * x], True, True), none[0].sum() + none[1].sum())
    assert isinstance(PatchAdversarialLoss(reduction="none")(x, True, True), list)
    hinge = PatchAdversarialLoss(criterion="hinge")
    assert torch.equal(hinge.get_target_tensor(x, False), torch.full_like(x, -1.0))
    assert torch.equal(hinge.get_zero_tensor(x), torch.zeros_like(x)) and not hinge.get_zero_tensor(x).requires_grad
    assert hinge.forward_single(torch.tensor([2.0, 0.5]), torch.zeros(2)).item() == 0.25  # -mean(min(x - 1, 0))


def test_loss_errors_and_options():
    with pytest.raises(ValueError, match="Must be one in: bce, hinge, least_squares"):
        PatchAdversarialLoss(criterion="wasserstein")
    with pytest.raises(ValueError, match="Must be one in"):
        CoreLoss(criterion="wasserstein")  # MONAI core raises the same type
    with pytest.raises(ValueError, match="reduction='max'"):
        PatchAdversarialLoss(reduction="max")
    assert PatchAdversarialLoss(criterion="BCE").criterion == "bce"
    from monai.utils import LossReduction
    assert PatchAdversarialLoss(reduction=LossReduction.SUM).reduction == "sum"
    assert PatchAdversarialLoss(no_activation_leastsq=True).activation is None
    assert isinstance(PatchAdversarialLoss(criterion="hinge").activation, nn.Tanh)


def test_loss_on_multiscale_discriminator_and_training_step():
    "The loss takes a multi-scale discriminator's list; gradients reach every scale."
    m = MultiScalePatchDiscriminator(2, 1, 2, 4, 1, minimum_size_im=16)
    logits, _ = m(torch.randn(2, 1, 16, 16))
    PatchAdversarialLoss()(logits, True, True).backward()
    assert all(d.initial_conv.conv.weight.grad.abs().sum() > 0 for d in m)


class _TinyAE(nn.Module):
    "A one-convolution 'autoencoder' with GM's (recon, z_mu, z_sigma) output, for AutoencoderStep tests."
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x):
        return self.conv(x), torch.zeros(x.shape[0], 2), torch.ones(x.shape[0], 2)


def test_autoencoder_step_accepts_patch_adversarial_loss(tmp_path):
    "medgen.training.AutoencoderStep calls adv_loss(logits, target_is_real, for_discriminator): GM's loss fits."
    from medgen.training import AutoencoderStep, TrainConfig, Trainer

    ae, disc = _TinyAE(), PatchDiscriminator(2, 4, 1, num_layers_d=1)
    step = AutoencoderStep(discriminator="disc", adv_loss=PatchAdversarialLoss(criterion="hinge"))
    data = [{"image": torch.rand(1, 16, 16)} for _ in range(4)]
    trainer = Trainer(step, {"autoencoder": ae, "disc": disc},
                      {"autoencoder": torch.optim.SGD(ae.parameters(), lr=1e-3), "disc": torch.optim.SGD(disc.parameters(), lr=1e-3)},
                      data, tmp_path, TrainConfig(max_steps=2, batch_size=2, progress=False, tensorboard=False))
    history = trainer.fit()
    assert all(math.isfinite(r["adv"]) and math.isfinite(r["disc"]) for r in history)


@pytest.mark.parametrize("adv_loss", ["default", "patch"])
def test_autoencoder_step_with_a_multiscale_critic(tmp_path, adv_loss):
    "A MultiScalePatchDiscriminator returns (logits, features): the step's adversarial terms use every scale's logits."
    from medgen.training import AutoencoderStep, TrainConfig, Trainer, _logits, least_squares_adversarial

    disc = MultiScalePatchDiscriminator(2, 1, 2, 4, 1, minimum_size_im=16)
    x = torch.rand(2, 1, 16, 16)
    logits = _logits(disc(x))
    assert isinstance(logits, list) and len(logits) == 2 and all(isinstance(t, torch.Tensor) for t in logits)
    want = sum((t - 1).pow(2).mean() for t in logits) / 2  # LSGAN against "real", averaged over the scales
    assert torch.allclose(least_squares_adversarial(logits, True), want)

    ae = _TinyAE()
    kw = {} if adv_loss == "default" else {"adv_loss": PatchAdversarialLoss(criterion="least_squares")}
    step = AutoencoderStep(discriminator="disc", **kw)
    data = [{"image": torch.rand(1, 16, 16)} for _ in range(4)]
    trainer = Trainer(step, {"autoencoder": ae, "disc": disc},
                      {"autoencoder": torch.optim.SGD(ae.parameters(), lr=1e-3), "disc": torch.optim.SGD(disc.parameters(), lr=1e-3)},
                      data, tmp_path, TrainConfig(max_steps=2, batch_size=2, progress=False, tensorboard=False))
    history = trainer.fit()
    assert all(math.isfinite(r["adv"]) and math.isfinite(r["disc"]) and r["disc"] > 0 for r in history)


# ---------------------------------------------------------------- hub
def test_hub_round_trip(tmp_path):
    models = [PatchDiscriminator(3, channels=4, in_channels=2, num_layers_d=2, norm="INSTANCE", padding=(1, 1, 1)),
              randomize(MultiScalePatchDiscriminator(2, 1, 2, 4, 1, pooling_method="avg", minimum_size_im=16)),
              randomize(MultiScalePatchDiscriminator(2, [1, 2], 2, num_channels=4, in_channels=1, minimum_size_im=16))]
    for i, m in enumerate(models):
        m.eval()
        back = from_pretrained(save_pretrained(m, tmp_path / str(i))).eval()  # class from the config's allow-list
        assert type(back) is type(m) and list(back.state_dict()) == list(m.state_dict())
        x = torch.randn(1, m.in_channels, *[16] * m.spatial_dims)
        with torch.no_grad(): assert max_diff(m(x), back(x)) == 0


def test_discriminators_script_with_torchscript():
    "MONAI bundles deploy through TorchScript: the scripted discriminators give the eager outputs."
    import warnings
    from medgen import MultiScalePatchDiscriminator, PatchDiscriminator
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 16, 16, generator=g)
    for net in (PatchDiscriminator(2, num_channels=4, in_channels=1, num_layers_d=2).eval(),
                MultiScalePatchDiscriminator(2, 1, 2, num_channels=4, in_channels=1, minimum_size_im=16).eval()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.script(net)
        with torch.no_grad():
            eager, ts = net(x), scripted(x)
        flat = lambda o: [o] if isinstance(o, torch.Tensor) else [t for i in o for t in flat(i)]  # noqa: E731
        assert len(flat(eager)) == len(flat(ts)) and all(torch.equal(a, b) for a, b in zip(flat(eager), flat(ts)))
