"medgen.metrics: closed forms, invariants, parity with MONAI core and pytorch-msssim, error paths."
import math

import pytest
import torch

import monai.metrics as monai_metrics
from medgen.metrics import (MS_SSIM_WEIGHTS, FIDMetric, MAEMetric, MMDMetric, MultiScaleSSIMMetric, PSNRMetric,
                            SSIMMetric, compute_frechet_distance, compute_mmd, compute_ms_ssim, compute_ssim_and_cs,
                            get_fid_score, ms_ssim_diversity)

pytorch_msssim = pytest.importorskip("pytorch_msssim")  # the `dev` extra


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def exact_gaussian_sample(n: int, mu: torch.Tensor, std: torch.Tensor, seed: int) -> torch.Tensor:
    "n rows whose sample mean is exactly mu and sample covariance exactly diag(std**2)."
    z = torch.randn(n, len(mu), generator=gen(seed), dtype=torch.float64)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(z.T @ z / (n - 1))).T
    return mu.double() + z * std.double()


# ---------------------------------------------------------------- FID
MU_X, S_X = torch.zeros(4), torch.tensor([1.0, 2.0, 3.0, 0.5])
MU_Y, S_Y = torch.tensor([1.0, -2.0, 3.0, 0.0]), torch.tensor([2.0, 1.0, 4.0, 0.5])
FD = ((MU_X - MU_Y) ** 2 + (S_X - S_Y) ** 2).sum().item()  # closed form for diagonal covariances: 14 + 3


def test_frechet_distance_closed_form():
    assert FD == 17.0
    got = compute_frechet_distance(MU_X, torch.diag(S_X**2), MU_Y, torch.diag(S_Y**2))
    assert got.dtype == torch.float64 and abs(got.item() - FD) < 1e-12


def test_fid_of_exact_gaussian_samples_is_the_analytic_distance():
    x, y = exact_gaussian_sample(300, MU_X, S_X, 0), exact_gaussian_sample(500, MU_Y, S_Y, 1)
    assert abs(FIDMetric()(x, y).item() - FD) < 1e-9
    assert abs(FIDMetric()(y, x).item() - FD) < 1e-9


def test_fid_of_a_set_with_itself_is_zero():
    x = torch.randn(50, 8, generator=gen(1)) ** 3
    assert abs(FIDMetric()(x, x).item()) < 1e-10
    with pytest.warns(UserWarning, match="rank-deficient"):
        assert abs(FIDMetric()(x[:5], x[:5]).item()) < 1e-10  # N <= F: the cross-Gram route


def test_fid_parity_with_monai_and_between_routes():
    x = torch.randn(300, 24, generator=gen(2)) ** 3 @ torch.randn(24, 24, generator=gen(3))
    y = torch.rand(250, 24, generator=gen(4)) @ torch.randn(24, 24, generator=gen(5)) + 0.5
    ours, theirs = get_fid_score(x, y), monai_metrics.FIDMetric()(x, y)
    assert rel(ours, theirs) < 1e-10
    with pytest.warns(UserWarning, match="y_pred has N=20 samples for F=24 features"):
        low = get_fid_score(x[:20], y[:20])
    from medgen.metrics import _mean_cov
    full = compute_frechet_distance(*_mean_cov(x[:20].double()), *_mean_cov(y[:20].double()))
    assert rel(low, full) < 1e-8


def test_fid_singular_covariance_needs_no_regularisation():
    x5, y5 = exact_gaussian_sample(200, torch.zeros(5), torch.ones(5), 2), exact_gaussian_sample(200, torch.ones(5), 2 * torch.ones(5), 3)
    x8 = torch.cat([x5, torch.zeros(200, 3, dtype=torch.float64)], 1)
    y8 = torch.cat([y5, torch.ones(200, 3, dtype=torch.float64)], 1)
    assert abs(FIDMetric()(x8, y8).item() - (5 + 5 + 3)) < 1e-9


def test_fid_errors():
    x, y = torch.randn(10, 4), torch.randn(12, 4)
    with pytest.raises(ValueError, match=r"y_pred must hold at least 2 samples \(rows\) to estimate a covariance, got 1"):
        get_fid_score(x[:1], y)
    with pytest.raises(ValueError, match="y must hold at least 2 samples"):
        get_fid_score(x, y[:1])
    with pytest.raises(ValueError, match="same number of features, got 4 and 3"):
        get_fid_score(x, y[:, :3])
    with pytest.raises(ValueError, match=r"got \(1, 10, 4\)"):
        get_fid_score(x[None], y)
    with pytest.raises(TypeError, match="y_pred must be a torch.Tensor"):
        get_fid_score(x.numpy(), y)
    with pytest.raises(ValueError, match="y must be finite"):
        get_fid_score(x, y.masked_fill(y > 1, float("inf")))


# ---------------------------------------------------------------- MMD
def test_mmd_linear_kernel_identities():
    y, p = torch.rand(16, 1, 6, 6, generator=gen(6)) + 0.1, torch.rand(12, 1, 6, 6, generator=gen(7))
    a, b = y.flatten(1).double(), p.flatten(1).double()
    sq = (a.mean(0) - b.mean(0)).square().sum()
    assert abs(MMDMetric()(y, p) - (sq - a.var(0).sum() / 16 - b.var(0).sum() / 12)) < 1e-12
    assert abs(MMDMetric(biased=True)(y, p) - sq) < 1e-12
    assert abs(compute_mmd(torch.full((3, 4), 2.0), torch.full((5, 4), 0.5)) - 4 * 1.5**2) < 1e-12
    for kernel in ("linear", "gaussian", "polynomial"):
        assert abs(MMDMetric(kernel=kernel, biased=True)(y, y)) < 1e-12


@pytest.mark.parametrize("mapping", [None, torch.square, lambda t: t.mean(dim=(2, 3, 4))])
def test_mmd_parity_with_monai(mapping):
    y, p = (torch.rand(8, 1, 5, 5, 5, generator=gen(s), dtype=torch.float64) for s in (8, 9))
    assert rel(MMDMetric(y_mapping=mapping)(y, p), monai_metrics.MMDMetric(y_mapping=mapping)(y, p)) < 1e-10
    if mapping is not None:
        assert abs(MMDMetric(y_transform=mapping, y_pred_transform=mapping)(y, p) - MMDMetric(y_mapping=mapping)(y, p)) < 1e-12


def test_mmd_errors():
    y = torch.rand(4, 3)
    with pytest.raises(ValueError, match="y_pred must hold at least 2 samples"):
        compute_mmd(y, y[:1])
    with pytest.raises(ValueError, match="same shape per sample"):
        compute_mmd(y, y[:, :2])
    with pytest.raises(ValueError, match="kernel must be one of"):
        MMDMetric(kernel="rbf")
    with pytest.raises(ValueError, match="not both"):
        MMDMetric(y_transform=abs, y_mapping=abs)


# ---------------------------------------------------------------- SSIM / MS-SSIM
def test_ssim_of_an_image_with_itself_is_one():
    for dims, shape in ((2, (2, 3, 24, 20)), (3, (2, 1, 12, 14, 16))):
        x = torch.rand(shape, generator=gen(10))
        assert torch.equal(SSIMMetric(dims, kernel_size=7)(x, x), torch.ones(2, 1))


@pytest.mark.parametrize("seed", range(3))
def test_ssim_matches_pytorch_msssim(seed):
    x, y = torch.rand(4, 2, 64, 48, generator=gen(seed)), torch.rand(4, 2, 64, 48, generator=gen(seed + 10))
    y = (x + 0.5 * y).clamp(0, 1) if seed else y
    ref = pytorch_msssim.ssim(x, y, data_range=1.0, size_average=False)
    assert (SSIMMetric(2)(x, y).flatten() - ref).abs().max() < 1e-5


def test_ms_ssim_matches_pytorch_msssim():
    x = torch.rand(2, 1, 192, 176, generator=gen(11))
    y = (x + 0.2 * torch.rand(x.shape, generator=gen(12))).clamp(0, 1)
    ref = pytorch_msssim.ms_ssim(y, x, data_range=1.0, size_average=False)
    assert (MultiScaleSSIMMetric(2)(y, x).flatten() - ref).abs().max() < 1e-5


@pytest.mark.parametrize("kernel_type", ["gaussian", "uniform"])
@pytest.mark.parametrize("dims, shape, size, sigma", [(2, (3, 2, 40, 36), 7, 1.0),
                                                      (3, (2, 2, 20, 24, 16), (5, 7, 3), (1.0, 2.0, 0.5))])
def test_ssim_parity_with_monai(kernel_type, dims, shape, size, sigma):
    p, t = torch.rand(shape, generator=gen(13)), torch.rand(shape, generator=gen(14))
    kw = dict(spatial_dims=dims, kernel_type=kernel_type, kernel_sigma=sigma, data_range=1.5, reduction="none")
    assert (SSIMMetric(kernel_size=size, **kw)(p, t) - monai_metrics.SSIMMetric(win_size=size, **kw)(p, t)).abs().max() < 1e-5


@pytest.mark.parametrize("dims, shape, kw", [
    (2, (1, 2, 181, 190), {}),
    (2, (2, 3, 61, 64), dict(kernel_type="uniform", weights=(0.2, 0.3, 0.5), kernel_size=7, data_range=2.0)),
    (3, (2, 1, 20, 24, 20), dict(kernel_size=5, kernel_sigma=1.0, weights=(0.3, 0.3, 0.4))),
    (3, (1, 2, 20, 20, 21), dict(kernel_type="uniform", kernel_size=5, weights=(0.3, 0.3, 0.4)))])
def test_ms_ssim_parity_with_monai(dims, shape, kw):
    p = torch.rand(shape, generator=gen(15))
    t = (p + 0.3 * torch.rand(shape, generator=gen(16))).clamp(0, 1)
    ours = MultiScaleSSIMMetric(dims, reduction="none", **kw)(p, t)
    theirs = monai_metrics.MultiScaleSSIMMetric(dims, reduction="none", **kw)(p, t)
    truth = MultiScaleSSIMMetric(dims, reduction="none", **kw)(p.double(), t.double())
    assert (ours - truth).abs().max() < 5e-6  # float32 vs float64
    # MONAI's float32 rounding on small 3D volumes reaches ~2e-5 (full k^3 window sums): a looser bound there
    assert (ours - theirs).abs().max() < (1e-5 if dims == 2 else 3e-5)


def test_ms_ssim_3d_size_rule():
    kw = dict(spatial_dims=3, kernel_size=5, weights=(0.3, 0.3, 0.4))
    v = torch.rand(1, 1, 20, 20, 20, generator=gen(17))
    assert abs(compute_ms_ssim(v, v, **kw).item() - 1) < 1e-6  # exactly the size the scales need: works
    with pytest.raises(ValueError, match=r"needs spatial sizes >= \(20, 20, 20\) \(kernel_size \* 2\*\*2\)"):
        compute_ms_ssim(v[..., :19], v[..., :19], **kw)
    with pytest.raises(ValueError, match=r"needs spatial sizes >= \(176, 176\)"):
        MultiScaleSSIMMetric(2)(torch.rand(1, 1, 175, 200), torch.rand(1, 1, 175, 200))
    assert len(MS_SSIM_WEIGHTS) == 5


def test_ssim_errors_and_interface():
    x = torch.rand(2, 1, 16, 16)
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3, got 1"):
        SSIMMetric(1)
    with pytest.raises(ValueError, match="kernel_type must be one of"):
        SSIMMetric(2, kernel_type="box")
    with pytest.raises(ValueError, match=r"y_pred must have 5 dimensions \(B, C, \*spatial\) for spatial_dims=3"):
        SSIMMetric(3)(x, x)
    with pytest.raises(ValueError, match="same shape"):
        compute_ssim_and_cs(x, x[:1], 2, 11, 1.5)
    with pytest.raises(ValueError, match=r"kernel_size \(11, 11\)"):
        SSIMMetric(2)(x[..., :8, :8], x[..., :8, :8])
    metric = SSIMMetric(2, kernel_size=5, reduction="mean", get_not_nans=True)
    assert isinstance(metric, monai_metrics.CumulativeIterationMetric)
    metric(x, x)
    metric([x[0], x[1]], [x[0], x[1].flip(-1)])  # a list of channel-first images
    value, not_nans = metric.aggregate()
    assert value.shape == (1,) and not_nans.item() == 4 and value.item() < 1  # 4 images stored
    metric.reset()
    assert metric.get_buffer() is None
    assert compute_ssim_and_cs(x.double(), x.double(), 2, 5, 1.5)[0].dtype == torch.float64


# ---------------------------------------------------------------- PSNR / MAE
def test_psnr_mae_closed_forms_and_parity():
    y = torch.rand(3, 2, 8, 8, generator=gen(18))
    assert torch.allclose(MAEMetric()(y + 0.25, y), torch.full((3, 1), 0.25), atol=1e-6)
    assert torch.allclose(PSNRMetric(1.0)(y + 0.1, y), torch.full((3, 1), 20.0), atol=1e-4)
    assert torch.isinf(PSNRMetric(1.0)(y, y)).all()
    for shape in ((3, 2, 8, 8), (2, 1, 6, 6, 6)):
        p, t = torch.rand(shape, generator=gen(19)), torch.rand(shape, generator=gen(20))
        assert (PSNRMetric(2.0, reduction="none")(p, t) - monai_metrics.PSNRMetric(2.0, reduction="none")(p, t)).abs().max() < 1e-5
        assert (MAEMetric(reduction="none")(p, t) - monai_metrics.MAEMetric(reduction="none")(p, t)).abs().max() < 1e-6
    with pytest.raises(ValueError, match="max_val must be a number > 0, got -1"):
        PSNRMetric(-1)


# ---------------------------------------------------------------- diversity
def test_ms_ssim_diversity():
    imgs = torch.rand(4, 1, 20, 20, generator=gen(21))
    kw = dict(kernel_size=5, weights=(0.3, 0.3, 0.4))
    assert abs(ms_ssim_diversity(imgs[:1].expand(3, -1, -1, -1), 2, **kw).item() - 1) < 1e-6
    i, j = torch.triu_indices(4, 4, 1)
    pairs = MultiScaleSSIMMetric(2, reduction="none", **kw)(imgs[i], imgs[j])
    assert abs(ms_ssim_diversity(imgs, 2, **kw) - pairs.mean()) < 1e-6
    a = ms_ssim_diversity(imgs, 2, num_pairs=5, generator=gen(22), **kw)
    assert torch.equal(a, ms_ssim_diversity(imgs, 2, num_pairs=5, generator=gen(22), batch_size=2, **kw))
    with pytest.raises(ValueError, match="images must be a tensor"):
        ms_ssim_diversity(imgs[:1], 2, **kw)
    with pytest.raises(ValueError, match="num_pairs must be an int >= 1 or None, got 0"):
        ms_ssim_diversity(imgs, 2, num_pairs=0, **kw)
    assert math.isfinite(ms_ssim_diversity(torch.rand(3, 1, 20, 20, 20, generator=gen(23)), 3, **kw))


def _with_nan(x: torch.Tensor, value: float = float("nan")) -> torch.Tensor:
    x = x.clone()
    x.view(-1)[3] = value
    return x


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("name,call", [
    ("ssim", lambda p, t: SSIMMetric(2, kernel_size=5)(p, t)),
    ("ms_ssim", lambda p, t: MultiScaleSSIMMetric(2, kernel_size=3, weights=(0.5, 0.5))(p, t)),
    ("ssim_and_cs", lambda p, t: compute_ssim_and_cs(p, t, 2, 5, 1.5)[0]),
    ("psnr", lambda p, t: PSNRMetric(1.0)(p, t)),
    ("mae", lambda p, t: MAEMetric()(p, t)),
    ("mmd", lambda p, t: MMDMetric()(t, p)),
    ("mmd_gaussian", lambda p, t: compute_mmd(t, p, kernel="gaussian"))])
def test_non_finite_inputs_are_refused_like_fid(name, call, bad):
    "NaN/Inf in an input would make the score NaN silently (MONAI, GM); each metric refuses it, naming the argument."
    y = torch.rand(4, 1, 16, 16, generator=gen(0))
    p = torch.rand(4, 1, 16, 16, generator=gen(1))
    assert torch.isfinite(torch.as_tensor(call(p, y))).all()
    with pytest.raises(ValueError, match=r"y_pred must hold finite values, got 1 NaN or Inf of 1024"):
        call(_with_nan(p, bad), y)
    with pytest.raises(ValueError, match=r"^y must hold finite values"):
        call(p, _with_nan(y, bad))


@pytest.mark.parametrize("make", [lambda: SSIMMetric(2, kernel_size=4), lambda: SSIMMetric(2, win_size=10),
                                  lambda: SSIMMetric(3, kernel_size=(5, 4, 5)),
                                  lambda: MultiScaleSSIMMetric(3, kernel_size=4),
                                  lambda: compute_ssim_and_cs(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), 2, 6, 1.5)])
def test_even_ssim_kernel_size_is_refused(make):
    "An even window has no centre pixel: ValueError naming kernel_size and the value given."
    with pytest.raises(ValueError, match=r"kernel_size must be odd \(a window centred on a pixel\), got"):
        make()
