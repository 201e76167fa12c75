"""Class-conditional networks and classifier-free guidance (Ho & Salimans 2022)."""

import pytest
import torch

import ddpm_lib as dl
from ddpm_lib.diffusion import drop_labels

K = 3  # classes; label K is the null class


class LabelStub(torch.nn.Module):
    """eps_hat = 0.1 x_t + 0.001 t + c_y with c_y = 0.1 (y + 1) for a class and -0.5 for the null
    class: the conditional and unconditional predictions are known exactly, and they depend on the
    x_t and t they are given, so a sampler that fed the wrong ones to either half would show."""

    num_classes = K

    def forward(self, x_t, t, y):
        c = torch.where(y == K, torch.full_like(y, -5), y + 1).to(x_t.dtype) / 10  # [B]
        return 0.1 * x_t + (0.001 * t.to(x_t.dtype) + c).view(-1, 1, 1, 1)


def guided_stub(y, w):
    """The guided combination eps_u + w (eps_c - eps_u), written out by hand with the stub called
    on each half separately (element-wise arithmetic, so it must agree to the last bit)."""
    stub = LabelStub()

    def model(x_t, t):
        eps_c, eps_u = stub(x_t, t, y), stub(x_t, t, torch.full_like(y, K))
        return eps_u + w * (eps_c - eps_u)
    return model


SCHEDULE = dl.cosine_schedule(20)
SAMPLERS = {
    "ddpm": lambda m, x, **kw: dl.ddpm_sample(m, SCHEDULE, x, generator=torch.Generator().manual_seed(0), **kw),
    "ddim": lambda m, x, **kw: dl.ddim_sample(m, SCHEDULE, x, num_steps=5, eta=0.5,
                                              generator=torch.Generator().manual_seed(0), **kw),
    "heun": lambda m, x, **kw: dl.heun_sample(m, SCHEDULE, x, num_steps=5, **kw),
    "dpm_solver": lambda m, x, **kw: dl.dpm_solver_sample(m, SCHEDULE, x, num_steps=5, **kw),
}


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_uses_exactly_the_guided_combination(name):
    sample = SAMPLERS[name]
    x_T = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 1])
    for w in (0.0, 1.0, 3.0):
        torch.testing.assert_close(sample(LabelStub(), x_T, y=y, guidance_scale=w), sample(guided_stub(y, w), x_T),
                                   rtol=0, atol=0)
    # w = 0 is the unconditional call (the null class), w = 1 the plain conditional one.
    null = torch.full_like(y, K)
    torch.testing.assert_close(sample(LabelStub(), x_T, y=y, guidance_scale=0.0), sample(LabelStub(), x_T, y=null),
                               rtol=0, atol=0)
    torch.testing.assert_close(sample(LabelStub(), x_T, y=y, guidance_scale=1.0), sample(LabelStub(), x_T, y=y))
    with dl.count_nfe() as guided, torch.no_grad():
        sample(LabelStub(), x_T, y=y, guidance_scale=2.0)
    with dl.count_nfe() as plain:
        sample(LabelStub(), x_T, y=y)
    assert guided.nfe == plain.nfe  # conditional and unconditional in one batched call


def test_guidance_needs_labels_and_a_conditional_model():
    x_T = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match="guidance_scale needs class labels"):
        dl.ddim_sample(LabelStub(), SCHEDULE, x_T, num_steps=2, guidance_scale=2.0)
    with pytest.raises(ValueError, match="need a class-conditional model"):
        dl.ddim_sample(dl.UNet(1, 8, (1, 2)), SCHEDULE, x_T, num_steps=2, y=torch.tensor([0, 1]))


def test_conditional_unet_takes_labels_and_the_null_class():
    torch.manual_seed(0)
    net = dl.UNet(1, 8, (1, 2), num_classes=K)
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([0, 5, 10, 19])
    with torch.no_grad():
        out = {label: net(x, t, torch.full((4,), label)) for label in range(K + 1)}
        assert all(v.shape == x.shape for v in out.values())
        assert not torch.allclose(out[0], out[1])  # the label changes the prediction
        torch.testing.assert_close(net(x, t), out[K])  # no labels: the null class
    assert net.config["num_classes"] == K
    with pytest.raises(ValueError, match=r"class labels must lie in \[0, 3\]"):
        net(x, t, torch.tensor([0, 1, 2, 4]))
    with pytest.raises(ValueError, match="integer class labels of shape"):
        net(x, t, torch.zeros(4))
    plain = dl.UNet(1, 8, (1, 2))
    assert "num_classes" not in plain.config and not any("label" in k for k in plain.state_dict())
    with pytest.raises(ValueError, match="built without num_classes"):
        plain(x, t, torch.zeros(4, dtype=torch.long))


def test_label_dropout_drops_the_expected_fraction():
    # Each label is dropped independently with p = 0.1: the dropped count of n is Binomial(n, p),
    # standard deviation sqrt(n p (1 - p)) = 95 for n = 100,000; allow 5 of them.
    y = torch.randint(0, K, (100_000,), generator=torch.Generator().manual_seed(0))
    dropped = drop_labels(y, K, 0.1, torch.rand(100_000, generator=torch.Generator().manual_seed(1)))
    n_null = int((dropped == K).sum())
    assert abs(n_null - 10_000) < 5 * 95
    assert torch.equal(dropped[dropped != K], y[dropped != K])  # the others are untouched
    u = torch.rand(100_000)
    assert torch.equal(drop_labels(y, K, 0.0, u), y) and bool((drop_labels(y, K, 1.0, u) == K).all())


def test_a_conditional_model_trains_through_the_shared_loop(tmp_path):
    images = torch.zeros(16, 8, 8, dtype=torch.uint8)
    labels = torch.arange(16) % 2
    images[labels == 1, 2:6, 2:6] = 255  # class 1: a bright square; class 0: black
    loss_fn = dl.DDPMLoss(dl.cosine_schedule(50), label_dropout=0.1)
    torch.manual_seed(0)
    result = dl.train(dl.UNet(1, 8, (1, 2), num_classes=2), images=images, labels=labels, loss_fn=loss_fn,
                      steps=40, batch_size=16, lr=3e-3, device="cpu", progress=False, checkpoint=tmp_path / "c.pt")
    assert sum(result.losses[-5:]) < 0.7 * sum(result.losses[:5])
    assert "label_dropout=0.1" in dl.load_checkpoint(tmp_path / "c.pt")["run"]["objective"]
    assert dl.load_model(tmp_path / "c.pt").num_classes == 2
    with pytest.raises(ValueError, match="needs labels"):
        dl.train(dl.UNet(1, 8, (1, 2), num_classes=2), images=images, loss_fn=loss_fn, steps=1, device="cpu")
    # A conditional model with an unconditional objective, or the reverse, would silently learn the
    # wrong thing (only the null class, or nothing of the labels).
    conditional, plain = dl.UNet(1, 8, (1, 2), num_classes=2), dl.UNet(1, 8, (1, 2))
    for model, objective in ((conditional, dl.DDPMLoss(dl.cosine_schedule(50))), (plain, loss_fn),
                             (conditional, dl.flow_matching_loss)):
        with pytest.raises(ValueError, match="conditional"):
            dl.train(model, images=images, labels=labels, loss_fn=objective, steps=1, device="cpu", progress=False)
