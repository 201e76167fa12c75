"""Progressive distillation against the exact Gaussian denoiser, whose Euler steps are known in closed form."""

import math

import pytest
import torch
from torch import nn

import ddpm_lib as dl
from ddpm_lib.distill import distillation_target, step_grid
from ddpm_lib.steps import euler_step, heun_step
from ddpm_lib.loop import Batch

MU, S = 0.3, 0.5


class IdealStudent(nn.Module):
    """D~ of eq. (2) computed from the teacher: the student that one round of distillation aims at."""

    def __init__(self, teacher, student_steps, solver="euler"):
        super().__init__()
        self.teacher, self.sigmas, self.solver = teacher, step_grid(2 * student_steps), solver
        self.sigma_data = 0.5

    def forward(self, x, sigma):
        grid = torch.tensor(self.sigmas, dtype=torch.float64)
        k = (grid[None, :] - sigma.double()[:, None]).abs().argmin(1)  # [B]: each image's grid point
        return distillation_target(self.teacher, x, sigma, grid[k + 1].to(sigma), grid[k + 2].to(sigma),
                                   solver=self.solver)


def test_the_grid_of_2n_steps_holds_the_grid_of_n():
    for n in (1, 2, 4, 8):
        assert step_grid(2 * n)[::2] == pytest.approx(step_grid(n), rel=1e-12)
    grid = step_grid(4)
    assert grid[0] == pytest.approx(80.0) and grid[-1] == 0.0 and grid[-2] > 0.002  # sigma_min at t = 0+
    assert all(a > b for a, b in zip(grid, grid[1:]))


def test_the_target_is_the_closed_form_of_two_gaussian_euler_steps():
    # D(x; s) = mu + S^2 / (S^2 + s^2) (x - mu), so an Euler step (eq. 1) from s to s' maps
    # x - mu to g(s, s') (x - mu) with g = (S^2 + s s') / (S^2 + s^2). Two steps: g(s, m) g(m, s'');
    # eq. (2) then gives D~ = (x'' - r x) / (1 - r), r = s'' / s.
    teacher = dl.GaussianEDMDenoiser(MU, S).double()
    x = torch.randn(6, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    grid = step_grid(8)
    for k in (0, 2, 6):  # the last student step (k = 6) ends at sigma = 0
        s, m, s2 = grid[k], grid[k + 1], grid[k + 2]

        def g(a, b):
            return (S**2 + a * b) / (S**2 + a**2)

        x2 = MU + g(s, m) * g(m, s2) * (x - MU)
        expected = (x2 - s2 / s * x) / (1 - s2 / s)
        full = lambda v: torch.full((6,), v, dtype=torch.float64)  # noqa: E731
        torch.testing.assert_close(distillation_target(teacher, x, full(s), full(m), full(s2)), expected)


def test_one_round_of_halving_reproduces_two_teacher_steps():
    teacher = dl.GaussianEDMDenoiser(MU, S).double()
    noise = torch.randn(16, 1, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for n in (1, 2, 4):
        with dl.count_nfe() as counter:
            student = dl.distilled_sample(IdealStudent(teacher, n), noise, num_steps=n)
        assert counter.nfe == n  # one evaluation of the student a step
        torch.testing.assert_close(student, dl.distilled_sample(teacher, noise, num_steps=2 * n))
        # a student of Heun's steps: still one evaluation a step, where its teacher took 2 (2n) - 1
        with dl.count_nfe() as counter:
            heun = dl.distilled_sample(teacher, noise, num_steps=2 * n, solver="heun")
        assert counter.nfe == 4 * n - 1
        torch.testing.assert_close(
            dl.distilled_sample(IdealStudent(teacher, n, "heun"), noise, num_steps=n), heun)


def test_dpm_solver_2m_extrapolates_d_at_one_evaluation_a_step():
    # DPM-Solver++(2M): eq. (1) with D + (D - D_prev) / (2 r), r = h_prev / h, h = ln(s / s'). The
    # first step has no D_prev and the last ends at 0, so with 1 or 2 steps it is exactly Euler.
    teacher = dl.GaussianEDMDenoiser(MU, S).double()
    noise = torch.randn(8, 1, 2, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for n in (1, 2):
        torch.testing.assert_close(dl.distilled_sample(teacher, noise, num_steps=n, solver="dpm++2m"),
                                   dl.distilled_sample(teacher, noise, num_steps=n))
    with dl.count_nfe() as counter:
        three = dl.distilled_sample(teacher, noise, num_steps=3, solver="dpm++2m")
    assert counter.nfe == 3
    s0, s1, s2, _ = step_grid(3)  # by hand: Euler, then one extrapolated step, then D
    full = lambda v: torch.full((8,), v, dtype=torch.float64)  # noqa: E731
    D0 = teacher(80 * noise, full(s0))
    x1 = D0 + s1 / s0 * (80 * noise - D0)
    D1 = teacher(x1, full(s1))
    r = math.log(s0 / s1) / math.log(s1 / s2)
    D_eff = D1 + (D1 - D0) / (2 * r)
    x2 = D_eff + s2 / s1 * (x1 - D_eff)
    torch.testing.assert_close(three, teacher(x2, full(s2)))


def test_heun_and_dpm_solver_converge_at_second_order_and_heun_steps_image_by_image():
    # The exact ODE keeps (x - MU) / sqrt(S^2 + s^2) constant, so from sigma_max n it ends at
    # MU + S / sqrt(S^2 + 80^2) (80 n - MU) (every step but the last, which ends at sigma = 0 where
    # the slope is undefined, is Heun's; the last Euler step lands on D, exact for this teacher).
    # Heun's error shrinks with the square of the step: about 1/16 at 4x the steps; Euler's by 1/4.
    teacher = dl.GaussianEDMDenoiser(MU, S).double()
    noise = torch.randn(64, 1, 1, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact = MU + S / math.sqrt(S**2 + 80.0**2) * (80 * noise - MU)
    errors = {solver: [(dl.distilled_sample(teacher, noise, num_steps=n, solver=solver) - exact).abs().max()
                       for n in (16, 64)] for solver in ("euler", "heun", "dpm++2m")}
    for second_order in ("heun", "dpm++2m"):
        assert errors[second_order][1] / errors[second_order][0] < 0.1 < errors["euler"][1] / errors["euler"][0]
        assert errors[second_order][1] < errors["euler"][1] / 10
    # one batch whose images take different steps (as in training) == each image on its own
    x = 3 * torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    sigma, sigma_next = torch.tensor([2.0, 0.5, 10.0]), torch.tensor([1.0, 0.0, 3.0])
    together = heun_step(teacher, x, sigma, sigma_next)[0]
    for i in range(3):
        alone = heun_step(teacher, x[i:i + 1], sigma[i:i + 1], sigma_next[i:i + 1])[0]
        torch.testing.assert_close(together[i:i + 1], alone)
    torch.testing.assert_close(together[1:2], teacher(x[1:2], sigma[1:2]))  # ends at 0: lands on D


def test_distilled_sample_is_euler_on_the_ode_and_converges_at_first_order():
    # For Gaussian data each step of eq. (1) multiplies x - MU by g(s, s') = (S^2 + s s') / (S^2 + s^2),
    # so the sample is exactly MU + G (sigma_max n - MU) with G the product of the g's. The exact ODE
    # keeps (x - MU) / sqrt(S^2 + s^2) constant, so it would use G* = S / sqrt(S^2 + sigma_max^2);
    # Euler's error in G shrinks in proportion to the step (first order): a quarter at 4x the steps.
    teacher = dl.GaussianEDMDenoiser(MU, S).double()
    noise = torch.randn(64, 1, 1, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact, errors = S / math.sqrt(S**2 + 80.0**2), []
    for n in (8, 32, 128):
        grid = step_grid(n)
        G = math.prod((S**2 + a * b) / (S**2 + a**2) for a, b in zip(grid[:-1], grid[1:]))
        torch.testing.assert_close(dl.distilled_sample(teacher, noise, num_steps=n), MU + G * (80 * noise - MU))
        errors.append(abs(G - exact))
    assert errors[1] / errors[0] < 0.4 and errors[2] / errors[1] < 0.4


def test_the_loss_is_zero_for_the_ideal_student_and_trains_a_network():
    teacher = dl.GaussianEDMDenoiser(MU, S)
    loss = dl.DistillationLoss(teacher, student_steps=2)
    images = (MU + S * torch.randn(32, 1, 4, 4, generator=torch.Generator().manual_seed(3))).clamp(-1, 1)
    batch = Batch(images)
    ideal = IdealStudent(teacher, 2)
    assert loss(ideal, batch, torch.Generator().manual_seed(0)).item() < 1e-10
    torch.manual_seed(0)
    student = dl.EDMDenoiser(dl.UNet(1, 8, (1, 2)), sigma_data=0.5)
    result = dl.train(student, images=images, loss_fn=loss, steps=2, batch_size=16, progress=False)
    assert len(result.losses) == 2 and all(math.isfinite(v) for v in result.losses)
    assert "teacher_sha256" in repr(loss) and repr(loss) == repr(dl.DistillationLoss(teacher, 2))
    heun = dl.DistillationLoss(teacher, 2, teacher_solver="heun")  # resuming must not mix teachers
    assert repr(heun) != repr(loss) and heun(IdealStudent(teacher, 2, "heun"), batch).item() < 1e-10


def test_clear_errors():
    teacher = dl.GaussianEDMDenoiser(MU, S)
    with pytest.raises(ValueError, match="student_steps"):
        dl.DistillationLoss(teacher, student_steps=0)
    with pytest.raises(TypeError, match="denoiser"):
        dl.DistillationLoss(lambda x, s: x, student_steps=2)
    with pytest.raises(TypeError, match="EDMDenoiser"):
        dl.DistillationLoss(teacher, 2)(dl.UNet(1, 8, (1, 2)), Batch(torch.zeros(2, 1, 4, 4)))
    with pytest.raises(ValueError, match="noise must be"):
        dl.distilled_sample(teacher, torch.zeros(2, 4, 4), num_steps=2)
    with pytest.raises(ValueError, match="num_steps"):
        dl.distilled_sample(teacher, torch.zeros(2, 1, 4, 4), num_steps=0)
    with pytest.raises(ValueError, match="sigma_min"):
        step_grid(4, sigma_min=100.0)
    x = torch.zeros(2, 1, 2, 2)
    torch.testing.assert_close(euler_step(teacher, x, torch.ones(2), torch.zeros(2))[0],
                               teacher(x, torch.ones(2)))  # a step to sigma = 0 returns D
    with pytest.raises(ValueError, match="unknown solver 'rk4'"):
        dl.distilled_sample(teacher, torch.zeros(2, 1, 4, 4), num_steps=2, solver="rk4")
    with pytest.raises(ValueError, match="unknown solver"):
        dl.DistillationLoss(teacher, 2, teacher_solver="Heun")
