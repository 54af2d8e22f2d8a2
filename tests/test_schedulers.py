"""Noise schedules and schedulers: parity with MONAI core, golden numbers, closed forms, error paths.

The chapters nbs/10_noise_schedules.ipynb and nbs/11_schedulers.ipynb hold the same checks next to the code; this
file runs them without a notebook kernel.
"""
import math

import pytest
import torch

import monai.networks.schedulers as M
from medgen.schedules import NoiseSchedules, make_noise_schedule, unsqueeze_left, unsqueeze_right
from medgen.schedulers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                               GaussianMixtureDenoiser, PNDMScheduler, RFlowScheduler, Scheduler)

TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def maxdiff(a, b) -> float:
    "Largest |a - b| over tensors or tuples of tensors; inf if either side has a NaN."
    if isinstance(a, tuple): return max(maxdiff(u, w) for u, w in zip(a, b) if u is not None)
    d = (a.double() - b.double()).abs().max()
    return math.inf if d.isnan() else d.item()


# ------------------------------------------------------------------ schedules
@pytest.mark.parametrize("name,kw", [("linear_beta", {}), ("scaled_linear_beta", dict(beta_start=0.0015, beta_end=0.0205)),
                                     ("sigmoid_beta", dict(sig_range=4)), ("cosine", {}), ("cosine", dict(s=0.02))])
@pytest.mark.parametrize("T", [1, 17, 1000])
def test_schedules_equal_monai(name, kw, T):
    ours = make_noise_schedule(name, T, **kw)
    theirs = M.NoiseSchedules[name](num_train_timesteps=T, **kw)
    if not isinstance(theirs, tuple): theirs = (theirs, 1 - theirs, torch.cumprod(1 - theirs, 0))
    assert maxdiff(tuple(ours), theirs) <= 1e-7
    torch.testing.assert_close(ours.alphas_cumprod.double(), torch.cumprod(1 - ours.betas.double(), 0), atol=1e-6, rtol=0)


def test_schedule_closed_forms_and_registry():
    b = make_noise_schedule("linear_beta", 1000, beta_start=1e-3, beta_end=0.03).betas
    assert b[0].item() == pytest.approx(1e-3) and b[-1].item() == pytest.approx(0.03)
    assert set(NoiseSchedules.names) >= {"linear_beta", "scaled_linear_beta", "sigmoid_beta", "cosine"}
    assert NoiseSchedules.cosine is NoiseSchedules["cosine"]
    with pytest.raises(ValueError, match="schedule='nope'"): make_noise_schedule("nope")
    with pytest.raises(ValueError, match="beta_end must be a number in"): make_noise_schedule("linear_beta", 10, beta_end=2)
    with pytest.raises(TypeError, match="rejected schedule_args"): make_noise_schedule("cosine", 10, beta_start=0.1)
    assert unsqueeze_right(torch.ones(3), 5).shape == (3, 1, 1, 1, 1)
    assert unsqueeze_left(torch.ones(3), 3).shape == (1, 1, 3)


def test_user_schedule_by_name():
    @NoiseSchedules.add_def("_test_constant_beta", "constant beta")
    def _constant(num_train_timesteps, beta_start=1e-2, beta_end=1e-2):
        return torch.full((num_train_timesteps,), beta_start)
    s = DDPMScheduler(50, "_test_constant_beta", beta_start=0.05)
    torch.testing.assert_close(s.alphas_cumprod, torch.cumprod(torch.full((50,), 0.95), 0))
    with pytest.raises(ValueError, match="must return betas of shape"):
        NoiseSchedules.add("_test_bad", "bad", lambda num_train_timesteps: torch.ones(3))
        Scheduler(10, "_test_bad")


# ------------------------------------------------------------------ base class
@pytest.mark.parametrize("shape", [(3, 2, 8, 8), (3, 1, 4, 6, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_add_noise_and_velocity_equal_monai_without_mutation(shape, dtype):
    ours, ref = Scheduler(1000, "cosine"), M.DDPMScheduler(1000, "cosine")
    x, n = torch.randn(shape, generator=gen(1), dtype=dtype), torch.randn(shape, generator=gen(2), dtype=dtype)
    t = torch.tensor([0, 421, 999])
    before = ours.alphas_cumprod.clone()
    assert maxdiff(ours.add_noise(x, n, t), ref.add_noise(x, n, t)) <= TOL
    assert maxdiff(ours.get_velocity(x, n, t), ref.get_velocity(x, n, t)) <= TOL
    assert torch.equal(ours.alphas_cumprod, before) and ours.alphas_cumprod.dtype == torch.float32
    with pytest.raises(TypeError, match="integer tensor"): ours.add_noise(x, n, t.float())


# ------------------------------------------------------------------ DDPM
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large", "learned", "learned_range"])
def test_ddpm_step_equals_monai(prediction_type, variance_type):
    kw = dict(num_train_timesteps=100, prediction_type=prediction_type, variance_type=variance_type, clip_sample=True,
              clip_sample_min=-0.7, clip_sample_max=1.5)
    ours, ref = DDPMScheduler(**kw), M.DDPMScheduler(**kw)
    for t in (99, 40, 1, 0):
        x = torch.randn(2, 2, 5, 5, generator=gen(t))
        c = 4 if variance_type.startswith("learned") else 2
        out = torch.randn(2, c, 5, 5, generator=gen(t + 1))
        if variance_type == "learned": out[:, 2:] = out[:, 2:].abs() * 0.01   # a variance is >= 0
        if variance_type == "learned_range": out[:, 2:] = out[:, 2:].tanh()   # interpolation weight in [-1, 1]
        a = ours.step(out, t, x, generator=gen(5))
        b = ref.step(out, t, x, generator=gen(5))
        assert maxdiff(a, b) <= TOL


def test_ddpm_deterministic_with_generator_and_respaced():
    s = DDPMScheduler(200, clip_sample=False)
    model = GaussianMixtureDenoiser([0.5], [0.1], alphas_cumprod=s.alphas_cumprod)

    def run(seed):
        x, g = torch.randn(1, 1, 16, 16, generator=gen(0)), gen(seed)
        for t in s.timesteps: x, _ = s.step(model(x, t), t, x, generator=g)
        return x
    assert torch.equal(run(3), run(3)) and not torch.equal(run(3), run(4))
    s.set_timesteps(20)  # the respaced chain still lands on the data N(0.5, 0.1^2), a little under-dispersed
    x = run(0)
    assert abs(x.mean().item() - 0.5) < 0.03 and 0.04 < x.std().item() < 0.12
    ref = M.DDPMScheduler(200, clip_sample=False)   # MONAI's reduced-step DDPM steps t -> t-1: still noise
    ref.set_timesteps(20)
    y = torch.randn(1, 1, 16, 16, generator=gen(0))
    for t in ref.timesteps: y, _ = ref.step(model(y, t), t, y, generator=gen(0))
    assert y.std() > 0.3
    with pytest.raises(ValueError, match="num_inference_steps"): s.set_timesteps(201)
    with pytest.raises(ValueError, match="variance_type must be one of"): DDPMScheduler(variance_type="big")


# ------------------------------------------------------------------ DDIM
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("set_alpha_to_one,steps_offset", [(True, 0), (False, 1)])
def test_ddim_step_and_reversed_step_equal_monai(prediction_type, set_alpha_to_one, steps_offset):
    kw = dict(num_train_timesteps=1000, prediction_type=prediction_type, set_alpha_to_one=set_alpha_to_one,
              steps_offset=steps_offset, clip_sample=prediction_type == "sample")
    ours, ref = DDIMScheduler(**kw), M.DDIMScheduler(**kw)
    ours.set_timesteps(23), ref.set_timesteps(23)
    assert torch.equal(ours.timesteps, ref.timesteps)
    for t in ref.timesteps[[0, 11, -1]]:
        x, out = torch.randn(1, 1, 4, 4, 4, generator=gen(int(t))), torch.randn(1, 1, 4, 4, 4, generator=gen(7))
        for eta in (0.0, 1.0):
            assert maxdiff(ours.step(out, t, x, eta=eta, generator=gen(3)), ref.step(out, t, x, eta=eta, generator=gen(3))) <= TOL
        if t + 1000 // 23 < 1000:
            assert maxdiff(ours.reversed_step(out, t, x), ref.reversed_step(out, t, x)) <= TOL


def _dummy_model(x, t):
    return torch.sin(3 * x) * (0.5 + float(t) / 2000)


# 10-step DDIM loop from torch.linspace(-1.5, 1.5, 16).view(1, 1, 4, 4): the first 8 values after 5 steps and after 10,
# recorded from MONAI core 1.6.1's DDIMScheduler
GOLDEN_DDIM = {
    ("epsilon", True): ([0.50299174, 0.48409724, 0.41661021, -0.51916456, -0.85477221, -0.49626043, -0.86960465, -0.77376431],
                        [0.062717922, 0.0548505, 0.035130609, -0.070660606, -1.0, -0.059757344, -1.0, -0.9903565]),
    ("v_prediction", False): ([-1.736709, -1.4937003, -1.1342165, -0.7400434, -0.43666482, -0.2468687, -0.12712051, -0.039390244],
                              [-1.9101824, -1.8510736, -1.179822, -0.11538113, -0.029770171, -0.013135327, -0.0062316135, -0.0018804823]),
    ("sample", False): ([-1.1892182, -1.0892696, -1.0122361, -0.93861496, -0.85110354, -0.72445488, -0.51737291, -0.19409597],
                        [-0.49993569, -0.49993974, -0.49994183, -0.49994296, -0.49994254, -0.49993312, -0.49976137, -0.4997384]),
}


@pytest.mark.parametrize("prediction_type,clip", list(GOLDEN_DDIM))
def test_ddim_10_step_loop_golden(prediction_type, clip):
    s = DDIMScheduler(1000, prediction_type=prediction_type, clip_sample=clip)
    s.set_timesteps(10)
    assert s.timesteps.tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    x = torch.linspace(-1.5, 1.5, 16).view(1, 1, 4, 4)
    states = []
    for t in s.timesteps:
        x, _ = s.step(_dummy_model(x, t), t, x)
        states.append(x)
    mid, end = GOLDEN_DDIM[(prediction_type, clip)]
    torch.testing.assert_close(states[4].flatten()[:8], torch.tensor(mid), atol=TOL, rtol=0)
    torch.testing.assert_close(states[9].flatten()[:8], torch.tensor(end), atol=TOL, rtol=0)
    assert torch.equal(states[9].flatten()[8:], -states[9].flatten()[:8].flip(0))  # odd model, odd input


def test_ddim_inversion_round_trip():
    s = DDIMScheduler(1000, clip_sample=False)
    s.set_timesteps(100)
    model = GaussianMixtureDenoiser([-0.5, 0.5], [0.2, 0.2], alphas_cumprod=s.alphas_cumprod)
    x0 = model.sample_data((1, 1, 8, 8), gen(0))
    z = x0.clone()
    for t in s.timesteps.flip(0): z, _ = s.reversed_step(model(z, t), t, z)
    x = z
    for t in s.timesteps: x, _ = s.step(model(x, t), t, x)
    assert (x - x0).abs().mean() < 0.03


# ------------------------------------------------------------------ PNDM
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_pndm_plms_loop_equals_monai(prediction_type):
    ours = PNDMScheduler(1000, skip_prk_steps=True, prediction_type=prediction_type)
    ref = M.PNDMScheduler(1000, skip_prk_steps=True, prediction_type=prediction_type)
    ours.set_timesteps(15), ref.set_timesteps(15)
    assert torch.equal(ours.timesteps, ref.timesteps)
    xa = xb = torch.randn(2, 1, 5, 5, generator=gen(0))
    g = gen(1)
    for t in ours.timesteps:
        out = torch.randn(2, 1, 5, 5, generator=g)
        (xa, _), (xb, _) = ours.step(out, t, xa), ref.step(out, t, xb)
    assert maxdiff(xa, xb) <= TOL


def test_pndm_prk_grid_equals_monai_and_strides_follow_it():
    ours, ref = PNDMScheduler(1000), M.PNDMScheduler(1000)
    for n in (4, 10, 50):
        ours.set_timesteps(n), ref.set_timesteps(n)
        assert torch.equal(ours.timesteps, ref.timesteps)
    ours.set_timesteps(10)
    assert ours._delta == 100  # MONAI strides by 1000 // 19 = 52 on this grid of 100
    with pytest.raises(ValueError, match="prediction_type must be one of"): PNDMScheduler(prediction_type="sample")


# ------------------------------------------------------------------ rectified flow
@pytest.mark.parametrize("discrete", [True, False])
@pytest.mark.parametrize("transform", [False, True])
def test_rflow_equals_monai(discrete, transform):
    kw = dict(use_discrete_timesteps=discrete, use_timestep_transform=transform, base_img_size_numel=4 * 4 * 4)
    ours, ref = RFlowScheduler(**kw), M.RFlowScheduler(**kw)
    numel = torch.prod(torch.tensor((8, 8, 8)))
    ours.set_timesteps(20, input_img_size_numel=numel), ref.set_timesteps(20, input_img_size_numel=numel)
    assert maxdiff(ours.timesteps, ref.timesteps) == 0
    x, n = torch.randn(2, 1, 4, 4, 4, generator=gen(0)), torch.randn(2, 1, 4, 4, 4, generator=gen(1))
    t = torch.tensor([3, 800])
    assert maxdiff(ours.add_noise(x, n, t), ref.add_noise(x, n, t)) <= TOL
    if discrete:
        ts = ours.timesteps
        assert maxdiff(ours.step(n, ts[3], x, ts[4]), ref.step(n, ts[3], x, ts[4])) <= TOL
    for method in ("uniform", "logit-normal"):
        o, r = RFlowScheduler(**kw, sample_method=method), M.RFlowScheduler(**kw, sample_method=method)
        torch.manual_seed(0); a = o.sample_timesteps(x)
        torch.manual_seed(0); b = r.sample_timesteps(x)
        assert maxdiff(a, b) <= 1e-3 and a.dtype == b.dtype
    with pytest.raises(ValueError, match="call set_timesteps"): RFlowScheduler().step(x, 10, x)
    with pytest.raises(AttributeError): RFlowScheduler().step(x, 10, x)


# ------------------------------------------------------------------ beyond the paper
@pytest.mark.parametrize("cls", [DPMSolverMultistepScheduler, EulerDiscreteScheduler])
def test_ode_solvers_need_set_timesteps(cls):
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="call set_timesteps"): cls(100).step(x, 99, x)
    s = cls(100)
    with pytest.raises(ValueError, match="num_inference_steps"): s.set_timesteps(101)
    s.set_timesteps(5)
    with pytest.raises(ValueError, match="is not one of scheduler.timesteps"): s.step(x, 12.5, x)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_first_order_solvers_are_ddim(prediction_type):
    ref = DDIMScheduler(1000, clip_sample=False, prediction_type=prediction_type)
    dpm = DPMSolverMultistepScheduler(1000, prediction_type=prediction_type, solver_order=1, timestep_spacing="trailing")
    eul = EulerDiscreteScheduler(1000, prediction_type=prediction_type, timestep_spacing="trailing")
    dpm.set_timesteps(8), eul.set_timesteps(8)
    assert torch.equal(dpm.timesteps, eul.timesteps)
    model = GaussianMixtureDenoiser([-0.5, 0.5], [0.1, 0.3], alphas_cumprod=ref.alphas_cumprod, prediction_type=prediction_type)
    x = xa = xb = torch.randn(1, 1, 6, 6, generator=gen(0), dtype=torch.float64)
    ts = dpm.timesteps.tolist()
    for i, t in enumerate(ts):   # DDIM eq. 12 with eta = 0 between consecutive grid points
        out = model(x, torch.tensor([t]))
        a_prev = ref.alphas_cumprod[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
        x0, eps = ref._x0_eps(out, t, x)
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        xa, _ = dpm.step(model(xa, torch.tensor([t])), t, xa)
        xb, _ = eul.step(model(xb, torch.tensor([t])), t, xb)
    assert maxdiff(xa, x) <= TOL and maxdiff(xb, x) <= TOL


def test_dpm_solver_is_second_order():
    sched = Scheduler(1000)
    mu, sd = 0.5, 0.2
    gauss = GaussianMixtureDenoiser([mu], [sd], alphas_cumprod=sched.alphas_cumprod)
    post = GaussianMixtureDenoiser([mu], [sd], alphas_cumprod=sched.alphas_cumprod, prediction_type="sample")
    x_T = torch.randn(1, 1, 16, 16, generator=gen(0), dtype=torch.float64)
    a0 = sched.alphas_cumprod[0].double()

    def error(s, n):
        s.set_timesteps(n)
        a = gauss._signal_noise(s.timesteps[:1].double())[0] ** 2
        z = (x_T - a.sqrt() * mu) / (a * sd**2 + 1 - a).sqrt()
        ref = post(a0.sqrt() * mu + (a0 * sd**2 + 1 - a0).sqrt() * z, torch.tensor([0]))
        x = x_T.clone()
        for t in s.timesteps: x, _ = s.step(gauss(x, t), t, x)
        return (x - ref).abs().mean().item()
    e_dpm = [error(DPMSolverMultistepScheduler(1000), n) for n in (40, 160)]
    e_eul = [error(EulerDiscreteScheduler(1000), n) for n in (40, 160)]
    assert math.log(e_dpm[0] / e_dpm[1], 4) > 1.6
    assert 0.8 < math.log(e_eul[0] / e_eul[1], 4) < 1.2


def test_unsqueeze_keeps_arr_when_it_has_enough_axes():
    "GM's unsqueeze_left/right return arr unchanged when ndim <= arr.ndim (no error)."
    import numpy as np
    x = torch.ones(2, 3, 4)
    assert unsqueeze_right(x, 2) is x and unsqueeze_left(x, 1) is x and unsqueeze_right(x, 3) is x
    a = np.ones((2, 3))
    assert unsqueeze_left(a, 0) is a and unsqueeze_right(a, 4).shape == (2, 3, 1, 1)


@pytest.mark.parametrize("name", ["DDPM", "DDIM", "PNDM-PLMS"])
@pytest.mark.parametrize("n,ts", [(100, range(99, -1, -1)), (10, range(90, -1, -10)), (10, range(97, -1, -13))])
def test_step_accepts_any_integer_timestep_with_monai_numbers(name, n, ts):
    "GM/MONAI code such as `for t in range(...): scheduler.step(out, t, x)` works after set_timesteps, with MONAI's numbers."
    import warnings
    import medgen.schedulers as S
    pairs = {"DDPM": (M.DDPMScheduler, S.DDPMScheduler, {}), "DDIM": (M.DDIMScheduler, S.DDIMScheduler, {}),
             "PNDM-PLMS": (M.PNDMScheduler, S.PNDMScheduler, {"skip_prk_steps": True})}
    core_cls, ours_cls, kw = pairs[name]
    core, ours = core_cls(100, **kw), ours_cls(100, **kw)
    core.set_timesteps(n), ours.set_timesteps(n)
    x = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    xa = xb = x
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in ts:
            torch.manual_seed(t); xa = core.step(torch.sin(3 * xa + t / 50), t, xa)[0]
            torch.manual_seed(t); xb = ours.step(torch.sin(3 * xb + t / 50), t, xb)[0]
            assert (xa - xb).abs().max() <= 1e-5, t
    assert (xb - x).abs().max() > 0.1  # it did move


def test_off_grid_ddpm_step_warns_and_bad_timesteps_are_refused():
    s = DDPMScheduler(100)
    s.set_timesteps(10)
    x = torch.zeros(1, 1, 2, 2)
    with pytest.warns(UserWarning, match="not one of scheduler.timesteps"): s.step(x, 50, x)
    for bad in (-1, 100, 2.5):
        with pytest.raises(ValueError, match="timestep"): s.step(x, bad, x)
        with pytest.raises(ValueError, match="timestep"): DDIMScheduler(100).step(x, bad, x)
    with pytest.raises(TypeError, match="timestep"): s.step(x, "5", x)
