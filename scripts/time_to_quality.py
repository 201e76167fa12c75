"""Time to quality on this machine: the book's best recipe against what a reader would otherwise run.

    pip install diffusers            # the peer's network, noise schedule, optimiser schedule and EMA
    python scripts/time_to_quality.py            # 15 minutes for the peer, 7.5 for the book
    python scripts/time_to_quality.py 2 1 200    # peer minutes, book minutes, digits (a quick try)

**The peer** is Hugging Face ``diffusers``' ``UNet2DModel`` at the size of the book's network
(width 16, three levels of ResNet blocks, 905,377 parameters: the CPU benchmark's peer) trained
with the recipe of diffusers' unconditional training example (``train_unconditional.py``, its
defaults): batch 16, AdamW with learning rate 1e-4, betas (0.95, 0.999), weight decay 1e-6,
epsilon 1e-8; 500 warm-up steps and a cosine decay (``get_scheduler("cosine")``); gradient
clipping at 1; float32; ``EMAModel`` with decay 0.9999, warm-up on, inv_gamma 1 and power 3/4;
``DDPMScheduler`` with 1,000 linear betas, predicting the noise with a mean squared error. It trains
for :data:`PEER_MINUTES` of wall clock, its steps planned from its speed measured just before.
Its EMA weights draw digits with the ancestral sampler (DDIM with eta = 1) in 50 steps.

**The book's recipe** is the EDM chapter's: chapter 6's U-Net (1.06M parameters) in an
``EDMDenoiser`` (EDM's preconditioning and weighting, sigma_data 0.5, DDPM's cosine noise levels),
``dl.train``'s defaults (bf16 where it measures faster, channels-last) with batch 32, learning rate
1e-3, a warm-up of min(200, steps / 10) and a cosine decay, EMA 0.998, for :data:`BOOK_MINUTES`,
planned the same way. Its EMA weights draw with EDM's deterministic sampler, 18 steps (35
evaluations).

Both draw the same :data:`N` starting noises (``book.noise("edm", N)``), scored by
``dl.book.scorer()`` against the 2,000 held-out digits and compared paired. Results go to
``book/data/time_to_quality.json``; the performance appendix reports them.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import ddpm_lib as dl
from ddpm_lib import book

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "book" / "data" / "time_to_quality.json"
sys.path.insert(0, str(ROOT / "bench"))  # the benchmark's peer network
from train_throughput import diffusers_unet  # noqa: E402

PEER_MINUTES, BOOK_MINUTES, N = 15.0, 7.5, 1000
PEER = dict(batch_size=16, lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8, warmup=500,
            grad_clip=1.0, ema_max_decay=0.9999, ema_inv_gamma=1.0, ema_power=0.75, T=1000)
BOOK = dict(batch_size=32, lr=1e-3, ema_decay=0.998)


def peer_trainer(images: torch.Tensor, steps: int, seed: int = 0):
    """diffusers' unconditional example, its training loop reduced to what runs on one CPU process:
    returns ``(model, ema, step)``, where ``step()`` takes one training step."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    torch.manual_seed(seed)
    model = diffusers_unet(16)
    scheduler = DDPMScheduler(num_train_timesteps=PEER["T"], beta_schedule="linear")
    opt = torch.optim.AdamW(model.parameters(), lr=PEER["lr"], betas=PEER["betas"],
                            weight_decay=PEER["weight_decay"], eps=PEER["eps"])
    lr_schedule = get_scheduler("cosine", optimizer=opt, num_warmup_steps=PEER["warmup"],
                                num_training_steps=steps)
    ema = EMAModel(model.parameters(), decay=PEER["ema_max_decay"], use_ema_warmup=True,
                   inv_gamma=PEER["ema_inv_gamma"], power=PEER["ema_power"])
    x = images.float().div(127.5).sub(1).unsqueeze(1)  # [N, 1, 28, 28] in [-1, 1], as the example
    g = torch.Generator().manual_seed(seed)
    order: list[torch.Tensor] = []

    def step() -> float:
        if not order:  # a fresh shuffle each epoch, the last batch kept short (the example's loader)
            order.extend(torch.randperm(len(x), generator=g).split(PEER["batch_size"]))
        x0 = x[order.pop(0)]
        eps = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, PEER["T"], (len(x0),), generator=g)
        loss = F.mse_loss(model(scheduler.add_noise(x0, eps, t), t), eps)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), PEER["grad_clip"])
        opt.step()
        lr_schedule.step()
        opt.zero_grad()
        ema.step(model.parameters())
        return loss.item()

    return model, ema, step


def train_peer(images: torch.Tensor, minutes: float) -> tuple[torch.nn.Module, dict]:
    _, _, probe = peer_trainer(images, steps=10_000)  # a throw-away copy, for the speed
    seconds = book.estimate_run(lambda k: [probe() for _ in range(k)], 1, probe_steps=20)
    steps = int(minutes * 60 / seconds)
    model, ema, step = peer_trainer(images, steps)
    start = time.perf_counter()
    losses = [step() for _ in range(steps)]
    seconds = time.perf_counter() - start
    ema.copy_to(model.parameters())  # the EMA weights, which the example's pipeline samples
    print(f"peer: {steps:,} steps in {seconds / 60:.1f} min, final loss {sum(losses[-100:]) / 100:.4f}",
          flush=True)
    return model.eval(), {"steps": steps, "train_seconds": round(seconds, 1), "batch_size": PEER["batch_size"],
                          "amp": "float32"}


def book_denoiser() -> dl.EDMDenoiser:
    torch.manual_seed(0)
    return dl.EDMDenoiser(dl.UNet(in_channels=1, base_dim=16, dim_mults=(1, 2, 4)), sigma_data=0.5)


def train_book(images: torch.Tensor, minutes: float) -> tuple[torch.nn.Module, dict]:
    loss_fn = dl.EDMLoss(noise="cosine", weighting="edm")

    def run(k):
        dl.train(book_denoiser(), images=images, loss_fn=loss_fn, steps=k, batch_size=BOOK["batch_size"],
                 progress=False, log_every=k)

    steps = int(minutes * 60 / book.estimate_run(run, 1, probe_steps=20))
    result = dl.train(book_denoiser(), images=images, loss_fn=loss_fn, steps=steps, warmup=min(200, steps // 10),
                      lr_decay="cosine", seed=0, progress=False, log_every=steps, **BOOK)
    print(f"book: {steps:,} steps in {result.seconds / 60:.1f} min", flush=True)
    return result.ema.eval(), {"steps": steps, "train_seconds": round(result.seconds, 1),
                               "batch_size": BOOK["batch_size"],
                               "amp": str(dl.autocast_dtype("cpu") or torch.float32)}


def main(peer_minutes: float = PEER_MINUTES, book_minutes: float = BOOK_MINUTES, n: int = N) -> None:
    images, _ = book.digits("train")
    scorer, noise = book.scorer(), book.noise("edm", n)
    peer, peer_run = train_peer(images, peer_minutes)
    ours, book_run = train_book(images, book_minutes)
    linear = dl.linear_schedule(PEER["T"])
    draws = {
        "peer": book.draw_digits(lambda k, i: dl.ddim_sample(
            peer, linear, noise[i:i + k], num_steps=50, eta=1.0, generator=torch.Generator().manual_seed(i)),
            n, batch_size=250, scorer=scorer),
        "book": book.draw_digits(lambda k, i: dl.edm_sample(ours, noise[i:i + k], num_steps=18),
                                 n, batch_size=250, scorer=scorer),
    }
    c = scorer.compare(draws["book"].score, draws["peer"].score, "fd", paired=True)
    runs = {"peer": peer_run, "book": book_run}
    result = {"machine": dl.device_name("cpu"), "n": n, "peer_recipe": PEER, "book_recipe": BOOK,
              "book_minus_peer_fd": [c.difference.value, c.difference.std], "direction": c.direction}
    for name, drawn in draws.items():
        s = drawn.score
        result[name] = {**runs[name], "nfe": drawn.nfe, "params": sum(p.numel() for p in
                        (peer if name == "peer" else ours).parameters()),
                        **{m: [s[m].value, s[m].std] for m in ("fd", "precision", "recall")}}
        print(f"{name}: FD {s.fd.value:.1f} +- {1.96 * s.fd.std:.1f}, precision {s.precision.value:.3f}, "
              f"recall {s.recall.value:.3f} ({drawn.nfe} evaluations)", flush=True)
    print(f"book - peer, paired: {c.difference.value:.1f} +- {1.96 * c.difference.std:.1f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written {RESULTS}")


if __name__ == "__main__":
    main(*(float(a) for a in sys.argv[1:3]), *(int(a) for a in sys.argv[3:4]))
