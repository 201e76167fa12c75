"""Plot the CPU sweep (book/data/cpu_sweep.json): FD against minutes of training, one line a configuration.

    python scripts/plot_cpu_sweep.py     # writes book/images/cpu_sweep.png

A full-length run is drawn at its own wall time. A short run's minutes are its images divided by
its network's speed at its batch size over a full-length run on the idle machine (where there is
none, the speed measured just before the run started), so that other work on the machine during a
short run does not stretch it. Error bars are +/- 1.96 bootstrap standard deviations; the grey band is the
real-versus-real floor (sets of 1,000 training digits against the held-out digits, +/- 1.96
standard deviations over disjoint sets), the dashed line four times the floor. Open markers: a full
run's EMA weights scored again with the ancestral sampler (``cpu_sweep.py --rescore``); crosses: a
full run's final (raw) weights, DDIM-50, beside its EMA weights. The peer's runs (``diffusers``'
network with Q's recipe, each for another number of steps) form one line. Runs made on
another machine or in another precision than the sweep's first form their own series, drawn with
stars in dark colours.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def sustained_speed(run: dict, runs: list) -> float:
    """Images per second of ``run``'s network and batch size over a full-length run on the idle
    machine, where the sweep has one, else the speed measured just before ``run`` started."""
    def key(r):
        return json.dumps(r["model"], sort_keys=True), r["train"]["batch_size"], r["machine"], r["precision"]

    for r in runs:
        if r["length"] == "full" and key(r) == key(run):
            return r["images_seen"] / (60 * r["minutes"])
    return run["images_per_s"]


def main() -> None:
    results = json.loads((ROOT / "book" / "data" / "cpu_sweep.json").read_text())
    fig, ax = plt.subplots(figsize=(10.5, 4.6), dpi=120)
    floor, spread = results["floor"], results["floor_subsets"]
    ax.axhspan(spread["mean"] - 1.96 * spread["std"], spread["mean"] + 1.96 * spread["std"], color="0.85",
               label=f"real vs real floor, 8 sets: {spread['mean']:.1f} +/- 1.96 std")
    ax.axhline(4 * floor["value"], color="0.4", ls="--", lw=1, label=f"4x the floor of {floor['value']:.1f} (the goal)")
    ax.axvline(15, color="0.6", ls=":", lw=1, label="15 minutes (the budget)")
    first = results["runs"][0]["machine"], results["runs"][0]["precision"]

    peer_letters = ", ".join(r["config"].split(":")[0] for r in results["runs"] if "network" in r["model"])

    def series_of(r):
        if "network" in r["model"]:  # the peer's runs differ in their steps alone: one line
            return f"{peer_letters}: diffusers' network, Q's recipe", r["machine"], r["precision"]
        return r["config"], r["machine"], r["precision"]

    series = dict.fromkeys(series_of(r) for r in results["runs"])
    colours = plt.get_cmap("tab20").colors  # more configurations than the default cycle's ten colours
    others = 0  # series from another machine or precision so far
    dark = ("black", "darkred", "navy", "darkgreen", "darkorange", "darkviolet")
    for k, (name, machine, precision) in enumerate(series):
        runs = sorted((r for r in results["runs"] if series_of(r) == (name, machine, precision)),
                      key=lambda r: r["images_seen"])
        marker, label, colour = "o", name, colours[k % 20]
        if (machine, precision) != first:  # another machine or precision: stars, in dark colours
            # the letter alone where a circle series already names the configuration
            short = name.split(":")[0] if (name, *first) in series else name
            marker, label = "*", f"{short}, {precision} on {machine.split(' CPU')[0]}"
            colour, others = dark[others % len(dark)], others + 1
        minutes = [r["minutes"] if r["length"] == "full" else r["images_seen"] / sustained_speed(r, results["runs"]) / 60
                   for r in runs]
        fd = [r["fd"]["value"] for r in runs]
        err = [1.96 * r["fd"]["std"] for r in runs]
        ax.errorbar(minutes, fd, yerr=err, marker=marker, ms=4 if marker == "o" else 9, capsize=3, label=label,
                    color=colour)
        for r, m in zip(runs, minutes):  # the same EMA weights, drawn with the ancestral sampler
            if "fd_ancestral" in r:
                ax.errorbar([m], [r["fd_ancestral"]["value"]], yerr=[1.96 * r["fd_ancestral"]["std"]], marker=marker,
                            ms=6 if marker == "o" else 11, mfc="white", capsize=3, color=colour)
            if "fd_final" in r:  # its final weights, DDIM-50, a little to the right to stay legible
                ax.errorbar([m + 0.3], [r["fd_final"]["value"]], yerr=[1.96 * r["fd_final"]["std"]], marker="x",
                            ms=7, mew=2, capsize=3, color=colour)
    ax.plot([], [], "o", mfc="white", color="0.3", label="filled: DDIM-50; open: a full run, ancestral-50")
    ax.plot([], [], "x", mew=2, color="0.3", label="cross: a full run's final weights, DDIM-50")
    ax.set_yscale("log")
    ax.set_xlabel(f"minutes of training on 2 CPU cores (circles: {first[0].split(' CPU')[0]}, {first[1]})")
    ax.set_ylabel("FD to held-out digits (log scale)")
    ax.set_title("Time to quality: FD of 1,000 digits, +/- 1.96 bootstrap std")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    out = ROOT / "book" / "images" / "cpu_sweep.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
