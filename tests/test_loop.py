"""The shared training machinery: objectives, labels, batches, mixed precision, EMA, the result."""

import math
import platform
from unittest import mock

import pytest
import torch
from torch import nn
from toy_data import squares

import ddpm_lib as dl
from ddpm_lib.ema import ema_decay
from ddpm_lib.loop import BatchSampler, Recorder
from ddpm_lib import precision
from ddpm_lib.precision import amp_dtype


class Affine(nn.Module):
    """y = a x + b per image: a model small enough to check what a loop does to it."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.zeros(())), nn.Parameter(torch.zeros(()))
        self.config = {}

    def forward(self, x):
        return self.a * x + self.b


def labelled_images(n=40):
    # Image k is filled with the value of its label, mapped to [-1, 1]: a batch's images and labels
    # can then be checked against each other.
    labels = torch.arange(n) % 10
    images = (labels.float() / 9 * 2 - 1).view(n, 1, 1, 1).expand(n, 1, 4, 4).clone()
    return images, labels


def test_train_optimises_any_objective_with_labels_and_logs_every_quantity():
    # Objective: regress the label (as a number) on the image's mean with y = a x + b. The exact
    # least-squares fit is a = 4.5, b = 4.5, since label = 4.5 (x + 1); Adam gets close.
    images, labels = labelled_images()
    seen = []

    def regression(model, batch, generator):
        x = batch.images.mean(dim=(1, 2, 3))
        assert torch.equal(((x + 1) * 4.5).round().long(), batch.labels)  # the pairs stay together
        seen.append(len(batch.labels))
        error = model(x) - batch.labels.float()
        return {"loss": error.pow(2).mean(), "abs_error": error.abs().mean()}

    model = Affine()
    result = dl.train(model, images=images, labels=labels, loss_fn=regression, steps=600, batch_size=8, lr=0.05,
                      grad_clip=None, device="cpu", progress=False, channels_last=False)
    assert seen == [8] * 600
    assert set(result.history) == {"loss", "abs_error"} and len(result.history["abs_error"]) == 600
    assert result.losses[-1] < 0.01 * result.losses[0]
    assert model.a.item() == pytest.approx(4.5, abs=0.05) and model.b.item() == pytest.approx(4.5, abs=0.05)
    losses, ema = result  # the pair a caller unpacks
    assert losses is result.history["loss"] and ema is result.ema and result.seconds > 0


def test_train_checks_its_arguments():
    images, labels = labelled_images(8)
    schedule = dl.cosine_schedule(10)
    model = dl.UNet(1, 8, (1, 2))
    with pytest.raises(ValueError, match="not both"):
        dl.train(model, schedule, images, loss_fn=dl.DDPMLoss(schedule), steps=1, device="cpu")
    with pytest.raises(ValueError, match="not both and not neither"):
        dl.train(model, images=images, steps=1, device="cpu")
    with pytest.raises(ValueError, match=r"labels must be integers of shape \[N\] = \[8\]"):
        dl.train(model, schedule, images, labels=labels[:5], steps=1, device="cpu")
    with pytest.raises(ValueError, match="labels must be integers"):
        dl.train(model, schedule, images, labels=labels.float(), steps=1, device="cpu")
    with pytest.raises(ValueError, match="sampling"):
        dl.train(model, schedule, images, steps=1, device="cpu", sampling="stratified", progress=False)


def test_epoch_batches_visit_every_image_once_and_draws_follow_the_generator():
    images = torch.arange(10.0).view(10, 1, 1, 1)
    epochs = BatchSampler(images, None, 5, sampling="epochs", seed=0, generator=torch.Generator())
    first = torch.cat([epochs(k, torch.device("cpu")).images.flatten() for k in (0, 1)])
    assert sorted(first.tolist()) == list(range(10))  # one epoch: each image exactly once
    again = BatchSampler(images, None, 5, sampling="epochs", seed=0, generator=torch.Generator())
    assert torch.equal(again(1, torch.device("cpu")).images, epochs(1, torch.device("cpu")).images)

    draws = BatchSampler(images, None, 4, sampling="replacement", seed=0, generator=torch.Generator().manual_seed(5))
    expected = torch.randint(0, 10, (4,), generator=torch.Generator().manual_seed(5)).float()
    assert torch.equal(draws(0, torch.device("cpu")).images.flatten(), expected)


def test_autocast_dtype_follows_the_compute_capability():
    assert dl.autocast_dtype("mps") is None
    expected = {(9, 0): torch.bfloat16, (8, 0): torch.bfloat16, (7, 5): torch.float16, (7, 0): torch.float16,
                (6, 1): None}
    for capability, dtype in expected.items():
        with mock.patch("torch.cuda.get_device_capability", return_value=capability):
            assert dl.autocast_dtype("cuda") == dtype, capability
            assert amp_dtype("auto", torch.device("cuda")) == dtype
            assert amp_dtype("fp16", torch.device("cuda")) == torch.float16
            assert amp_dtype("off", torch.device("cuda")) is None
    with pytest.raises(ValueError, match="amp must be"):
        amp_dtype("fp8", torch.device("cpu"))


def capabilities(**present):
    """What torch.cpu.get_capabilities() reports on a CPU with only the named features."""
    return {"amx_bf16": False, "avx512_bf16": False, "avx2": True, **present}


@pytest.mark.parametrize("present, units, speedup, dtype", [
    ({}, [], 3.0, None),  # no bf16 units: bf16 would be emulated, whatever a timing says
    ({"avx512_bf16": True}, ["avx512_bf16"], 0.8, None),  # the units exist but lose to float32
    ({"avx512_bf16": True}, ["avx512_bf16"], 1.29, None),  # just under the bar: not worth the rounding
    ({"avx512_bf16": True}, ["avx512_bf16"], 1.9, torch.bfloat16),
    ({"amx_bf16": True, "avx512_bf16": True}, ["amx_bf16", "avx512_bf16"], 8.0, torch.bfloat16),
])
def test_cpu_autocast_needs_bf16_units_and_a_measured_speedup(present, units, speedup, dtype):
    with mock.patch("torch.cpu.get_capabilities", return_value=capabilities(**present)), \
            mock.patch.object(precision, "cpu_bf16_speedup", return_value=speedup) as measured:
        assert precision.cpu_bf16_units() == units
        assert dl.autocast_dtype("cpu") == dtype
        assert amp_dtype("auto", torch.device("cpu")) == dtype
        assert amp_dtype("bf16", torch.device("cpu")) == torch.bfloat16  # forcing is always possible
        assert amp_dtype("off", torch.device("cpu")) is None
    assert measured.called == bool(units)  # no units, no timing


def test_the_bf16_speedup_is_a_real_timing_measured_once():
    precision.cpu_bf16_speedup.cache_clear()
    with mock.patch("time.perf_counter", side_effect=[0.0, 4.0, 0.0, 1.0] * 3):
        # Every round times float32 (4 s) then bf16 (1 s): a ratio of 4.
        assert precision.cpu_bf16_speedup(batch=1, channels=2, size=4, repeats=2) == 4.0
        assert precision.cpu_bf16_speedup(batch=1, channels=2, size=4, repeats=2) == 4.0  # cached: no clock read left
    precision.cpu_bf16_speedup.cache_clear()
    assert 0 < precision.cpu_bf16_speedup(batch=2, channels=8, size=8, repeats=1) < float("inf")


def test_a_cpu_whose_capabilities_cannot_be_read_gets_float32():
    with mock.patch("torch.cpu.get_capabilities", side_effect=RuntimeError("no cpuid")):
        assert dl.autocast_dtype("cpu") is None
    with mock.patch.object(torch.cpu, "get_capabilities", None):  # PyTorch before 2.6
        assert dl.autocast_dtype("cpu") is None


def test_the_depthwise_conv_runs_in_float32_under_cpu_autocast_and_the_rest_in_bf16():
    block = dl.ConvNeXtBlock(4, 4, time_dim=8)
    x, t_emb = torch.randn(2, 4, 8, 8), torch.randn(2, 8)
    seen = {}
    block.depthwise.register_forward_hook(lambda m, i, o: seen.update(depthwise=(i[0].dtype, o.dtype)))
    block.body[1].register_forward_hook(lambda m, i, o: seen.update(conv3x3=o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x, t_emb)
    assert seen == {"depthwise": (torch.float32, torch.float32), "conv3x3": torch.bfloat16}
    # Without autocast nothing changes: the block is plain float32 code.
    assert precision.float32_on_cpu(block.depthwise, x).dtype == torch.float32
    # And the float32 depthwise result agrees with the all-float32 block to bf16 accuracy
    # (bf16 keeps 8 significant bits: relative error about 2^-8 per rounding, a few roundings deep).
    assert torch.allclose(out.float(), block(x, t_emb), rtol=0.05, atol=0.05)


def test_bf16_training_starts_with_the_float32_losses_to_bf16_accuracy():
    # Same weights, batches and noise: only rounding differs. bf16 rounds each operand to 8
    # significant bits (relative error up to 2^-8 = 0.4%), and the loss averages thousands of
    # squared errors whose rounding errors partly cancel, so the first losses agree well within
    # 1% (0.08% at most here); a different algorithm (another draw order, a missing EMA or
    # clipping step) moves them by far more. Not bit-identical: autocast really ran.
    losses = {}
    for amp in ("off", "bf16"):
        torch.manual_seed(0)
        result = dl.train(dl.UNet(1, 8, (1, 2)), dl.cosine_schedule(100), squares(64), steps=4, batch_size=16,
                          lr=1e-3, amp=amp, device="cpu", progress=False, log_every=1)
        losses[amp] = result.losses
    assert losses["bf16"] == pytest.approx(losses["off"], rel=0.01)
    assert losses["bf16"] != losses["off"]


def test_fp16_autocast_with_a_gradient_scaler_trains_on_the_cpu(tmp_path):
    images = squares(16)
    torch.manual_seed(0)
    path = tmp_path / "fp16.pt"
    # fp16 is emulated on a CPU (slow), so a short run: the loss must still fall clearly (to about
    # half of its start with these seeds and others tried; 0.7 leaves room for other CPUs).
    losses, _ = dl.train(dl.UNet(1, 8, (1, 2)), dl.cosine_schedule(100), images, steps=16, batch_size=8, lr=5e-3,
                         amp="fp16", device="cpu", checkpoint=path, progress=False)
    assert len(losses) == 16 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4
    state = dl.load_checkpoint(path)
    assert state["run"]["amp"] == "float16" and state["scaler"]["scale"] > 0  # the scaler resumes too


def test_ema_warm_up_follows_tensorflows_rule_and_buffers_are_copied():
    # d_k = min(decay, (1 + k) / (10 + k)): 0.1 at k = 0, 0.5 at k = 8, the decay once k is large.
    assert ema_decay(0, 0.999) == pytest.approx(0.1)
    assert ema_decay(8, 0.999) == pytest.approx(0.5)
    assert ema_decay(10**6, 0.999) == 0.999
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        ema_decay(0, 1.0)
    model = nn.BatchNorm1d(2)
    ema = dl.make_ema(model)
    assert not ema.training and not any(p.requires_grad for p in ema.parameters())
    with torch.no_grad():
        model.weight.fill_(3.0)  # initial weight 1
        model.running_mean.fill_(7.0)
    dl.update_ema(ema, model, step=0, decay=0.999)
    assert torch.allclose(ema.weight, torch.full((2,), 0.1 * 1 + 0.9 * 3))
    assert torch.equal(ema.running_mean, model.running_mean)


def test_recorder_reads_values_back_only_when_flushed():
    recorder = Recorder(steps=3, progress=False)
    for v in (1.0, 2.0, 4.0):
        recorder.add({"loss": torch.tensor(v), "kl": torch.tensor(-v)})
    assert recorder.history == {}
    recorder.close()
    assert recorder.history == {"loss": [1.0, 2.0, 4.0], "kl": [-1.0, -2.0, -4.0]}


def test_a_gan_result_has_no_single_loss():
    result = dl.TrainResult({"d_loss": [1.0], "g_loss": [2.0]}, nn.Identity(), 0.0)
    with pytest.raises(AttributeError, match="several losses"):
        result.losses
    with pytest.raises(AttributeError, match=r"result\.history"):
        _, _ = result  # unpacking would have to pick one loss, or hand back a dict by surprise
    losses, ema = dl.TrainResult({"loss": [3.0]}, nn.Identity(), 0.0)
    assert losses == [3.0] and isinstance(ema, nn.Identity)


def test_bad_images_objectives_and_settings_get_clear_errors(tmp_path):
    images, _ = labelled_images(8)
    with pytest.raises(ValueError, match="NaN or infinite"):
        dl.train(Affine(), images=images.clone().fill_(float("nan")), loss_fn=lambda m, b, g: b.images.sum(),
                 steps=1, device="cpu")
    with pytest.raises(ValueError, match="keys \\['kl'\\]; the one to optimise must be 'loss'"):
        dl.train(Affine(), images=images, loss_fn=lambda m, b, g: {"kl": m(b.images).sum()}, steps=1,
                 device="cpu", progress=False, channels_last=False)
    # A checkpointed run must be able to tell its objective from another when it resumes.
    with pytest.raises(ValueError, match="cannot checkpoint a run of <function"):
        dl.train(Affine(), images=images, loss_fn=lambda m, b, g: m(b.images).sum(), steps=1, device="cpu",
                 checkpoint=tmp_path / "run.pt")
    from ddpm_lib.gan import Discriminator, Generator, train_gan
    for bad in (dict(steps=0), dict(steps=2, batch_size=0), dict(steps=2, ema_decay=1.0)):
        with pytest.raises(ValueError, match="steps|batch_size|ema_decay"):
            train_gan(Generator(8, width=4), Discriminator(width=4), images, device="cpu", **bad)


def test_a_checkpoint_records_the_objective_the_schedule_and_the_device(tmp_path):
    path = tmp_path / "run.pt"
    dl.train(dl.UNet(1, 8, (1, 2)), dl.cosine_schedule(10), squares(8), steps=1, batch_size=4, device="cpu",
             checkpoint=path, progress=False)
    run = dl.load_checkpoint(path)["run"]
    assert run["device"] == "cpu" and run["objective"].startswith("DDPMLoss(schedule='cosine(T=10")
    # Two schedules that share a name but not their betas are different objectives.
    same_name = dl.NoiseSchedule.from_betas(torch.linspace(1e-3, 0.2, 10), name="custom")
    other = dl.NoiseSchedule.from_betas(torch.linspace(1e-3, 0.3, 10), name="custom")
    assert repr(dl.DDPMLoss(same_name)) != repr(dl.DDPMLoss(other))


@pytest.mark.parametrize("probe, expected", [
    (lambda: capabilities(cpu_name="AMD EPYC"), "AMD EPYC CPU ("),
    (lambda: capabilities(cpu_name=""), "CPU ("),
    (mock.Mock(side_effect=RuntimeError("no cpuid")), "CPU ("),
    (None, "CPU ("),  # PyTorch before 2.6 has no probe
])
def test_a_cpu_is_named_by_what_torch_reads_from_it(probe, expected):
    # CPUs reporting the same instruction sets differ several-fold in bf16 speed, so benchmarks
    # and chapters print the name; where torch cannot tell, the generic name remains.
    with mock.patch.object(torch.cpu, "get_capabilities", probe):
        name = dl.device_name("cpu")
    assert name.startswith(expected) and name.endswith(f"threads, {platform.machine() or 'unknown'})")
