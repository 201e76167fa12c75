"""Training throughput of ddpm_lib's U-Net, each optimisation measured on its own, against peers.

    python bench/train_throughput.py              # the book's MNIST config and a CIFAR-sized one
    python bench/train_throughput.py --device cpu # on the CPU: the book's config and the sweep's choice
    python bench/train_throughput.py --tiny       # seconds on a CPU: checks the script runs

One "step" is what dl.train does per batch: forward, loss, backward, gradient clipping, optimiser
step and EMA update. The rows of a configuration take turns, a few steps each, for several rounds,
and each reports its median round. Rows add one optimisation at a time:

  fp32 baseline        plain AdamW (for-loop), EMA parameter by parameter, NCHW activations
  + fused/foreach      fused AdamW on CUDA, one torch._foreach_lerp_ for the EMA
  + bf16 autocast      forward and backward in bfloat16 (CUDA only)
  + channels_last      NHWC activations
  + bf16 autocast      on a CPU: bf16 with the 7x7 depthwise convolutions kept in float32
                       (ddpm_lib.precision.float32_on_cpu), whether or not dl.train picks it here
  + torch.compile      the model compiled (CUDA only; minutes of compilation first)
  dl.train itself      the library's loop with its defaults (EMA, clipping, logging every step),
                       timed between its callbacks: it should match the bare step it runs

Peers, at a parameter count matched to ours and the same batch, run with the best of the same
settings (on a CPU, the faster of float32 and bf16 for each): lucidrains'
denoising_diffusion_pytorch.Unet and Hugging Face diffusers.UNet2DModel, when installed. FLOPs per
step come from torch.utils.flop_counter. The achieved FLOP rate is divided by the device's peak:
a GPU's dense bf16 tensor-core peak, or on a CPU the practical ceiling measured here on all
threads, in float32 and in bf16: the fastest of a large matrix product, a large 1x1 convolution,
every dense convolution the rows themselves run (alone, at its own shapes, forward and backward,
channels-last) and the rows' own steps. A step's rate is its arithmetic over the sum of its
kernels' times, so it cannot beat its fastest kernel run alone; the rows are in the maximum too, so
that kernels behaving differently inside a step than alone can never put a row above 100%.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

import ddpm_lib as dl
from common import cli, interleaved_medians

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 tensor-core FLOP/s


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def cpu_ceiling(n: int = 2048, repeats: int = 5, convolutions=()) -> dict:
    """This CPU's practical FLOP/s in float32 and bf16: the fastest of the dense products below.

    An n x n matrix product (torch hands float32 to MKL, bf16 to oneDNN), the same product as a
    1x1 convolution, channels-last (n/256 images of 16x16 pixels: n rows again; oneDNN in both
    types, as the U-Net's convolutions are), and each of ``convolutions`` (from
    :func:`dense_convolutions`) forward and backward at its own shapes. Both of the first two are
    needed: on AMD CPUs MKL's float32 product runs far below what oneDNN's convolutions reach; and
    a network's own 3x3 convolutions can beat both (on an Intel Xeon with AMX, channels-last 3x3
    convolutions reached 204 GFLOP/s in float32 against 155 for the other two). The best of
    ``repeats`` timings of each.
    """
    if n % 256:
        raise ValueError(f"n must be a multiple of 256 (16x16-pixel images), got {n}")
    rates = {}
    for name, dtype in (("float32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        x = torch.randn(n // 256, n, 16, 16, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w = b.reshape(n, n, 1, 1).contiguous(memory_format=torch.channels_last)
        probes = [(2 * n**3, lambda: a @ b), (2 * n**3, lambda: torch.nn.functional.conv2d(x, w))]
        probes += [_convolution_probe(c, dtype) for c in convolutions]
        best = 0.0
        for flops, fn in probes:
            fn()  # warm-up: oneDNN/MKL pick and prepare their kernels
            best = max(best, flops / min(_timed(fn) for _ in range(repeats)))
        rates[name] = best
    return rates


def dense_convolutions(model: torch.nn.Module, *inputs) -> list[tuple]:
    """The distinct dense (groups = 1) 2-D convolutions that ``model(*inputs)`` runs, as
    ``(input shape, weight shape, stride, padding, dilation)``."""
    found = {}

    def record(module, args, _):
        if module.groups == 1 and isinstance(module.padding, tuple):
            found[(tuple(args[0].shape), tuple(module.weight.shape), module.stride, module.padding,
                   module.dilation)] = None

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return list(found)


def _convolution_probe(convolution: tuple, dtype: torch.dtype):
    """(FLOPs, fn): one convolution forward and backward (gradients of input and weights), alone.
    Each of the three products costs 2 * output elements * C_in * k_h * k_w."""
    in_shape, w_shape, stride, padding, dilation = convolution
    layout = torch.channels_last
    x = torch.randn(in_shape, dtype=dtype).contiguous(memory_format=layout).requires_grad_()
    w = torch.randn(w_shape, dtype=dtype).contiguous(memory_format=layout).requires_grad_()
    out_shape = torch.nn.functional.conv2d(x.detach(), w.detach(), None, stride, padding, dilation).shape
    grad = torch.randn(out_shape, dtype=dtype).contiguous(memory_format=layout)
    flops = 3 * 2 * grad.numel() * w_shape[1] * w_shape[2] * w_shape[3]

    def fn():
        out = torch.nn.functional.conv2d(x, w, None, stride, padding, dilation)
        torch.autograd.grad(out, (x, w), grad)

    return flops, fn


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class EpsModel(torch.nn.Module):
    """Adapts a peer's network to the (x_t, t) -> eps_hat contract."""

    def __init__(self, net, kind, **config):
        super().__init__()
        self.net, self.kind = net, kind
        self.config = {"kind": kind, **config}  # what a dl.train checkpoint records

    def forward(self, x, t):
        out = self.net(x, t)
        return out.sample if self.kind == "diffusers" else out


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def closest(make, target: int):
    """The model from ``make(width)`` whose parameter count is closest to ``target`` (widths 8, 16, ...)."""
    best, width = None, 8
    while True:
        model = make(width)
        if best is None or abs(count(model) - target) < abs(count(best) - target):
            best = model
        if count(model) > 1.3 * target or width > 512:
            return best
        width += 8


def peer_models(channels: int, size: int, target: int, depth: int):
    """Peers sized to the parameter count closest to ``target`` (empty if not installed)."""
    peers = {}
    try:
        from denoising_diffusion_pytorch import Unet

        mults = (1, 2, 4, 8)[:depth]
        best = closest(lambda w: Unet(dim=w, dim_mults=mults, channels=channels), target)
        peers["denoising-diffusion-pytorch Unet"] = EpsModel(best, "lucidrains")
    except ImportError:
        pass
    try:
        peers["diffusers UNet2DModel"] = closest(lambda w: diffusers_unet(w, channels, size, depth), target)
    except ImportError:
        pass
    return peers


def diffusers_unet(width: int, channels: int = 1, size: int = 28, depth: int = 3) -> EpsModel:
    """Hugging Face diffusers' UNet2DModel as the peer: ResNet blocks, no attention, widths
    (w, 2w, 4w, ...) over ``depth`` levels, two blocks a level, as ``model(x_t, t) -> eps_hat``."""
    from diffusers import UNet2DModel

    chans = tuple(width * m for m in (1, 2, 4, 8)[:depth])
    net = UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=chans,
                      down_block_types=("DownBlock2D",) * depth, up_block_types=("UpBlock2D",) * depth,
                      layers_per_block=2, norm_num_groups=8)
    return EpsModel(net, "diffusers", width=width)


def make_step(model, schedule, *, amp, channels_last, fused, compiled):
    """One training step as in dl.train, returning the loss tensor (no host sync)."""
    device = next(model.parameters()).device
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    ema = copy.deepcopy(model).requires_grad_(False)
    use_fused = fused and device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=use_fused, foreach=fused and not use_fused)
    net = torch.compile(model) if compiled else model
    params, ema_params = list(model.parameters()), list(ema.parameters())

    def step(x0):
        x0 = x0.contiguous(memory_format=fmt)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = dl.ddpm_loss(net, schedule, x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=fused)
        opt.step()
        with torch.no_grad():
            if fused:
                torch._foreach_lerp_(ema_params, params, 1e-3)
            else:
                for e, p in zip(ema_params, params):
                    e.lerp_(p, 1e-3)
        return loss

    return step


def measure(step, x0, iters: int) -> float:
    """Seconds per step, timed with device synchronisation around the timed region."""
    device = x0.device
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        loss = step(x0)
    loss.item()  # wait for the last step
    return (time.perf_counter() - start) / iters


def train_seconds(model, schedule, images, iters: int, batch_size: int | None = None, **train_args) -> float:
    """Seconds per step of ``dl.train`` itself (its defaults, or ``train_args``) on a copy of
    ``model``: the median time between its callbacks (one a step) over ``iters`` steps, after a
    first step that pays for the set-up. ``batch_size``: all of ``images`` by default."""
    laps, clock = [], [time.perf_counter()]

    def lap(step, ema, losses):
        now = time.perf_counter()
        laps.append(now - clock[0])
        clock[0] = now

    dl.train(copy.deepcopy(model), schedule, images, steps=iters + 1, batch_size=batch_size or len(images),
             device=images.device, progress=False, log_every=1, callback=lap, **train_args)
    return statistics.median(laps[1:])


def conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, groups, output_mask, out_shape, **kwargs) -> int:
    """torch's count for a convolution's backward pass, with a grouped convolution's weight gradient fixed.

    torch.utils.flop_counter (2.13) counts the weight gradient as a dense convolution over all input
    channels, ``groups`` times too much: for the U-Net's 7x7 depthwise convolutions (groups =
    channels) that is up to 192 times their real cost, and it made the whole step's count 1.7 times
    too large. Each group's weights see only their own channels, so that term is divided by groups.
    """
    def t(shape):  # swap the batch and channel axes
        return [shape[1], shape[0], *shape[2:]]

    flops = 0
    if output_mask[0]:  # grad_input: grad_out convolved, transposed, with the weights
        flops += flop_counter.conv_flop_count(grad_out_shape, w_shape, out_shape[0], not transposed)
    if output_mask[1]:  # grad_weight: the input convolved with grad_out, group by group
        a, b = (t(grad_out_shape), t(x_shape)) if transposed else (t(x_shape), t(grad_out_shape))
        flops += flop_counter.conv_flop_count(a, b, t(out_shape[1])) // groups
    return flops


def flops_per_step(model, schedule, x0) -> float:
    """Forward + backward FLOPs of the model for one batch (optimizer and EMA are negligible)."""
    with FlopCounterMode(display=False,
                         custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops}) as counter:
        dl.ddpm_loss(model, schedule, x0).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def configurations(tiny: bool, cuda: bool = True):
    if tiny:
        return {"tiny MNIST": dict(channels=1, size=28, base=8, mults=(1, 2), batch=8)}
    if not cuda:  # two CPU cores: the book's U-Net, and the configuration its CPU sweep chose
        return {"MNIST (book)": dict(channels=1, size=28, base=32, mults=(1, 2, 4), batch=128),
                "MNIST (CPU sweep's choice)": dict(channels=1, size=28, base=16, mults=(1, 2, 4), batch=32)}
    return {"MNIST (book)": dict(channels=1, size=28, base=32, mults=(1, 2, 4), batch=128),
            "CIFAR-sized": dict(channels=3, size=32, base=84, mults=(1, 2, 2, 4), batch=128)}


def run(tiny: bool = False, device=None, iters: int | None = None, rounds: int | None = None) -> list[dict]:
    device = torch.device(device) if device is not None else dl.pick_device()
    cuda = device.type == "cuda"
    # Every row of a configuration is warmed up, then the rows take turns, ``iters`` steps each, for
    # ``rounds`` rounds, and each row reports its median round: a machine whose speed drifts by 10%
    # over minutes (two CPU cores shared with others) then tilts no ratio between rows, which timing
    # the rows one after another did (2.14x and 2.5x for the same two rows in two runs).
    if tiny:
        iters, warmup, rounds = iters or 2, 1, rounds or 1
    elif cuda:
        iters, warmup, rounds = iters or 10, 10, rounds or 3
    else:
        iters, warmup, rounds = iters or 2, 2, rounds or 5
    schedule = dl.cosine_schedule(1000).to(device)
    peak = peak_flops(device)
    rows, convolutions = [], []
    for config_name, c in configurations(tiny, cuda).items():
        x0 = torch.rand(c["batch"], c["channels"], c["size"], c["size"], device=device) * 2 - 1
        variants = [("fp32 baseline", dict(amp=False, channels_last=False, fused=False, compiled=False)),
                    ("+ fused/foreach", dict(amp=False, channels_last=False, fused=True, compiled=False))]
        if cuda:
            variants.append(("+ bf16 autocast", dict(amp=True, channels_last=False, fused=True, compiled=False)))
        variants.append(("+ channels_last", dict(amp=cuda, channels_last=True, fused=True, compiled=False)))
        if not cuda:
            variants.append(("+ bf16 autocast", dict(amp=True, channels_last=True, fused=True, compiled=False)))
        if cuda and not tiny:
            variants.append(("+ torch.compile", dict(amp=True, channels_last=True, fused=True, compiled=True)))
        torch.manual_seed(0)
        ours = dl.UNet(c["channels"], c["base"], c["mults"]).to(device)
        flops = flops_per_step(ours, schedule, x0)
        models = [(f"ddpm_lib UNet, {label}", ours, opts) for label, opts in variants]
        best = [dict(amp=cuda, channels_last=True, fused=True, compiled=False)]
        if not cuda:  # a CPU may run a peer faster in either precision: try both, keep the faster
            best.append(dict(amp=True, channels_last=True, fused=True, compiled=False))
        for name, peer in peer_models(c["channels"], c["size"], count(ours), len(c["mults"])).items():
            for opts in best:
                label = f"{name}, {'bf16' if opts['amp'] else 'fp32'} channels_last" if not cuda else name
                models.append((label, peer.to(device), opts))
        # dl.train itself, with EMA, clipping and logging, beside the bare steps it should match.
        loop = "ddpm_lib UNet, dl.train itself (its defaults)"
        models.insert(len(variants), (loop, ours, dict(amp=dl.autocast_dtype(device) is not None)))
        timers = {loop: lambda: train_seconds(ours, schedule, x0, iters)}
        if device.type == "cpu":
            for _, model, _ in models:
                convolutions += dense_convolutions(model, x0, torch.zeros(len(x0), dtype=torch.long))
        for name, model, opts in models:
            if name != loop:
                step = make_step(copy.deepcopy(model), schedule, **opts)
                for _ in range(warmup):
                    step(x0).item()
                timers[name] = lambda step=step: measure(step, x0, iters)
        peak_mem = dict.fromkeys(timers, 0.0)

        def timed(name):
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            seconds = timers[name]()
            if cuda:
                peak_mem[name] = max(peak_mem[name], torch.cuda.max_memory_allocated(device) / 2**30)
            print(f"  {config_name}: {name}: {1000 * seconds:.1f} ms/step", flush=True)  # progress
            return seconds

        medians = interleaved_medians(timed, list(timers), rounds)
        for name, model, opts in models:
            seconds = medians[name]
            model_flops = flops if model is ours else flops_per_step(model, schedule, x0)
            rows.append({"config": config_name, "model": name, "params": count(model), "batch": c["batch"],
                         "images_per_s": c["batch"] / seconds, "ms_per_step": 1000 * seconds,
                         "peak_mem_gib": peak_mem[name] if cuda else None,
                         "mfu": model_flops / seconds / peak if peak else None, "peer": model is not ours,
                         "tflops": model_flops / seconds / 1e12, "precision": "bf16" if opts["amp"] else "float32"})
    if device.type == "cpu":  # after the rows, so that its timings never overlap theirs
        ceiling = cpu_ceiling(256 if tiny else 2048, repeats=3 if tiny else 5,
                              convolutions=list(dict.fromkeys(convolutions)))
        for precision in ceiling:  # the rows themselves are part of the maximum
            ceiling[precision] = max([ceiling[precision]] + [1e12 * r["tflops"] for r in rows
                                                             if r["precision"] == precision])
        for r in rows:
            r["of_ceiling"] = 1e12 * r["tflops"] / ceiling[r["precision"]]
            r["ceiling_tflops"] = {k: v / 1e12 for k, v in ceiling.items()}
    return rows


def format_table(rows: list[dict], device_label: str) -> str:
    lines = [f"Training-step throughput on {device_label}"]
    if rows and rows[0].get("ceiling_tflops"):
        c = rows[0]["ceiling_tflops"]
        lines.append(f"CPU ceiling (the fastest of a 2048^3 matmul, a 1x1 conv, the rows' own dense convs and "
                     f"the rows): float32 {1000 * c['float32']:.0f} GFLOP/s, bf16 {1000 * c['bf16']:.0f} GFLOP/s; "
                     "'of ceiling' is against the row's precision")
    for config in dict.fromkeys(r["config"] for r in rows):
        group = [r for r in rows if r["config"] == config]
        peers = [r["images_per_s"] for r in group if r["peer"]]
        fastest_peer = max(peers) if peers else None
        baseline = group[0]["images_per_s"]  # ours, plain float32 NCHW
        lines.append(f"\n{config} (batch {group[0]['batch']})")
        lines.append(f"{'model':<58}{'params':>11}{'img/s':>10}{'ms/step':>9}{'mem GiB':>9}{'GFLOP/s':>9}{'MFU':>7}"
                     f"{'vs fp32 baseline':>18}{'vs best peer':>14}")
        for r in group:
            mem = f"{r['peak_mem_gib']:.2f}" if r["peak_mem_gib"] is not None else "-"
            mfu = r["mfu"] if r["mfu"] is not None else r.get("of_ceiling")
            mfu = f"{100 * mfu:.1f}%" if mfu is not None else "-"
            ratio = f"{r['images_per_s'] / fastest_peer:.2f}x" if fastest_peer else "no peers"
            lines.append(f"{r['model']:<58}{r['params']:>11,}{r['images_per_s']:>10.0f}{r['ms_per_step']:>9.1f}"
                         f"{mem:>9}{1000 * r['tflops']:>9.0f}{mfu:>7}{r['images_per_s'] / baseline:>17.2f}x{ratio:>14}")
    return "\n".join(lines)


def main(argv=None):
    return cli(run, format_table, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
