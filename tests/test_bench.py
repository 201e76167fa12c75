"""The benchmark scripts stay out of `make test`, but a tiny run of each on the CPU keeps them working."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import ddpm_lib as dl

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))  # the scripts import their shared command line from bench/common.py


def load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_throughput_runs_at_tiny_size(capsys):
    rows = load("train_throughput").main(["--tiny", "--device", "cpu"])
    ours = [r for r in rows if not r["peer"]]
    assert [r["model"] for r in ours] == ["ddpm_lib UNet, fp32 baseline", "ddpm_lib UNet, + fused/foreach",
                                          "ddpm_lib UNet, + channels_last", "ddpm_lib UNet, + bf16 autocast",
                                          "ddpm_lib UNet, dl.train itself (its defaults)"]
    assert all(r["images_per_s"] > 0 and r["params"] > 0 for r in rows)
    # On a CPU each row's FLOP rate is set against the ceiling measured in the same run, which takes
    # in the rows' own convolutions and the rows themselves: no row can pass 100%.
    assert all(0 < r["of_ceiling"] <= 1 and set(r["ceiling_tflops"]) == {"float32", "bf16"} for r in rows)
    assert "CPU ceiling" in capsys.readouterr().out


@pytest.mark.parametrize("channels, groups", [(12, 1), (12, 3), (12, 12)])  # dense, grouped, depthwise
def test_the_flop_count_gives_a_grouped_convolution_its_real_cost(channels, groups):
    # A k x k convolution with C channels in and out, in `groups` groups, on an H x W image: each
    # output value sums k^2 C/groups products, so the forward pass costs 2 B H W C (C/groups) k^2
    # FLOPs. Its backward pass computes two such convolutions, the input's gradient and the
    # weights' gradient, each as costly as the forward pass: 3 times the forward pass in all. A
    # dense 1x1 convolution in front (2 B H W C^2 forward) needs no input gradient (x_t has
    # none), so it costs twice its forward pass.
    count = load("train_throughput").flops_per_step
    B, C, H, k = 2, channels, 8, 3
    first = torch.nn.Conv2d(C, C, 1)
    conv = torch.nn.Conv2d(C, C, k, padding=1, groups=groups)

    class Net(torch.nn.Module):  # the (x_t, t) -> eps contract that flops_per_step trains
        def forward(self, x, t):
            return conv(first(x))

    forward = 2 * B * H * H * C * (C // groups) * k * k
    assert count(Net(), dl.cosine_schedule(10), torch.zeros(B, C, H, H)) == 3 * forward + 2 * (2 * B * H * H * C * C)


def test_cpu_layer_bench_times_each_layer_in_both_precisions(capsys):
    rows = load("cpu_layers").main(["--tiny", "--device", "cpu"])
    assert "7x7 depthwise conv" in [r["layer"] for r in rows]
    assert all(r["fp32_ms"] > 0 and r["bf16_ms"] > 0 for r in rows)
    assert "bf16 speed-up" in capsys.readouterr().out


def test_flop_counter_counts_forward_and_backward():
    # A 1x1 convolution from C to C channels over B x H x W pixels costs 2 C^2 B H W FLOPs forward
    # (a multiply and an add per weight and pixel). Backward needs only the weight gradient, as the
    # input x_t needs none, and that costs the same again: 4 C^2 B H W in total.
    import torch

    import ddpm_lib

    class OneConv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 4, 1, bias=False)

        def forward(self, x, t):
            return self.conv(x)

    flops = load("train_throughput").flops_per_step(OneConv(), ddpm_lib.cosine_schedule(10), torch.zeros(2, 4, 3, 3))
    assert flops == 4 * 4**2 * 2 * 3 * 3


def test_sampling_bench_runs_at_tiny_size(capsys):
    rows = load("sampling").main(["--tiny", "--device", "cpu"])
    assert {r["sampler"] for r in rows} == {"ddpm_sample (20 steps)", "ddim_sample (20 steps)"}
    assert all(r["images_per_s"] > 0 for r in rows)
    assert "Sampling throughput" in capsys.readouterr().out


def test_sampling_batch_bench_times_each_batch_in_both_layouts(capsys):
    rows = load("sampling_batch").main(["--tiny", "--device", "cpu"])
    assert [(r["batch"], r["layout"], r["slice"]) for r in rows] == [
        (4, "default", None), (4, "channels-last", None), (8, "default", None),
        (8, "channels-last", None), (8, "channels-last", 128)]
    assert all(r["ms_per_image"] > 0 for r in rows)
    assert "slices of <= 128" in capsys.readouterr().out


def test_depthwise_grad_bench_matches_pytorchs_gradient_at_every_depthwise_shape(capsys):
    rows = load("depthwise_grad").main(["--tiny", "--device", "cpu"])
    # Every depthwise convolution of the U-Net runs once per forward pass, so the rows' counts add
    # up to the number of such layers.
    depthwise = [m for m in dl.UNet(1, 4, (1, 2, 4)).modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert sum(r["count"] for r in rows) == len(depthwise)
    # The 49 sums are the gradient itself, in another order of float32 additions: a few ulps apart.
    assert all(r["rel_err"] < 1e-5 for r in rows)
    assert "one training step" in capsys.readouterr().out


def test_the_ceiling_probes_each_dense_convolution_of_a_model_at_its_own_shape():
    # A 3x3 convolution from 4 to 8 channels, padding 1, on 2 images of 5x5: 2 * 8 * 25 = 400
    # outputs of 4 * 9 products each, so 2 * 400 * 36 FLOPs forward, and as much again for each of
    # the input's and the weights' gradients: 3 * 28,800 = 86,400. The depthwise convolution is not
    # dense and is left out; the same convolution met twice is probed once.
    bench = load("train_throughput")
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = torch.nn.Conv2d(4, 8, 3, padding=1)
            self.depthwise = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)

        def forward(self, x, t):
            return self.depthwise(self.dense(x)) + self.dense(x)

    convolutions = bench.dense_convolutions(Net(), torch.zeros(2, 4, 5, 5), torch.zeros(2, dtype=torch.long))
    assert convolutions == [((2, 4, 5, 5), (8, 4, 3, 3), (1, 1), (1, 1), (1, 1))]
    flops, fn = bench._convolution_probe(convolutions[0], torch.float32)
    assert flops == 86_400
    fn()  # runs forward and backward
