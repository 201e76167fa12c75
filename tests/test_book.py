"""The chapters' helpers (ddpm_lib.book) and the rule that the core library never needs them."""

import ast
import time
from pathlib import Path

import pytest
import torch

import ddpm_lib as dl
from ddpm_lib import book
from ddpm_lib.vae import VAE

PACKAGE = Path(dl.__file__).parent
CORE = ["schedule", "diffusion", "sampling", "ode", "timesteps", "editing", "flow", "edm", "steps", "latent", "distill", "evidence", "analytic", "embedding",
        "blocks", "unet", "train", "loop", "ema", "precision", "distributed", "checkpoint", "hub", "data", "metrics",
        "vae", "gan", "plotting", "utils", "files", "scoring"]


def imported_modules(name):
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.add(node.module or "")
            found.update(alias.name for alias in node.names if node.module is None)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ddpm_lib"):
            found.add(node.module.removeprefix("ddpm_lib").lstrip("."))
    return found


def test_the_core_imports_nothing_from_the_book_helpers_and_the_gan_no_trainer():
    assert sorted(CORE + ["book", "protocol", "__init__"]) == sorted(p.stem for p in PACKAGE.glob("*.py"))
    for name in CORE:  # (protocol is the book's measuring half, re-exported by book)
        assert not {"book", "protocol"} & imported_modules(name), name
    assert "train" not in imported_modules("gan")  # the GAN needs the shared helpers, not the DDPM loop


def test_every_module_reads_in_one_sitting():
    for path in PACKAGE.glob("*.py"):
        assert len(path.read_text().splitlines()) <= 250, path.name


def test_smoke_mode_reads_the_environment(monkeypatch):
    for value, expected in (("1", True), ("true", True), ("0", False), ("", False), ("False", False)):
        monkeypatch.setenv("DDPM_BOOK_SMOKE", value)
        assert book.smoke_mode() is expected
    monkeypatch.delenv("DDPM_BOOK_SMOKE")
    assert book.smoke_mode() is False


def test_start_chapter_seeds_and_reports_where_it_runs(capsys, monkeypatch):
    monkeypatch.setenv("DDPM_BOOK_SMOKE", "1")
    chapter = dl.start_chapter(seed=7)
    first = torch.rand(3)
    dl.start_chapter(seed=7)
    assert torch.equal(torch.rand(3), first)
    out = capsys.readouterr().out
    assert "device: " in out and "mode: smoke" in out
    assert chapter.smoke and chapter.summary().startswith("This chapter ran in 0 min")


def test_timed_returns_the_result_and_a_duration():
    out, seconds = book.timed(lambda: sum(range(10_000)), device="cpu")
    assert out == sum(range(10_000)) and 0 <= seconds < 5


def test_in_batches_covers_every_item_once_in_order():
    calls = []

    def numbers(n, start):
        calls.append((n, start))
        return torch.arange(start, start + n)

    assert torch.equal(book.in_batches(numbers, 1001, batch_size=300), torch.arange(1001))
    assert calls == [(300, 0), (300, 300), (300, 600), (101, 900)]
    with pytest.raises(ValueError, match="positive"):
        book.in_batches(numbers, 0)


def test_load_trained_prefers_the_readers_checkpoint_then_the_published_weights(tmp_path, monkeypatch, capsys):
    from ddpm_lib import hub

    monkeypatch.setenv("DDPM_BOOK_CHECKPOINTS", str(tmp_path / "drive"))
    monkeypatch.setenv("DDPM_BOOK_SMOKE", "0")
    monkeypatch.setenv("DDPM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(hub, "CHECKOUT", tmp_path / "checkout")
    torch.manual_seed(0)
    published = VAE(latent_dim=2, width=4)
    sha256 = hub.save_weights(tmp_path / "checkout" / "vae.safetensors", published, dtype=torch.float32)
    monkeypatch.setattr(hub, "PUBLISHED", {"vae": {"file": "vae.safetensors", "sha256": sha256}})

    model, source = book.load_trained("vae", device="cpu")
    assert source == "the published weights 'vae'" and not model.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), published.state_dict().values()))

    written = VAE(latent_dim=4, width=4)  # the reader's weights, as save_for_publishing writes them
    hub.save_weights(tmp_path / "drive" / "vae.safetensors", written, dtype=torch.float32)
    model, source = book.load_trained("vae", device="cpu")
    assert source == f"your weights {tmp_path / 'drive' / 'vae.safetensors'}" and model.config == written.config

    own = VAE(latent_dim=3, width=4)  # a checkpoint comes first
    dl.save_model(tmp_path / "drive" / "vae.pt", own)
    assert book.checkpoint_path("vae") == tmp_path / "drive" / "vae.pt"
    model, source = book.load_trained("vae", device="cpu")
    assert source == f"your checkpoint {tmp_path / 'drive' / 'vae.pt'}" and model.config == own.config
    assert "vae: VAE from your checkpoint" in capsys.readouterr().out
    monkeypatch.setenv("DDPM_BOOK_SMOKE", "1")
    assert book.checkpoint_path("vae").name == "vae_smoke.pt"
    with pytest.raises(hub.WeightsError, match="no published weights named 'gan'"):
        book.load_trained("gan")


def test_estimate_run_scales_the_timed_probe():
    calls = []

    def run(k):
        calls.append(k)
        time.sleep(0.01 * k)  # 10 ms a step

    seconds = book.estimate_run(run, 1000, probe_steps=4)
    assert calls == [1, 4]  # one untimed step that pays the one-off costs, then the timed probe
    assert seconds >= 10  # 1000 steps of at least 10 ms (sleep never returns early)
    with pytest.raises(ValueError, match="probe_steps"):
        book.estimate_run(run, 10, probe_steps=0)


def test_digits_split_the_test_digits_once_and_shrink_in_smoke_mode(monkeypatch):
    import ddpm_lib.book as b

    labels = torch.arange(100) % 10
    images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1).expand(100, 28, 28)
    monkeypatch.setattr(b, "load_mnist", lambda split: (images, labels))
    monkeypatch.setenv("DDPM_BOOK_SMOKE", "0")
    train, held = b.digits("train"), b.digits("held_out")
    assert len(train[0]) == 80 and len(held[0]) == 20  # 20% held out, 2 of each digit
    assert torch.bincount(held[1]).tolist() == [2] * 10
    ids = torch.cat([train[0][:, 0, 0], held[0][:, 0, 0]]).long()
    assert sorted(ids.tolist()) == list(range(100))  # disjoint and complete
    assert torch.equal(b.digits("train")[0], train[0])  # fixed
    assert len(b.digits("all")[0]) == 100
    monkeypatch.setattr(b, "SMOKE_DIGITS", 8)
    monkeypatch.setenv("DDPM_BOOK_SMOKE", "1")
    assert len(b.digits("train")[0]) == 8
    with pytest.raises(ValueError, match="part must be"):
        b.digits("test")


def test_size_follows_smoke_mode_and_the_work_fraction(monkeypatch):
    monkeypatch.setenv("DDPM_BOOK_SMOKE", "1")
    assert book.size(3000, smoke=40) == 40
    monkeypatch.setenv("DDPM_BOOK_SMOKE", "0")
    monkeypatch.delenv("DDPM_BOOK_FRACTION", raising=False)
    assert book.size(3000, smoke=40) == 3000
    monkeypatch.setenv("DDPM_BOOK_FRACTION", "0.25")
    assert book.size(3000, smoke=40) == 750 and book.size(1, smoke=40) == 1
    for bad in ("0", "1.5", "quarter"):
        monkeypatch.setenv("DDPM_BOOK_FRACTION", bad)
        with pytest.raises(ValueError, match="DDPM_BOOK_FRACTION"):
            book.size(3000, smoke=40)


def test_save_for_publishing_keeps_float16_only_when_the_samples_are_unchanged(tmp_path, monkeypatch):
    import ddpm_lib.book as b
    from ddpm_lib.gan import Generator, gan_sample

    monkeypatch.setenv("DDPM_BOOK_CHECKPOINTS", str(tmp_path))
    monkeypatch.setenv("DDPM_BOOK_SMOKE", "0")
    # Held-out digits: noise images, enough for a 128-dimensional covariance.
    real = (torch.rand(300, 28, 28, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    monkeypatch.setattr(b, "digits", lambda part: (real, torch.zeros(300, dtype=torch.long)))
    monkeypatch.setattr(dl.protocol, "_SCORERS", {})  # a scorer built on these stand-in digits
    torch.manual_seed(0)
    G = Generator(8, width=4)

    def draw(model, n):
        return gan_sample(model, n, generator=torch.Generator().manual_seed(1))

    report = b.save_for_publishing("g", G, draw, n=300)
    # float16 moves each weight by at most 2^-11 of itself, so the images barely move and the paired
    # change of FD lies far inside the FD's own standard error: float16 is kept.
    assert report["dtype"] == torch.float16 and report["max_pixel_difference"] < 1e-2
    change = report["change"].difference
    assert report["change"].paired and abs(change.high - change.low) < report["fd"]["float32"].std
    assert report["file"] == tmp_path / "g.safetensors" and report["sha256"] == dl.hub.sha256_of(report["file"])
    assert set(report["fd"]) == {"float32", "float16"}

    def fragile(model, n):  # a model whose output flips when its weights are rounded
        images = draw(model, n)
        return images if next(model.parameters()).sum() == next(G.parameters()).sum() else -images

    assert b.save_for_publishing("g", G, fragile, n=300)["dtype"] == torch.float32
    monkeypatch.setenv("DDPM_BOOK_SMOKE", "1")  # a test run leaves the full run's file alone
    assert b.save_for_publishing("g", G, draw, n=300)["file"] == tmp_path / "g_smoke.safetensors"


def test_estimate_run_scales_a_timed_probe_and_says_how_to_shorten(monkeypatch, capsys):
    calls = []
    seconds = book.estimate_run(lambda k: calls.append(k) or [sum(range(20_000)) for _ in range(k)], 5000,
                                probe_steps=3)
    assert calls == [1, 3] and seconds > 0  # one untimed warm-up step, then the timed probe
    monkeypatch.delenv("DDPM_BOOK_FRACTION", raising=False)
    book.print_estimate("training", 600.0)
    book.print_estimate("sampling", 30.0)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("training: about 10 min on ") and "DDPM_BOOK_FRACTION=0.25" in out[0]
    assert out[1].startswith("sampling: about 30 s on ") and "DDPM_BOOK_FRACTION" not in out[1]
    with pytest.raises(ValueError, match="probe_steps"):
        book.estimate_run(lambda k: None, 10, probe_steps=0)


def test_publishing_table_reports_both_copies_and_what_was_published():
    change = dl.Comparison("fd", dl.evidence.Estimate(0.06, 0.02), True, "A higher")
    report = {"n": 400, "fd": {"float32": {"value": 91.84, "std": 7.1}, "float16": {"value": 91.9, "std": 7.12}},
              "change": change, "dtype": torch.float16, "bytes": 2 * 2**20}
    table = book.publishing_table(report, "Heun, 20 NFE")
    assert "FD to the held-out digits (n = 400, Heun, 20 NFE)" in table
    assert "| float32 | 91.8 ± 7.1 |" in table and "| float16 | 91.9 ± 7.1 |" in table
    assert "| float16 − float32, paired [95%] | 0.060 [0.021, 0.099] |" in table
    assert "| **published** | float16, 2.00 MB |" in table
