"""Choose the book's DDPM training configuration by time to quality on a CPU.

    python scripts/cpu_sweep.py                  # rank every configuration with a short run
    python scripts/cpu_sweep.py --full A B       # confirm configurations A and B at full length
    python scripts/cpu_sweep.py --rescore        # the full runs' final weights, the ancestral sampler

Each configuration trains for a budget of wall-clock minutes on the 8,000 training digits
(``book.digits("train")``); its steps are set from its own speed, measured on this machine just
before it starts. The EMA weights are then scored by the book's scorer (``dl.book.scorer()``),
as every chapter scores a model: 1,000 digits drawn with DDIM (50 steps, eta 0), their Frechet
distance (FD) to the 2,000 held-out digits in the features of the book's MNIST classifier, with
its standard error and 95% interval under the book's one rule (random halves). A full run's final
(raw) weights are scored the same way, with the paired difference between the two. ``--rescore`` adds that to full runs made before it was measured, draws the full
runs' digits again from the same starting noise with the ancestral sampler (eta 1, same 50 steps),
the best sampler at 50 evaluations in chapter 8, and scores chapter 6's published model with both
samplers. The real-versus-real floor is measured the same way (1,000 training digits against the
held-out ones). Results accumulate in
``book/data/cpu_sweep.json`` under one protocol (:data:`PROTOCOL`; a file measured under another
is refused, never mixed with) (a run that stops resumes where it left off: training from its
checkpoint, finished scores from the file), which the performance appendix plots. Each run records
the machine and the precision it trained in; a configuration already scored on one machine is run
again on another, not skipped. Configurations R, T and U train the peer of the CPU benchmark,
``diffusers``' UNet2DModel, with the recipe of the book's configuration (Q) for Q's steps, 1.36
times and twice as many: how long the peer takes to reach Q's quality (``pip install diffusers``
first).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import ddpm_lib as dl
from ddpm_lib import book
from ddpm_lib.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))  # the benchmark's peer network and its dl.train timing
from train_throughput import diffusers_unet, train_seconds  # noqa: E402

RESULTS = ROOT / "book" / "data" / "cpu_sweep.json"
SHORT_MINUTES, FULL_MINUTES = 5.0, 15.0
N_SAMPLES, SAMPLE_SEED = 1000, 1234
PROTOCOL = (f"FD of {N_SAMPLES} DDIM-50 samples against the 2,000 held-out digits by dl.book.scorer(): the "
            "classifier trained on the book's training digits, 95% intervals from random halves")


def here() -> dict:
    """The machine and the training precision of a run made now: a run's minutes and its precision
    belong to the CPU it ran on (the same flags can hide a several-fold difference in bf16 speed)."""
    dtype = dl.autocast_dtype("cpu")
    return {"machine": dl.device_name("cpu"), "precision": str(dtype)[6:] if dtype else "float32"}


def place_of(train_args: dict) -> dict:
    """:func:`here`, for a run with these train arguments (one that turns amp off trains in float32)."""
    place = here()
    if train_args.get("amp") == "off":
        place["precision"] = "float32"
    return place


def same_place(run: dict, place: dict) -> bool:
    return all(run[k] == v for k, v in place.items())


def slug(run_config: str, label: str, place: dict) -> str:
    """The checkpoint's file name: E-full, or E-full-bfloat16 for a run trained in bf16."""
    suffix = "" if place["precision"] == "float32" else "-" + place["precision"]
    return run_config.split(":")[0] + "-" + label + suffix


def config(base_dim: int, batch_size: int, lr: float, ema_decay: float = 0.998, steps: int | None = None,
           peer: bool = False, dim_mults: tuple | None = None, **loss_args):
    """(network arguments, train arguments, DDPMLoss arguments) of one configuration. ``steps`` fixes
    the number of steps instead of deriving it from the speed probe and the budget. ``peer``: train
    ``diffusers``' UNet2DModel of width ``base_dim``, the CPU benchmark's peer, instead of the book's
    U-Net (at width 16: 905,377 parameters, the closest to the book's 1,056,353).
    ``dim_mults``: the U-Net's, when not the book's (1, 2, 4)."""
    train_args = {"batch_size": batch_size, "lr": lr, "ema_decay": ema_decay}
    if steps:
        train_args["steps"] = steps
    if peer:
        # The peer's faster precision at batch 32 on the AMD EPYC: float32 (121 and 135 images/s
        # against 103 and 121 in bf16, in two runs of bench/train_throughput.py --device cpu);
        # amp="auto" would pick bf16 there.
        train_args["amp"] = "off"
        return {"network": "diffusers UNet2DModel", "width": base_dim}, train_args, loss_args
    model_args = {"base_dim": base_dim} if dim_mults is None else {"base_dim": base_dim, "dim_mults": dim_mults}
    return model_args, train_args, loss_args


def network(model_args: dict) -> torch.nn.Module:
    """The network a configuration trains: the book's U-Net, or the peer's."""
    if model_args.get("network") == "diffusers UNet2DModel":  # pip install diffusers first
        return diffusers_unet(model_args["width"])
    return dl.UNet(1, **{"dim_mults": (1, 2, 4), **model_args})


def load_run(r: dict, path: Path, ema: bool = True) -> torch.nn.Module:
    """A full run's EMA (or final) weights from its checkpoint; the peer's network is rebuilt here,
    as dl.load_model rebuilds only ddpm_lib's own models."""
    if "network" not in r["model"]:
        return dl.load_model(path, ema=ema)
    model = network(r["model"])
    model.load_state_dict(load_checkpoint(path)["ema" if ema else "model"])
    return model.eval()


# Every run: cosine noise schedule, T = 1000, AdamW, gradient clipping at 1, channels_last, the
# precision dl.train picks. The names key the results file, so they never change.
CONFIGS = {
    "A: base 16, batch 128, lr 2e-3": config(16, 128, 2e-3, ema_decay=0.999),
    "B: base 16, batch 64, lr 1e-3": config(16, 64, 1e-3),
    "C: B + min-SNR-5": config(16, 64, 1e-3, min_snr=5.0),
    "D: base 32, batch 64, lr 1e-3": config(32, 64, 1e-3),
    "E: base 16, batch 32, lr 1e-3": config(16, 32, 1e-3),
    "F: base 16, batch 32, lr 2e-3": config(16, 32, 2e-3),
    "G: base 8, batch 32, lr 2e-3": config(8, 32, 2e-3),
    "H: base 16, batch 16, lr 1e-3": config(16, 16, 1e-3),
    "I: base 8, batch 16, lr 1e-3": config(8, 16, 1e-3),
    "J: base 12, batch 32, lr 2e-3": config(12, 32, 2e-3),
    "K: base 8, batch 32, lr 1e-3": config(8, 32, 1e-3),
    "L: base 8, batch 32, lr 3e-3": config(8, 32, 3e-3),
    "M: base 12, batch 32, lr 3e-3": config(12, 32, 3e-3),
    "N: base 12, batch 32, lr 1.5e-3": config(12, 32, 1.5e-3),
    "O: base 8, batch 32, lr 5e-3": config(8, 32, 5e-3),
    "P: E + min-SNR-5": config(16, 32, 1e-3, min_snr=5.0),
    # P with the steps of E's full run on the AMD EPYC, where P's speed probe (189 images/s, against
    # the ~160 sustained) planned 5,319 steps and ran 17.9 minutes: E and P then differ in the loss
    # weighting alone, and the run fits the budget.
    "Q: P, 4,290 steps": config(16, 32, 1e-3, min_snr=5.0, steps=4290),
    # Time to quality against a peer: Q's recipe and steps, with diffusers' network in its place.
    "R: Q with diffusers' UNet2DModel": config(16, 32, 1e-3, min_snr=5.0, steps=4290, peer=True),
    # The peer for longer, to find how long it takes to reach Q's quality: at R's pace (4,290 steps
    # in 18.8 minutes) twice Q's 12.8 minutes are about 5,840 steps; this run went faster (22.3 min).
    "T: R, 5,840 steps": config(16, 32, 1e-3, min_snr=5.0, steps=5840, peer=True),
    # Twice Q's steps: the benchmark times the two networks' training steps within 3% of each other
    # at batch 32, so twice the steps are about twice the training time.
    "U: R, 8,580 steps": config(16, 32, 1e-3, min_snr=5.0, steps=8580, peer=True),
    # Less arithmetic for its parameters: base 8 with most channels at 7x7 (762,833 parameters; a
    # training image costs 0.45 GFLOP per million parameters, against 0.71 for Q's network) ran at
    # 250 images/s in dl.train against Q's network's 172 on the AMD EPYC; 6,000 steps are about 13
    # to 15 minutes there. lr 2e-3, G's, for base 8.
    "S: base 8, dim_mults (1, 2, 8), lr 2e-3, min-SNR-5": config(8, 32, 2e-3, min_snr=5.0, steps=6000,
                                                                 dim_mults=(1, 2, 8)),
}


def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {"runs": []}


def save_results(results: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


def fd_of(score) -> dict:
    """A score's FD as the JSON record: value, standard error and 95% interval."""
    return {key: score.fd[key] for key in ("value", "std", "low", "high")}


def images_per_second(model_args: dict, batch_size: int, steps: int = 20, amp: str = "auto") -> float:
    """The training speed of one configuration here: a few steps of dl.train, after one of warm-up."""
    images, _ = book.digits("train")
    seconds = train_seconds(network(model_args), dl.cosine_schedule(1000), images, steps, batch_size=batch_size,
                            amp=amp)  # images on the CPU: trains there
    return batch_size / seconds


def draw(model, eta: float = 0.0) -> tuple[torch.Tensor, float]:
    """N_SAMPLES digits drawn with 50 sampler steps from the sweep's fixed x_T, and the sampling
    time: eta 0 is DDIM (the sweep's protocol), eta 1 the ancestral sampler on the same uniform
    grid, the best sampler at 50 evaluations in the book's sampler lab (chapter 8)."""
    schedule = dl.cosine_schedule(1000)
    model = model.to(memory_format=torch.channels_last).eval()
    g = torch.Generator().manual_seed(SAMPLE_SEED)
    x_T = torch.randn(N_SAMPLES, 1, 28, 28, generator=g)
    start = time.perf_counter()
    samples = torch.cat([dl.ddim_sample(model, schedule, x, num_steps=50, eta=eta,
                                        generator=torch.Generator().manual_seed(SAMPLE_SEED + k))
                         for k, x in enumerate(x_T.split(250))])
    return samples.clamp(-1, 1), time.perf_counter() - start


def score(model, judge, eta: float = 0.0) -> dict:
    """FD of the digits of :func:`draw` by the scorer ``judge``, and the sampling time."""
    samples, seconds = draw(model, eta)
    return {**fd_of(judge.score(samples)), "sample_seconds": seconds}


def final_against_ema(final, ema_score, judge) -> dict:
    """The final (raw) weights scored like the EMA ones, and the paired difference FD(final) - FD(EMA).

    The learning rate decays to zero by the last step, so the raw weights have stopped moving
    while an EMA of decay 0.998 still averages the last ~500 steps, made with larger steps: which
    samples better is a measurement, not a rule. Both draw from the same x_T, so the difference,
    taken on the same halves, is much sharper than either FD. ``ema_score``: the EMA weights'
    score of their digits from :func:`draw`, drawn once for both.
    """
    samples, seconds = draw(final)
    final_score = judge.score(samples)
    change = judge.compare(final_score, ema_score, "fd", paired=True).difference
    return {"fd_final": {**fd_of(final_score), "sample_seconds": seconds},
            "final_minus_ema": {key: change[key] for key in ("value", "std", "low", "high")}}


def run(name: str, minutes: float, results: dict, workdir: Path, judge) -> None:
    model_args, train_args, loss_args = CONFIGS[name]
    label, place = "full" if minutes == FULL_MINUTES else "short", place_of(train_args)
    if any(r["config"] == name and r["length"] == label and same_place(r, place) for r in results["runs"]):
        print(f"{name} ({label}): already scored on {place['machine']} in {place['precision']}", flush=True)
        return
    train_args = dict(train_args)
    fixed = train_args.pop("steps", None)
    speed = images_per_second(model_args, train_args["batch_size"], amp=train_args.get("amp", "auto"))
    steps = fixed or int(minutes * 60 * speed / train_args["batch_size"])
    print(f"{name} ({label}): {speed:.0f} images/s here, so {steps} steps "
          f"{'(fixed)' if fixed else f'in {minutes:g} minutes'}", flush=True)
    images, _ = book.digits("train")
    torch.manual_seed(0)
    model = network(model_args)
    loss = dl.DDPMLoss(dl.cosine_schedule(1000), **loss_args)
    result = dl.train(model, images=images, loss_fn=loss, steps=steps, warmup=min(200, steps // 10),
                      lr_decay="cosine", device="cpu", progress=False,
                      checkpoint=workdir / f"{slug(name, label, place)}.pt",
                      checkpoint_every=200, log_every=50, **train_args)
    samples, seconds = draw(result.ema)
    ema_score = judge.score(samples)
    fd = {**fd_of(ema_score), "sample_seconds": seconds}
    results["runs"].append({"config": name, "length": label, **place, "minutes": result.seconds / 60, "steps": steps,
                            "images_seen": steps * train_args["batch_size"], "images_per_s": speed,
                            "params": sum(p.numel() for p in model.parameters()), "model": model_args,
                            "train": train_args, "loss": loss_args, "final_loss": sum(result.losses[-50:]) / 50,
                            "fd": fd})
    save_results(results)
    print(f"  FD {fd['value']:.1f} [{fd['low']:.1f}, {fd['high']:.1f}] after {result.seconds / 60:.1f} min; "
          f"sampling {fd['sample_seconds']:.0f} s", flush=True)
    if label == "full":
        results["runs"][-1].update(final_against_ema(model, ema_score, judge))
        save_results(results)
        report_final(results["runs"][-1])


def report_final(r: dict) -> None:
    d = r["final_minus_ema"]
    print(f"{r['config']} (full): final weights DDIM-50 FD {r['fd_final']['value']:.1f} +/- "
          f"{r['fd_final']['std']:.1f}; final - EMA {d['value']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]",
          flush=True)


def rescore(results: dict, workdir: Path, judge) -> None:
    """Score each full run's EMA weights, from its checkpoint, with the ancestral sampler too, and
    its final weights against its EMA ones; and chapter 6's published model with both samplers."""
    for r in results["runs"]:
        place = place_of(r["train"])
        if r["length"] != "full" or "fd_final" in r or not same_place(r, place):
            continue
        path = workdir / f"{slug(r['config'], 'full', place)}.pt"
        ema_score = judge.score(draw(load_run(r, path))[0])
        r.update(final_against_ema(load_run(r, path, ema=False), ema_score, judge))
        save_results(results)
        report_final(r)
    for r in results["runs"]:
        place = place_of(r["train"])
        if r["length"] != "full" or "fd_ancestral" in r or not same_place(r, place):
            continue  # a checkpoint lives on the machine that trained it
        results["protocol_ancestral"] = ("fd_ancestral: the same, drawn from the same x_T with the ancestral "
                                         "sampler (DDIM eta 1, 50 steps on the uniform grid)")
        path = workdir / f"{slug(r['config'], 'full', place)}.pt"
        r["fd_ancestral"] = score(load_run(r, path), judge, eta=1.0)
        save_results(results)
        print(f"{r['config']} (full): ancestral-50 FD {r['fd_ancestral']['value']:.1f} "
              f"+/- {r['fd_ancestral']['std']:.1f} (DDIM-50: {r['fd']['value']:.1f})", flush=True)
    if "published" not in results:  # chapter 6's published model, configuration E trained again
        model = dl.pretrained("mnist-ddpm")
        results["published"] = {"model": "mnist-ddpm", "fd": score(model, judge),
                                "fd_ancestral": score(model, judge, eta=1.0)}
        save_results(results)
    fd, anc = results["published"]["fd"], results["published"]["fd_ancestral"]
    print(f"published mnist-ddpm: DDIM-50 FD {fd['value']:.1f} +/- {fd['std']:.1f}, "
          f"ancestral-50 {anc['value']:.1f} +/- {anc['std']:.1f}", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", nargs="*", default=None, help="letters of the configurations to run in full")
    parser.add_argument("--short", nargs="*", default=None, help="letters of the configurations to rank (default all)")
    parser.add_argument("--rescore", action="store_true",
                        help="score the full runs' final weights and the ancestral sampler (50 steps) too, "
                             "and chapter 6's published model with both samplers, then stop")
    parser.add_argument("--workdir", default=str(ROOT / "checkpoints" / "sweep"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    judge = book.scorer()  # the book's scorer, against the held-out digits
    results = load_results()
    if results.get("protocol", PROTOCOL) != PROTOCOL:
        raise SystemExit(f"{RESULTS} was measured under another protocol ({results['protocol']!r}); "
                         "its numbers do not mix with this one's: move it aside to start a new sweep")
    if "floor" not in results:
        train_digits, _ = book.digits("train")
        results["floor"] = fd_of(judge.score(dl.to_model_range(train_digits[:N_SAMPLES])))
        results["protocol"] = PROTOCOL
        save_results(results)
    if "floor_subsets" not in results:
        # Disjoint sets of 1,000 training digits: the real spread of FD at this n, against which
        # the rule's standard error can be checked.
        train_digits, _ = book.digits("train")
        parts = [p for p in dl.to_model_range(train_digits).split(N_SAMPLES) if len(p) == N_SAMPLES]
        fds = torch.tensor([judge.score(p).fd.value for p in parts], dtype=torch.float64)
        results["floor_subsets"] = {"values": fds.tolist(), "mean": float(fds.mean()), "std": float(fds.std())}
        save_results(results)
    print(f"floor: FD {results['floor']['value']:.1f}; over disjoint sets "
          f"{results['floor_subsets']['mean']:.1f} +/- {results['floor_subsets']['std']:.1f}", flush=True)
    if args.rescore:
        rescore(results, workdir, judge)
        return
    if args.full is None:
        names = [n for n in CONFIGS if args.short is None or n.split(":")[0] in args.short]
        minutes = SHORT_MINUTES
    else:
        names = [n for n in CONFIGS if n.split(":")[0] in args.full]
        minutes = FULL_MINUTES
    for name in names:
        run(name, minutes, results, workdir, judge)


if __name__ == "__main__":
    main()
