"""Which of EDM's choices buys what, on chapter 6's network: short runs, one choice changed at a time.

    python scripts/edm_ablation.py            # every configuration (a stopped run resumes)
    python scripts/edm_ablation.py A D        # some of them
    python scripts/edm_ablation.py --full D K # some at chapter 6's full length, 1,000 digits each

Every configuration trains chapter 6's U-Net (base 16, mults 1, 2, 4) inside an
:class:`~ddpm_lib.EDMDenoiser` with chapter 6's optimiser settings (batch 32, learning rate 1e-3
with a warm-up and a cosine decay, EMA 0.998) for :data:`STEPS` steps, a sixth of chapter 6's run.
Configuration A is EDM as published (sigma_data 0.5, log-normal noise with P_mean -1.2 and P_std 1.2,
EDM's weighting and preconditioning); each other one changes one thing. The EMA weights draw
:data:`N` digits with EDM's deterministic sampler (18 steps, 35 evaluations) from the book's "edm"
noise set, the same noises for every configuration, scored by ``dl.book.scorer()`` against the 2,000
held-out digits; each configuration is compared with the best, paired. Results go to
``book/data/edm_ablation.json``, which the EDM chapter reads.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

import ddpm_lib as dl
from ddpm_lib import book

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "book" / "data" / "edm_ablation.json"
STEPS, N, SAMPLER_STEPS = 500, 500, 18
CHURNS = (0.0, 2.0, 5.0, 10.0, 20.0, 40.0)
FULL_STEPS, FULL_N, FULL_CHURN = 3100, 1000, 10.0  # chapter 6's length; the EDM chapter's rows
TRAIN = dict(batch_size=32, lr=1e-3, warmup=50, lr_decay="cosine", ema_decay=0.998, seed=0)
PAPER = dict(sigma_data=0.5, parametrization="edm", P_mean=-1.2, P_std=1.2, noise="lognormal", weighting="edm")
# name -> (what changes, the settings)
CONFIGS = {
    "A": ("EDM as published", {}),
    "B": ("sigma_data = 0.96, the digits' root mean square", dict(sigma_data=0.96)),
    "C": ("sigma_data = 0.62, the digits' standard deviation", dict(sigma_data=0.62)),
    "D": ("training noise: DDPM's cosine levels", dict(noise="cosine")),
    "E": ("training noise: log-normal, P_mean = 0", dict(P_mean=0.0)),
    "F": ("weighting: DDPM's, 1 / sigma^2 (the error in the noise)", dict(weighting="eps")),
    "G": ("no preconditioning: the network predicts the noise", dict(parametrization="eps")),
    "H": ("no preconditioning: the network predicts the image", dict(parametrization="x0")),
    "I": ("training noise: log-normal, P_mean = -2", dict(P_mean=-2.0)),
    "J": ("sigma_data = 0.35", dict(sigma_data=0.35)),
    "K": ("DDPM's choices: predict the noise, cosine levels, DDPM's weighting, sigma_data = 1",
          dict(parametrization="eps", noise="cosine", weighting="eps", sigma_data=1.0)),
}


def settings(name: str) -> dict:
    return {**PAPER, **CONFIGS[name][1]}


def model_and_loss(s: dict):
    """Chapter 6's U-Net in an EDMDenoiser, and the objective, for settings ``s``; the same initial
    weights for every configuration."""
    torch.manual_seed(0)
    net = dl.UNet(in_channels=1, base_dim=16, dim_mults=(1, 2, 4))
    denoiser = dl.EDMDenoiser(net, sigma_data=s["sigma_data"], parametrization=s["parametrization"])
    return denoiser, dl.EDMLoss(P_mean=s["P_mean"], P_std=s["P_std"], noise=s["noise"], weighting=s["weighting"])


def run(name: str, images: torch.Tensor, scorer, noise: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """Train configuration ``name`` (or resume its finished checkpoint), draw its digits and score them."""
    s = settings(name)
    denoiser, loss = model_and_loss(s)
    checkpoint = ROOT / "notebooks" / "checkpoints" / f"edm-ablation-{name}.pt"
    result = dl.train(denoiser, images=images, loss_fn=loss, steps=STEPS, checkpoint=checkpoint,
                      progress=False, log_every=STEPS, **TRAIN)
    ema = result.ema.eval()
    drawn = book.draw_digits(lambda n, start: dl.edm_sample(ema, noise[start:start + n], num_steps=SAMPLER_STEPS),
                             N, batch_size=250, scorer=scorer)
    score = drawn.score
    entry = {"change": CONFIGS[name][0], "settings": s, "steps": STEPS, "train_seconds": round(result.seconds, 1),
             "nfe": drawn.nfe, **{m: [score[m].value, score[m].std] for m in ("fd", "precision", "recall")}}
    print(f"{name}: {entry['change']:55s} FD {score.fd.value:7.1f} +- {1.96 * score.fd.std:5.1f}   "
          f"{result.seconds / 60:.1f} min", flush=True)
    return entry, score


def main(names) -> None:
    images, _ = book.digits("train")
    scorer, noise = book.scorer(), book.noise("edm", N)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    machine = dl.device_name("cpu")
    scores = {}
    for name in names or CONFIGS:  # a finished configuration is drawn again from its checkpoint
        entry, scores[name] = run(name, images, scorer, noise)
        results[name] = {**entry, "machine": results.get(name, {}).get("machine", machine)}
    best = min(scores, key=lambda k: scores[k].fd.value)
    for name, score in scores.items():  # paired: digit i of every configuration starts from noise i
        c = scorer.compare(score, scores[best], "fd", paired=True)
        results[name]["vs_best"] = {"best": best, "difference": [c.difference.value, c.difference.std],
                                    "direction": c.direction}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    results["churn"] = churn_sweep(best, scorer, noise)
    RESULTS.write_text(json.dumps({k: results[k] for k in sorted(results)}, indent=1) + "\n")
    print(f"best: {best}; written {RESULTS}")
    print(table({k: v for k, v in results.items() if k in CONFIGS}))


def churn_sweep(name: str, scorer, noise: torch.Tensor) -> dict:
    """The stochastic sampler's FD at each S_churn of :data:`CHURNS`, on configuration ``name``'s model."""
    ema = dl.load_model(ROOT / "notebooks" / "checkpoints" / f"edm-ablation-{name}.pt")
    sweep = {"config": name}
    for churn in CHURNS:
        score = book.draw_digits(lambda n, k: dl.edm_sample(
            ema, noise[k:k + n], num_steps=SAMPLER_STEPS, churn=churn, generator=torch.Generator().manual_seed(k)),
            N, batch_size=250, scorer=scorer).score
        sweep[f"{churn:g}"] = [score.fd.value, score.fd.std]
        print(f"{name}, churn {churn:g}: FD {score.fd.value:.1f} +- {1.96 * score.fd.std:.1f}", flush=True)
    return sweep


def table(results: dict) -> str:
    """The results as the Markdown table the EDM chapter shows."""
    from ddpm_lib.evidence import Estimate, format_interval, markdown_table

    rows = []
    for name, r in results.items():
        vs = r["vs_best"]
        diff = Estimate(*vs["difference"])
        verdict = "best" if vs["best"] == name else (
            f"worse than {vs['best']}" if vs["direction"] > 0 else f"not separated from {vs['best']}")
        rows.append([name, r["change"], format_interval(Estimate(*r["fd"])),
                     format_interval(Estimate(*r["precision"])), format_interval(Estimate(*r["recall"])),
                     "–" if vs["best"] == name else format_interval(diff), verdict])
    return markdown_table(["", "configuration", "FD [95%]", "precision [95%]", "recall [95%]",
                           "FD − best's, paired [95%]", "verdict"], rows)


def full(names) -> None:
    """Configurations ``names`` at chapter 6's full length (:data:`FULL_STEPS`), scored on
    :data:`FULL_N` digits with the deterministic sampler and with churn :data:`FULL_CHURN`."""
    images, _ = book.digits("train")
    scorer, noise = book.scorer(), book.noise("edm", FULL_N)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for name in names:
        s = settings(name)
        denoiser, loss = model_and_loss(s)
        result = dl.train(denoiser, images=images, loss_fn=loss, steps=FULL_STEPS, progress=False,
                          checkpoint=ROOT / "notebooks" / "checkpoints" / f"edm-full-{name}.pt",
                          log_every=FULL_STEPS, **{**TRAIN, "warmup": 200})
        ema = result.ema.eval()
        entry = {"change": CONFIGS[name][0], "settings": s, "steps": FULL_STEPS, "n": FULL_N,
                 "train_seconds": round(result.seconds, 1), "machine": dl.device_name("cpu")}
        for churn in (0.0, FULL_CHURN):
            score = book.draw_digits(lambda n, k: dl.edm_sample(
                ema, noise[k:k + n], num_steps=SAMPLER_STEPS, churn=churn,
                generator=torch.Generator().manual_seed(k)), FULL_N, batch_size=250, scorer=scorer).score
            entry[f"churn {churn:g}"] = {m: [score[m].value, score[m].std] for m in ("fd", "precision", "recall")}
            print(f"{name} full, churn {churn:g}: FD {score.fd.value:.1f} +- {1.96 * score.fd.std:.1f}  "
                  f"precision {score.precision.value:.3f} recall {score.recall.value:.3f}  "
                  f"{result.seconds / 60:.1f} min", flush=True)
        results.setdefault("full", {})[name] = entry
        RESULTS.write_text(json.dumps({k: results[k] for k in sorted(results)}, indent=1) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--full"]:
        full(sys.argv[2:])
    else:
        main(sys.argv[1:])
