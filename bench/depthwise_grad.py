"""The weight gradient of the U-Net's 7x7 depthwise convolutions on a CPU: oneDNN's kernel or a compiled one.

    python bench/depthwise_grad.py --device cpu          # the book's U-Net (base 32), batch 128: minutes
    python bench/depthwise_grad.py --tiny --device cpu   # seconds: checks the formulation, compiles nothing

For its arithmetic this gradient is the slowest part of a bf16 training step on a CPU (see the
performance appendix): about 3% of the FLOPs, about a fifth of the time. It is 49 sums of
products, one for each tap (i, j) of the kernel,

    dL/dw[c, i, j] = sum over b, h, w of x_pad[b, c, h + i, w + j] * dL/dy[b, c, h, w],

which `torch.compile` turns into one generated loop per input shape. This script times that
against PyTorch's own kernel (oneDNN) at every depthwise shape the U-Net meets in one training
step, float32 and channels-last as `dl.train` runs them, and reports what the compiling costs.
"""

from __future__ import annotations

import collections
import time

import torch
import torch.nn.functional as F

import ddpm_lib as dl
from common import cli, interleaved_medians

K = 7  # the ConvNeXt blocks' depthwise kernel


def weight_grad(x: torch.Tensor, grad_y: torch.Tensor) -> torch.Tensor:
    """dL/dw of a KxK depthwise convolution (padding K // 2) from its input and output gradient."""
    H, W = grad_y.shape[-2:]
    x_pad = F.pad(x, (K // 2,) * 4)  # [B, C, H + K - 1, W + K - 1]
    taps = [(x_pad[:, :, i:i + H, j:j + W] * grad_y).sum(dim=(0, 2, 3)) for i in range(K) for j in range(K)]
    return torch.stack(taps, dim=1).view(-1, 1, K, K)  # [C, 1, K, K], like the conv's weight


def onednn_weight_grad(x: torch.Tensor, grad_y: torch.Tensor) -> torch.Tensor:
    """The same gradient from PyTorch's convolution backward (oneDNN on a CPU), weights only."""
    C = x.shape[1]
    w = torch.empty(C, 1, K, K)  # only its shape matters to the weight gradient
    pad, one = [K // 2] * 2, [1, 1]
    return torch.ops.aten.convolution_backward(grad_y, x, w, None, one, pad, one, False, [0, 0], C,
                                               [False, True, False])[1]


def depthwise_shapes(base: int, batch: int) -> collections.Counter:
    """{input shape: how many of the U-Net's depthwise convolutions see it} in one forward pass."""
    torch.manual_seed(0)
    net, shapes = dl.UNet(1, base, (1, 2, 4)), collections.Counter()
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d) and m.groups > 1:
            m.register_forward_hook(lambda m, args, out: shapes.update([tuple(args[0].shape)]))
    with torch.no_grad():
        net(torch.zeros(batch, 1, 28, 28), torch.zeros(batch, dtype=torch.long))
    return shapes


def _seconds(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def run(tiny: bool = False, device=None) -> list[dict]:
    if device is not None and torch.device(device).type != "cpu":
        raise ValueError(f"this benchmark measures the CPU's kernels; run it with --device cpu, not {device}")
    base, batch, rounds = (4, 2, 2) if tiny else (32, 128, 9)
    rows = []
    for shape, count in depthwise_shapes(base, batch).items():
        torch.manual_seed(0)
        x, grad_y = (torch.randn(shape).contiguous(memory_format=torch.channels_last) for _ in range(2))
        # Tiny runs check the formulation only: compiling needs a C++ compiler and takes seconds a shape.
        fn = weight_grad if tiny else torch.compile(weight_grad, dynamic=False)
        start = time.perf_counter()
        ours = fn(x, grad_y)
        compile_s = time.perf_counter() - start
        ref = onednn_weight_grad(x, grad_y)
        rel_err = ((ours - ref).abs().max() / ref.abs().max()).item()
        # Both are warm now (oneDNN has picked its kernel, Inductor compiled): one call per turn.
        fns = {"oneDNN": onednn_weight_grad, "compiled": fn}
        medians = interleaved_medians(lambda name: _seconds(fns[name], x, grad_y), list(fns), rounds)
        row = {"shape": list(shape), "count": count, "compiled": not tiny, "onednn_ms": 1000 * medians["oneDNN"],
               "compiled_ms": 1000 * medians["compiled"], "compile_s": compile_s, "rel_err": rel_err}
        print(f"  {'x'.join(map(str, shape))}: oneDNN {row['onednn_ms']:.1f} ms, "
              f"compiled {row['compiled_ms']:.1f} ms (first call {compile_s:.1f} s)", flush=True)
        rows.append(row)
    return rows


def format_table(rows: list[dict], device_label: str) -> str:
    how = "" if all(r["compiled"] for r in rows) else " (tiny run: the 49 sums not compiled)"
    lines = [f"7x7 depthwise weight gradient on {device_label}, float32 channels-last, medians{how}",
             f"{'input':>18}{'per step':>10}{'oneDNN ms':>11}{'compiled ms':>13}{'speed-up':>10}"
             f"{'first call s':>14}{'max rel err':>13}"]
    for r in rows:
        lines.append(f"{'x'.join(map(str, r['shape'])):>18}{r['count']:>10}{r['onednn_ms']:>11.1f}"
                     f"{r['compiled_ms']:>13.1f}{r['onednn_ms'] / r['compiled_ms']:>9.2f}x"
                     f"{r['compile_s']:>14.1f}{r['rel_err']:>13.1e}")
    onednn = sum(r["count"] * r["onednn_ms"] for r in rows)
    compiled = sum(r["count"] * r["compiled_ms"] for r in rows)
    lines.append(f"{'one training step':>18}{sum(r['count'] for r in rows):>10}{onednn:>11.0f}{compiled:>13.0f}"
                 f"{onednn / compiled:>9.2f}x{sum(r['compile_s'] for r in rows):>14.0f}")
    return "\n".join(lines)


def main(argv=None):
    return cli(run, format_table, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
