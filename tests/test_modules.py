import math

import pytest
import torch

import ddpm_lib
from ddpm_lib import ConvNeXtBlock, Downsample, SinusoidalEmbedding, UNet, Upsample


def test_public_api_is_importable_from_the_package():
    for name in ddpm_lib.__all__:
        assert getattr(ddpm_lib, name) is not None, name


def test_sinusoidal_embedding_shape_and_values():
    emb = SinusoidalEmbedding(16)
    t = torch.tensor([0, 1, 7, 999])
    e = emb(t)
    assert e.shape == (4, 16)
    # Column k is sin(t w_k) and column 8 + k is cos(t w_k), with w_k = 10000^(-k/8); so w_0 = 1.
    torch.testing.assert_close(e[:, 0], torch.sin(t.float()))
    torch.testing.assert_close(e[:, 8], torch.cos(t.float()))
    w7 = 10000 ** (-7 / 8)
    torch.testing.assert_close(e[:, 7], torch.sin(t.float() * w7))
    # Every (sin, cos) pair lies on the unit circle, so every embedding has norm sqrt(dim / 2).
    torch.testing.assert_close(e.norm(dim=1), torch.full((4,), math.sqrt(8.0)))


def test_sinusoidal_embedding_separates_every_timestep_and_keeps_neighbours_close():
    e = SinusoidalEmbedding(32)(torch.arange(1000))
    d = torch.cdist(e, e)
    d.fill_diagonal_(float("inf"))
    assert d.min() > 1e-3  # no two of the 1000 timesteps share a code
    # Neighbours are closer than distant steps.
    assert (e[500] - e[501]).norm() < (e[500] - e[900]).norm()


def test_sinusoidal_embedding_rejects_odd_dims_and_bad_shapes():
    with pytest.raises(ValueError, match="even"):
        SinusoidalEmbedding(15)
    with pytest.raises(ValueError, match=r"\[B\]"):
        SinusoidalEmbedding(8)(torch.zeros(2, 1))


@pytest.mark.parametrize("in_channels,out_channels", [(8, 8), (8, 16), (16, 4)])
def test_convnext_block_shapes_and_time_injection(in_channels, out_channels):
    torch.manual_seed(0)
    block = ConvNeXtBlock(in_channels, out_channels, time_dim=12)
    x = torch.randn(3, in_channels, 10, 6)
    t1, t2 = torch.randn(3, 12), torch.randn(3, 12)
    y = block(x, t1)
    assert y.shape == (3, out_channels, 10, 6)
    assert not torch.allclose(y, block(x, t2))  # the time embedding reaches the output
    with pytest.raises(ValueError, match="time embedding"):
        block(x)
    with pytest.raises(ValueError, match=f"expects {in_channels} input channels"):
        block(torch.randn(3, in_channels + 1, 10, 6), t1)
    assert ConvNeXtBlock(in_channels, out_channels)(x).shape == (3, out_channels, 10, 6)  # no time_dim, no embedding needed


def test_downsample_halves_the_size_and_keeps_every_pixel():
    # Space-to-depth moves each 2x2 patch into the channels, [B, C, H, W] -> [B, 4C, H/2, W/2].
    # With the 1x1 conv set to the identity the output must hold exactly the four phases
    # x[..., p1::2, p2::2] of the input: nothing lost, and H and W halved, not doubled (the inverse
    # einops pattern, depth-to-space, would double them).
    down = Downsample(3, 12)
    with torch.no_grad():
        down.proj.weight.copy_(torch.eye(12).view(12, 12, 1, 1))
        down.proj.bias.zero_()
    x = torch.randn(2, 3, 8, 6)
    y = down(x)
    assert y.shape == (2, 12, 4, 3)
    phases = torch.stack([x[:, :, p1::2, p2::2] for p1 in range(2) for p2 in range(2)], dim=2)  # [B, C, 4, H/2, W/2]
    torch.testing.assert_close(y, phases.reshape(2, 12, 4, 3))
    assert Downsample(3, 5)(x).shape == (2, 5, 4, 3)
    with pytest.raises(ValueError, match="even"):
        down(torch.randn(1, 3, 7, 6))


def test_upsample_doubles_the_size():
    up = Upsample(6, 4)
    assert up(torch.randn(2, 6, 7, 5)).shape == (2, 4, 14, 10)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dim_mults,size", [((1, 2, 4), 28), ((1, 2, 4, 8), 32), ((2, 3), 10), ((1,), 9)])
def test_unet_output_shape_equals_input_shape(channels, dim_mults, size):
    model = UNet(in_channels=channels, base_dim=8, dim_mults=dim_mults)
    x = torch.randn(2, channels, size, size)
    assert model(x, torch.tensor([0, 999])).shape == x.shape


def test_unet_default_config_on_mnist_and_its_time_dependence():
    torch.manual_seed(0)
    model = UNet()  # in_channels=1, base_dim=32, dim_mults=(1, 2, 4)
    x = torch.randn(2, 1, 28, 28)
    y0, y1 = model(x, torch.tensor([0, 0])), model(x, torch.tensor([500, 500]))
    assert y0.shape == x.shape
    assert not torch.allclose(y0, y1)


def test_unet_rejects_sizes_it_cannot_halve_and_wrong_channels():
    model = UNet(in_channels=1, base_dim=8, dim_mults=(1, 2, 4, 8))
    with pytest.raises(ValueError, match=r"28x28 is not divisible by 8"):
        model(torch.randn(1, 1, 28, 28), torch.tensor([1]))
    with pytest.raises(ValueError, match="built for 1 channel"):
        model(torch.randn(1, 3, 32, 32), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        model(torch.randn(1, 32, 32), torch.tensor([1]))
    with pytest.raises(ValueError):
        UNet(dim_mults=())


def test_unet_evaluates_a_large_cpu_batch_in_slices_with_the_same_result():
    # No layer of the U-Net mixes images (group norm and the time embedding act per image), so
    # evaluating 9 images as 3 slices of 3 (ceil(9 / 4) equal slices of at most 4) must give what one
    # pass gives, up to float rounding;
    # the slicing happens only where it pays: inference (no autograd graph) on the CPU.
    torch.manual_seed(0)
    model = UNet(base_dim=8, dim_mults=(1, 2), num_classes=3).eval()
    model.cpu_inference_batch = 4
    x, t, y = torch.randn(9, 1, 12, 12), torch.randint(0, 1000, (9,)), torch.tensor([0, 1, 2, 3] * 2 + [1])
    stem_calls = []
    model.stem.register_forward_hook(lambda module, args, out: stem_calls.append(args[0].shape[0]))
    with torch.no_grad():
        sliced = model(x, t, y)
        assert stem_calls == [3, 3, 3]
        unlabeled = model(x, t)  # the null class for every image, in each slice
        model.cpu_inference_batch = None
        whole, whole_unlabeled = model(x, t, y), model(x, t)
    assert stem_calls == [3, 3, 3] * 2 + [9, 9]
    torch.testing.assert_close(sliced, whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(unlabeled, whole_unlabeled, rtol=1e-5, atol=1e-6)
    model.cpu_inference_batch = 4
    model(x, t, y)  # with autograd: one pass, whose graph backward needs whole
    assert stem_calls[8:] == [9]
    # Inputs are checked against the whole batch before slicing: a short y is an error, not a zip
    with pytest.raises(ValueError, match=r"shape \[B\] = \[9\]"), torch.no_grad():
        model(x, t, y[:8])
    model.cpu_inference_batch = 0
    with pytest.raises(ValueError, match="positive integer or None"), torch.no_grad():
        model(x, t, y)


def test_animation_html_is_self_contained_and_embeds_every_frame():
    # The rendered book is read offline: the player must not fetch anything, and every frame must
    # be in the page (matplotlib writes one base64 PNG per frame).
    import matplotlib

    matplotlib.use("Agg")
    frames = [torch.full((2, 1, 8, 8), v) for v in (-1.0, 0.0, 1.0)]
    html = ddpm_lib.animation_html(ddpm_lib.animate_grids(frames, ["a", "b", "c"]))
    assert "http://" not in html and "https://" not in html
    assert 'class="fa' not in html  # icon-font buttons replaced by text symbols
    assert html.count("data:image/png;base64") == len(frames)
    assert "&#x25B6;" in html  # the play button
