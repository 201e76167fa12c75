from unittest import mock

import pytest
import torch
from toy_data import squares as tiny_images

from ddpm_lib import UNet, cosine_schedule, ddim_sample, load_checkpoint, load_model, train
from ddpm_lib.train import learning_rate


def tiny_unet(seed=0):
    torch.manual_seed(seed)
    return UNet(in_channels=1, base_dim=8, dim_mults=(1, 2))


SCHEDULE = cosine_schedule(T=100)


def test_training_drives_the_loss_well_below_its_start():
    # An untrained eps-predictor outputs values near 0, so its loss starts near E[eps^2] = 1.
    losses, ema = train(tiny_unet(), SCHEDULE, tiny_images(), steps=100, batch_size=32, lr=3e-3,
                        device="cpu", progress=False)
    assert len(losses) == 100
    start, end = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert start > 0.5
    assert end < 0.5 * start
    assert not ema.training and not any(p.requires_grad for p in ema.parameters())
    x = ddim_sample(ema, SCHEDULE, torch.randn(2, 1, 8, 8), num_steps=5)
    assert x.shape == (2, 1, 8, 8)


def test_resuming_from_a_checkpoint_continues_exactly(tmp_path):
    kwargs = dict(batch_size=8, lr=1e-3, device="cpu", seed=3, progress=False, log_every=2)
    # One uninterrupted run of 12 steps: 32 images in batches of 8 make 4 batches an epoch, so 3 epochs.
    model_a = tiny_unet()
    losses_a, ema_a = train(model_a, SCHEDULE, tiny_images(), steps=12, **kwargs)
    # The same run stopped after 5 steps (mid-epoch) and resumed from the checkpoint in a new model.
    path = tmp_path / "run.pt"
    train(tiny_unet(), SCHEDULE, tiny_images(), steps=5, checkpoint=path, **kwargs)
    assert load_checkpoint(path)["step"] == 5
    model_b = tiny_unet(seed=99)  # different initial weights: everything must come from the file
    losses_b, ema_b = train(model_b, SCHEDULE, tiny_images(), steps=12, checkpoint=path, **kwargs)

    assert losses_b == pytest.approx(losses_a, rel=1e-6, abs=1e-7)
    for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for a, b in zip(ema_a.state_dict().values(), ema_b.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # The checkpoint rebuilds the EMA network on its own, for the sampling chapter.
    restored = load_model(path)
    for a, b in zip(ema_a.state_dict().values(), restored.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_a_checkpoint_from_another_model_or_run_is_refused(tmp_path):
    path = tmp_path / "run.pt"
    train(tiny_unet(), SCHEDULE, tiny_images(), steps=2, batch_size=8, device="cpu", checkpoint=path, progress=False)
    other = UNet(in_channels=1, base_dim=16, dim_mults=(1, 2))
    with pytest.raises(ValueError, match="different model"):
        train(other, SCHEDULE, tiny_images(), steps=4, batch_size=8, device="cpu", checkpoint=path, progress=False)
    with pytest.raises(ValueError, match="other settings.*lr"):
        train(tiny_unet(), SCHEDULE, tiny_images(), steps=4, batch_size=8, lr=1e-3, device="cpu",
              checkpoint=path, progress=False)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_model(garbage)


def test_train_rejects_images_that_do_not_fit_the_model():
    model = tiny_unet()
    with pytest.raises(ValueError, match="1 channel"):
        train(model, SCHEDULE, torch.zeros(4, 3, 8, 8), steps=1, device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        train(model, SCHEDULE, torch.full((4, 1, 8, 8), 255.0), steps=1, device="cpu", progress=False)
    with pytest.raises(ValueError, match="not divisible"):
        train(UNet(1, 8, (1, 2, 4)), SCHEDULE, torch.zeros(4, 1, 10, 10), steps=1, device="cpu", progress=False)
    with pytest.raises(ValueError, match="amp"):
        train(model, SCHEDULE, tiny_images(), steps=1, device="cpu", amp="fp8", progress=False)
    frozen = tiny_unet().requires_grad_(False)  # as an EMA copy comes out of training
    with pytest.raises(ValueError, match="no trainable parameters"):
        train(frozen, SCHEDULE, tiny_images(), steps=1, device="cpu", progress=False)


def test_callback_sees_the_ema_model_every_log_every_steps():
    calls = []
    train(tiny_unet(), SCHEDULE, tiny_images(), steps=7, batch_size=8, device="cpu", log_every=3, progress=False,
          callback=lambda step, ema, losses: calls.append((step, len(losses), ema.training)))
    assert calls == [(3, 3, False), (6, 6, False), (7, 7, False)]


def test_ema_is_the_exponential_average_of_the_weight_trajectory():
    # ema_k = d_k ema_{k-1} + (1 - d_k) w_k with d_k = min(decay, (1 + k) / (10 + k)) for step k = 0, 1, ...
    # and ema_{-1} = w_{-1}, the initial weights. Recompute it from the recorded trajectory.
    model = tiny_unet()
    decay = 0.9
    expected = [p.detach().clone() for p in model.parameters()]
    def record(step, ema, losses):
        d = min(decay, step / (9 + step))  # (1 + k) / (10 + k) with k = step - 1
        for e, p in zip(expected, model.parameters()):
            e.mul_(d).add_(p.detach(), alpha=1 - d)
    _, ema = train(model, SCHEDULE, tiny_images(), steps=30, batch_size=8, lr=1e-2, ema_decay=decay,
                   device="cpu", log_every=1, progress=False, callback=record)
    for e, p, w in zip(expected, ema.parameters(), model.parameters()):
        torch.testing.assert_close(p, e, rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(p, w) for p, w in zip(ema.parameters(), model.parameters()))


def test_the_learning_rate_warms_up_linearly_then_follows_a_half_cosine():
    lr = lambda step, **kw: learning_rate(step, lr=1.0, steps=110, **kw)  # noqa: E731
    assert [lr(k, warmup=10) for k in (0, 4, 9, 50, 109)] == pytest.approx([0.1, 0.5, 1, 1, 1])
    # After the warm-up: 0.5 (1 + cos(pi p)) with p = (step - 10) / 100: 1 at p = 0, 1/2 at p = 1/2,
    # (1 + cos(0.99 pi)) / 2 = 2.47e-4 at the last step (p = 0.99).
    cosine = [lr(k, warmup=10, lr_decay="cosine") for k in (10, 60, 109)]
    assert cosine == pytest.approx([1.0, 0.5, 2.4672e-4], rel=1e-3)
    assert lr(0) == 1.0  # no warm-up, no decay: constant
    with pytest.raises(ValueError, match="lr_decay"):
        lr(0, lr_decay="linear")
    with pytest.raises(ValueError, match="warmup"):
        lr(0, warmup=-1)


def test_training_applies_the_schedule_and_a_resumed_run_continues_it(tmp_path):
    seen = []

    class Spy(torch.optim.AdamW):  # records the learning rate each step is taken with
        def step(self, *args, **kwargs):
            seen.append(self.param_groups[0]["lr"])
            return super().step(*args, **kwargs)

    kwargs = dict(steps=8, batch_size=8, lr=1e-2, warmup=4, lr_decay="cosine", device="cpu", progress=False)
    with mock.patch("torch.optim.AdamW", Spy):
        train(tiny_unet(), SCHEDULE, tiny_images(), **kwargs)
    assert seen == pytest.approx([learning_rate(k, lr=1e-2, steps=8, warmup=4, lr_decay="cosine") for k in range(8)])
    # A checkpoint records the schedule: resuming it with another one is refused.
    path = tmp_path / "run.pt"
    train(tiny_unet(), SCHEDULE, tiny_images(), checkpoint=path, **{**kwargs, "steps": 2})
    with pytest.raises(ValueError, match="other settings"):
        train(tiny_unet(), SCHEDULE, tiny_images(), checkpoint=path, **{**kwargs, "warmup": 2})


def test_amp_auto_is_measured_once_and_a_resume_keeps_the_recorded_choice(tmp_path, monkeypatch):
    # "auto" measures whether bf16 pays. A run interrupted on a quiet machine must resume on a busy
    # one whose probe now says otherwise: the resumed run takes the choice the checkpoint records,
    # and does not measure again.
    import sys

    train_module = sys.modules["ddpm_lib.train"]  # (ddpm_lib.train is also the function's name)
    probes = []

    def probe(device, answer):
        probes.append(answer)
        return answer

    path = tmp_path / "run.pt"
    monkeypatch.setattr(train_module, "amp_dtype", lambda amp, device: probe(device, torch.bfloat16)
                        if amp == "auto" else {"bf16": torch.bfloat16, "off": None}[amp])
    model = UNet(in_channels=1, base_dim=8, dim_mults=(1, 2))
    train(model, SCHEDULE, tiny_images(), steps=2, batch_size=4, device="cpu", progress=False,
          checkpoint=path, checkpoint_every=1)
    assert load_checkpoint(path)["run"]["amp"] == "bfloat16" and probes == [torch.bfloat16]
    # the busy machine: the probe would now answer float32
    monkeypatch.setattr(train_module, "amp_dtype", lambda amp, device: probe(device, None)
                        if amp == "auto" else {"bf16": torch.bfloat16, "off": None}[amp])
    result = train(UNet(in_channels=1, base_dim=8, dim_mults=(1, 2)), SCHEDULE, tiny_images(), steps=3,
                   batch_size=4, device="cpu", progress=False, checkpoint=path, checkpoint_every=1)
    assert probes == [torch.bfloat16]  # not measured again
    assert load_checkpoint(path)["run"]["amp"] == "bfloat16" and len(result.losses) == 3
